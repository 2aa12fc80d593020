"""The equal-budget leaderboard on one dataset, end to end through the `anchorrec` CLI (issue 17).

Every model gets the same budget: `anchorrec tune --trials T --epochs E --patience P` (TPE,
median pruning, validation Recall@20 only), then `anchorrec leaderboard --seeds S` reruns each
choice on S seeds and writes the table. Every step is resumable — a study continues where a kill
left it, a finished study or run is not trained again — so the same command, run again in a
later session, goes on from where the last one stopped. Datasets:

    gift    Amazon 2018 Gift Cards (real reviews, metadata and 114 real photos: image + text)
    demo    the bundled demo catalog (image + text)
    sports  MMRec Sports, text only (MiniLM of the item text as t = v = mm)

    .venv/bin/python benchmarks/leaderboard_run.py --dataset gift --trials 10 --epochs 100 --patience 20
    .venv/bin/python benchmarks/leaderboard_run.py --dataset sports --models lightgcn alignrec anchorrec \
        --trials 8 --epochs 100 --patience 20 --jobs 2 \
        --snapshot benchmarks/results/leaderboard_sports     # many hours on 2 cores: rerun to go on

With --snapshot DIR, what a machine that loses its disk between sessions must not lose is copied
to DIR each minute: the studies (DIR/studies/<model>/study.db) and the summaries of finished
leaderboard runs (DIR/runs/<run_id>/: config, metrics, diagnostics, per-user test metrics, their
pictures; no vectors or checkpoints, a few hundred kB each). A home that lacks them starts from
these copies; a kept run is not trained again. Every ten minutes the runs in flight (trials and
reruns: checkpoint and config, 58 MB each on Sports) are copied to DIR/inflight/, not meant for
commit: where a session's uncommitted files outlive its machine, a run continues from its last
copy instead of from epoch 0.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
GIFT = DATA / "amazon2018-giftcards"
KEPT = ("config.json", "metrics.json", "diagnostics.json", "per_user.npz", "training_curves.png", "projection.png")
INFLIGHT_EVERY = 600.0  # s between copies of in-flight checkpoints
MODELS = ["lightgcn", "alignrec", "anchorrec", "vbpr", "freedom", "lattice", "bm3", "lgmrec", "smore", "damrs"]
INGEST = {  # `anchorrec ingest` options
    "gift": ["--release", "2018", "--meta", str(GIFT / "meta_Gift_Cards.json.gz"), "--reviews", str(GIFT / "Gift_Cards_5.json.gz")],
    "demo": [],
    "sports": ["--release", "mmrec", "--source", str(DATA / "mmrec-sports")],
}
FEATURES = {  # options of every later command (they extract features and pretrain when not done yet)
    "gift": ["--images", str(GIFT / "images")],
    "demo": [],
    "sports": ["--image-encoder", "none"],
}


def anchorrec(*args: str, every: float = 60.0, tick=lambda: None) -> None:
    """One CLI call, its output streamed, `tick()` every `every` s while it runs; a failure stops
    the script with the command to rerun."""
    cmd = [str(REPO / ".venv" / "bin" / "anchorrec"), *args]
    print(f"$ anchorrec {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO)
    while True:
        try:
            code = proc.wait(timeout=every)
            break
        except subprocess.TimeoutExpired:
            tick()
    tick()
    if code != 0:
        sys.exit(f"failed: anchorrec {' '.join(args)} (rerun this script to continue)")
    print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)


def save_studies(tuning: Path, snapshot: Path, models: list[str]) -> None:
    """Copy each model's study (a live SQLite file: through SQLite's backup API) and best.json to
    snapshot/studies/<model>/.

    The studies hold every finished trial's parameters and values, a few hundred kB: kept in the
    repository they outlive a machine that loses its disk between sessions, where a Sports study
    takes hours per model. The trials' runs and checkpoints are not kept; a lost best run is
    retrained by the leaderboard anyway."""
    for model in models:
        src = tuning / model / "study.db"
        if not src.exists():
            continue
        dst = snapshot / "studies" / model / "study.db"
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name("study.db.tmp")
        with closing(sqlite3.connect(src, timeout=60)) as a, closing(sqlite3.connect(tmp)) as b:
            a.backup(b)
        tmp.replace(dst)
        if (tuning / model / "best.json").exists():
            shutil.copyfile(tuning / model / "best.json", dst.with_name("best.json"))


def restore_studies(tuning: Path, snapshot: Path, models: list[str]) -> None:
    """A study the home lacks is started from the snapshot's copy (its trials count as done)."""
    for model in models:
        src = snapshot / "studies" / model / "study.db"
        if src.exists() and not (tuning / model / "study.db").exists():
            (tuning / model).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tuning / model / "study.db")
            print(f"{model}: study restored from {src}", flush=True)


