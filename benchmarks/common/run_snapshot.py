"""A benchmark's runs kept in a folder of the repository, for machines that lose their disk.

A Sports study or leaderboard takes many hours on 2 cores, more than a session; where a session's
machine does not keep its disk, only what is committed survives. So the long scripts
(leaderboard_run.py, anchorrec_ablation.py) copy what must not be lost to a snapshot folder DIR:

    DIR/studies/<model>/   the Optuna study (SQLite, through its backup API) and best.json
    DIR/runs/<run_id>/     each finished run's summary (KEPT: config, metrics, diagnostics,
                           per-user test metrics, pictures; no vectors or checkpoints)
    DIR/inflight/<run_id>/ checkpoint and config of each run in flight (58 MB on Sports: never
                           committed; they help where uncommitted files outlive the machine)

and start a home that lacks them from these copies: a kept run is reported without training.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Iterator

KEPT = ("config.json", "metrics.json", "diagnostics.json", "per_user.npz", "training_curves.png", "projection.png")
INFLIGHT_EVERY = 600.0  # s between copies of in-flight checkpoints
PARTIAL = ".partial"  # DIR/.partial/: copies being made (git-ignored)


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
    """A study the home lacks is started from the snapshot's copy (its trials count as done), with
    its best.json: the choice the kept runs were trained with."""
    for model in models:
        src = snapshot / "studies" / model / "study.db"
        if src.exists() and not (tuning / model / "study.db").exists():
            (tuning / model).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tuning / model / "study.db")
            print(f"{model}: study restored from {src}", flush=True)
        best = src.with_name("best.json")
        if best.exists() and (tuning / model / "study.db").exists() and not (tuning / model / "best.json").exists():
            shutil.copyfile(best, tuning / model / "best.json")  # the choice the kept runs were trained with


def copy_run(run: Path, dst: Path, names: tuple[str, ...]) -> None:
    """The files `names` of a run directory (those it has) to dst, whole or not at all.

    The copy is made in DIR/.partial/ under this process's id, outside the folders that restores
    read, so two scripts keeping one snapshot (a leaderboard and an ablation) never see or remove
    each other's half-made copies."""
    tmp = dst.parent.parent / PARTIAL / f"{dst.parent.name}-{dst.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        for name in names:
            if (run / name).exists():
                shutil.copy2(run / name, tmp / name)
        shutil.rmtree(dst, ignore_errors=True)
        tmp.rename(dst)
    except OSError as e:  # the run ended or moved meanwhile, or another script's copy won: the next tick copies again
        print(f"snapshot: {run.name} not copied this time ({e})", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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


def save_runs(runs: Path, snapshot: Path, prefix: str) -> list[str]:
    """Copy the summary of every finished run named prefix* not yet in the snapshot.

    A run counts as finished once its report summary exists (diagnostics.json and per_user.npz are
    written after metrics.json, as the run ends). Returns the run ids copied."""
    done = [r for r in sorted(runs.glob(f"{prefix}*")) if all((r / name).exists() for name in KEPT[:4])]
    copied = [r for r in done if not (snapshot / "runs" / r.name / KEPT[3]).exists()]
    for run in copied:
        copy_run(run, snapshot / "runs" / run.name, KEPT)
    return [r.name for r in copied]


def restore_runs(runs: Path, snapshot: Path) -> list[str]:
    """Kept runs the home lacks are copied in; `anchorrec leaderboard` reports them without training."""
    return restore_missing(snapshot / "runs", runs, "finished runs restored")


def save_inflight(runs: Path, snapshot: Path, prefixes: tuple[str, ...] = ("",)) -> list[str]:
    """Copy checkpoint and config of every run in flight named prefix* (a checkpoint, no
    metrics.json yet) to snapshot/inflight/<run>/ (a checkpoint is replaced atomically, so a copy
    is always whole) and drop the copies of such runs no longer in flight; other scripts' runs are
    left to them. Returns the runs copied."""
    target = snapshot / "inflight"
    live = [
        r
        for r in sorted(runs.glob("*"))
        if r.name.startswith(prefixes) and (r / "checkpoint.pt").exists() and not (r / "metrics.json").exists()
    ]
    for old in target.glob("*") if target.exists() else []:
        if old.is_dir() and old.name.startswith(prefixes) and old.name not in {r.name for r in live}:
            shutil.rmtree(old, ignore_errors=True)
    for run in live:
        copy_run(run, target / run.name, ("config.json", "checkpoint.pt"))
    return [r.name for r in live]


def restore_inflight(runs: Path, snapshot: Path) -> list[str]:
    """Runs in flight when an earlier machine went, which this home lacks: they continue from their copy."""
    return restore_missing(snapshot / "inflight", runs, "runs continuing from their checkpoints")


@contextmanager
def every(seconds: float, tick: Callable[[], None]) -> Iterator[None]:
    """Call `tick()` every `seconds` in a background thread while the block runs, and once at its end
    (also when it raises): for work that runs in this process, e.g. fit_runs."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(seconds):
            tick()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        tick()


def keeper(runs: Path, snapshot: Path, finished: str, inflight: tuple[str, ...]) -> Callable[[], None]:
    """A tick that saves this script's finished runs (named finished*) each call and its runs in
    flight (named inflight*) every INFLIGHT_EVERY s."""
    last = [time.monotonic()]

    def tick() -> None:
        save_runs(runs, snapshot, finished)
        if time.monotonic() - last[0] >= INFLIGHT_EVERY:
            save_inflight(runs, snapshot, inflight)
            last[0] = time.monotonic()

    return tick
