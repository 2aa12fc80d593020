"""The equal-budget leaderboard on one dataset, end to end through the `anchorrec` CLI (issue 17).

Every model gets the same budget: `anchorrec tune --trials T --epochs E --patience P` (TPE,
median pruning, validation Recall@20 only), then `anchorrec leaderboard --seeds S` reruns each
choice on S seeds and writes the table. Every step is resumable — a study continues where a kill
left it, a finished study or run is not trained again — so the same command, run again in a
later session, goes on from where the last one stopped. Datasets:

    gift    Amazon 2018 Gift Cards (real reviews, metadata and 114 real photos: image + text)
    demo    the bundled demo catalog (image + text)
    sports  MMRec Sports, text only (MiniLM of the item text as t = v = mm)

    .venv/bin/python benchmarks/accuracy/leaderboard_run.py --dataset gift --trials 10 --epochs 100 --patience 20
    .venv/bin/python benchmarks/accuracy/leaderboard_run.py --dataset sports --models lightgcn alignrec anchorrec \
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
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common

from benchmarks.common.gift_cards import GIFT, GIFT_INGEST  # noqa: E402
from benchmarks.common.run_snapshot import (  # noqa: E402, F401  (re-exported: the tests reach them through this script)
    KEPT,
    keeper,
    restore_inflight,
    restore_runs,
    restore_studies,
    save_inflight,
    save_runs,
    save_studies,
)

DATA = REPO.parent / "shared" / "data"
MODELS = ["lightgcn", "alignrec", "anchorrec", "vbpr", "freedom", "lattice", "bm3", "lgmrec", "smore", "damrs"]
INGEST = {  # `anchorrec ingest` options
    "gift": GIFT_INGEST,
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=sorted(INGEST), required=True)
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--patience", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="trials of a study at once (threads, one torch thread each), and leaderboard reruns at once (processes)",
    )
    ap.add_argument("--home", default=os.environ.get("ANCHORREC_HOME", str(REPO / "data")))
    ap.add_argument(
        "--ica-from",
        metavar="RUN",
        help="mm from this finished pretraining run (DATASET/RUN) instead of pretraining here; also "
        "pins the mm table of studies begun with an earlier run after the pretraining code changed",
    )
    ap.add_argument(
        "--no-tune",
        action="store_true",
        help="rerun the leaderboard on the studies' choices as they stand, without topping the studies "
        "up (a study run under an older budget rule or lr grid keeps its choice; seeds are added)",
    )
    ap.add_argument(
        "--converged",
        type=int,
        metavar="CAP",
        help="after the capped leaderboard, the converged one: every rerun continued to this epoch cap "
        "(1000 is MMRec's protocol) from its checkpoint, with the capped table beside it",
    )
    ap.add_argument(
        "--table",
        nargs="+",
        default=[],
        metavar="MOD=TABLE",
        help="the leaderboard reruns the studies' choices on these feature tables (`anchorrec leaderboard "
        "--table`), e.g. mm=ica-1a2b3c where the table a study chose on is gone with its machine",
    )
    ap.add_argument(
        "--snapshot",
        type=Path,
        metavar="DIR",
        help="keep a copy of every study and finished leaderboard run here (each minute) and start "
        "what the home lacks from it",
    )
    args = ap.parse_args()
    common = ["--dataset", args.dataset, "--home", args.home]
    tuning, runs = Path(args.home) / args.dataset / "tuning", Path(args.home) / args.dataset / "runs"

    keep = keeper(runs, args.snapshot, "lb-", ("lb-", "tune-")) if args.snapshot else None

    def snap() -> None:
        if keep:
            save_studies(tuning, args.snapshot, args.models)
            keep()

    if args.snapshot:
        restore_studies(tuning, args.snapshot, args.models)
        restore_runs(runs, args.snapshot)  # every kept run: the ablation's too
        restore_inflight(runs, args.snapshot)
    features = FEATURES[args.dataset] + (["--ica-from", args.ica_from] if args.ica_from else [])
    anchorrec("ingest", *common, *INGEST[args.dataset])  # each step is cached: a rerun skips what is done
    anchorrec("pretrain", *common, *features)
    for model in [] if args.no_tune else args.models:
        anchorrec(
            "tune",
            *common,
            *features,
            "--model",
            model,
            "--trials",
            str(args.trials),
            "--epochs",
            str(args.epochs),
            "--patience",
            str(args.patience),
            "--jobs",
            str(args.jobs),
            tick=snap,
        )
    models = [x for m in args.models for x in ("--model", m)] + [x for t in args.table for x in ("--table", t)]
    anchorrec("leaderboard", *common, *models, "--seeds", str(args.seeds), "--jobs", str(args.jobs), tick=snap)
    keep_report(args, "leaderboard", "report")
    if args.converged:
        cap = ["--epochs", str(args.converged)]
        anchorrec(
            "leaderboard", *common, *models, "--seeds", str(args.seeds), "--jobs", str(args.jobs), *cap, tick=snap
        )
        keep_report(args, f"leaderboard-cap{args.converged}", f"report-cap{args.converged}")


def keep_report(args: argparse.Namespace, folder: str, name: str) -> None:
    """The table itself, beside the studies and runs it was made from."""
    if args.snapshot:
        shutil.copytree(Path(args.home) / args.dataset / "reports" / folder, args.snapshot / name, dirs_exist_ok=True)
        print(f"{folder} copied to {args.snapshot / name}", flush=True)


if __name__ == "__main__":
    main()