def copy_run(run: Path, dst: Path, names: tuple[str, ...]) -> None:
    """The files `names` of a run directory (those it has) to dst, whole or not at all."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in names:
        if (run / name).exists():
            shutil.copy2(run / name, tmp / name)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def restore_missing(src: Path, runs: Path, what: str) -> list[str]:
    """Copy into `runs` every run directory of `src` that the home lacks."""
    restored = []
    for run in sorted(src.glob("*")):
        if run.is_dir() and not run.name.endswith(".tmp") and not (runs / run.name).exists():
            shutil.copytree(run, runs / run.name)
            restored.append(run.name)
    if restored:
        print(f"{what} from {src}: {', '.join(restored)}", flush=True)
    return restored


def save_runs(runs: Path, snapshot: Path) -> list[str]:
    """Copy the summary of every finished leaderboard run (lb-*) not yet in the snapshot.

    A run counts as finished once its report summary exists (diagnostics.json and per_user.npz are
    written after metrics.json, as the run ends). Returns the run ids copied."""
    done = [r for r in sorted(runs.glob("lb-*")) if all((r / name).exists() for name in KEPT[:4])]
    copied = [r for r in done if not (snapshot / "runs" / r.name / KEPT[3]).exists()]
    for run in copied:
        copy_run(run, snapshot / "runs" / run.name, KEPT)
    return [r.name for r in copied]


def restore_runs(runs: Path, snapshot: Path) -> list[str]:
    """Kept runs the home lacks are copied in; `anchorrec leaderboard` reports them without training."""
    return restore_missing(snapshot / "runs", runs, "finished leaderboard runs restored")


def save_inflight(runs: Path, snapshot: Path) -> list[str]:
    """Copy checkpoint and config of every run in flight (a checkpoint, no metrics.json yet) to
    snapshot/inflight/<run>/ (a checkpoint is replaced atomically, so a copy is always whole) and
    drop the copies of runs no longer in flight. Returns the runs copied."""
    target = snapshot / "inflight"
    live = [r for r in sorted(runs.glob("*")) if (r / "checkpoint.pt").exists() and not (r / "metrics.json").exists()]
    for old in target.glob("*") if target.exists() else []:
        if old.is_dir() and old.name not in {r.name for r in live}:
            shutil.rmtree(old)
    for run in live:
        copy_run(run, target / run.name, ("config.json", "checkpoint.pt"))
    return [r.name for r in live]


def restore_inflight(runs: Path, snapshot: Path) -> list[str]:
    """Runs in flight when an earlier machine went, which this home lacks: they continue from their copy."""
    return restore_missing(snapshot / "inflight", runs, "runs continuing from their checkpoints")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=sorted(INGEST), required=True)
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--patience", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=1, help="trials of a study at once (threads, one torch thread each), "
                    "and leaderboard reruns at once (processes)")
    ap.add_argument("--home", default=os.environ.get("ANCHORREC_HOME", str(REPO / "data")))
    ap.add_argument("--ica-from", metavar="RUN",
                    help="mm from this finished pretraining run (DATASET/RUN) instead of pretraining here; also "
                         "pins the mm table of studies begun with an earlier run after the pretraining code changed")
    ap.add_argument("--snapshot", type=Path, metavar="DIR",
                    help="keep a copy of every study and finished leaderboard run here (each minute) and start "
                         "what the home lacks from it")
    args = ap.parse_args()
    common = ["--dataset", args.dataset, "--home", args.home]
    tuning, runs = Path(args.home) / args.dataset / "tuning", Path(args.home) / args.dataset / "runs"

    last_inflight = [time.monotonic()]

    def snap() -> None:
        if args.snapshot:
            save_studies(tuning, args.snapshot, args.models)
            save_runs(runs, args.snapshot)
            if time.monotonic() - last_inflight[0] >= INFLIGHT_EVERY:
                save_inflight(runs, args.snapshot)
                last_inflight[0] = time.monotonic()

    if args.snapshot:
        restore_studies(tuning, args.snapshot, args.models)
        restore_runs(runs, args.snapshot)
        restore_inflight(runs, args.snapshot)
    features = FEATURES[args.dataset] + (["--ica-from", args.ica_from] if args.ica_from else [])
    anchorrec("ingest", *common, *INGEST[args.dataset])  # each step is cached: a rerun skips what is done
    anchorrec("pretrain", *common, *features)
    for model in args.models:
        anchorrec("tune", *common, *features, "--model", model, "--trials", str(args.trials),
                  "--epochs", str(args.epochs), "--patience", str(args.patience), "--jobs", str(args.jobs), tick=snap)
    models = [x for m in args.models for x in ("--model", m)]
    anchorrec("leaderboard", *common, *models, "--seeds", str(args.seeds), "--jobs", str(args.jobs), tick=snap)
    if args.snapshot:  # the table itself, beside the studies and runs it was made from
        shutil.copytree(Path(args.home) / args.dataset / "reports" / "leaderboard", args.snapshot / "report",
                        dirs_exist_ok=True)
        print(f"leaderboard copied to {args.snapshot / 'report'}", flush=True)


if __name__ == "__main__":
    main()
