"""A training run's status, written by the trainer as it changes, never guessed from file ages.

`runs/<run_id>/status.json` holds {status, pid, updated_at, epoch (epochs done, once ended), note}; written atomically
(store.tables.write_json) at each change:

- running: a trainer works on the run; it holds `runs/<run_id>/status.lock` (store.lock.hold)
  meanwhile, so a reader can tell a live run from one whose process died;
- finished: ended by early stopping or its epoch cap, tested, metrics.json written;
- stopped: ended by hand (`stop_run`, a pruned tuning trial): tested at its best epoch so far;
- diverged: the loss stopped being finite; tested at its best epoch so far;
- failed: an error ended it (the note says which);
- interrupted: ended before finishing without an error (Ctrl-C, `resume_run`), or shown for a run
  whose record says running while no process holds its lock (kill -9, a crash, a power cut).
  The same command continues an interrupted run from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Iterator

from store.errors import StoreError, one_line
from store.lock import hold, is_held
from store.tables import read_json, write_json

STATUS_FILE = "status.json"
LOCK_FILE = "status.lock"
STATUSES = ("running", "finished", "stopped", "diverged", "failed", "interrupted")
ENDED = ("finished", "stopped", "diverged")  # tested: metrics.json and the vectors are expected


def write_status(run_dir: Path, status: str, epoch: int | None = None, note: str | None = None) -> None:
    if status not in STATUSES:
        raise ValueError(f"run status must be one of {STATUSES}, got {status!r}")
    record = {
        "status": status,
        "pid": os.getpid(),
        "updated_at": time.time(),
        "epoch": epoch,
        "note": one_line(note)[:300] if note else None,
    }
    write_json(record, Path(run_dir) / STATUS_FILE)


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """The run's record, with a dead 'running' shown as 'interrupted'; None for a run written before
    status files existed (or an unreadable record: the caller falls back to the legacy guess)."""
    run_dir = Path(run_dir)
    path = run_dir / STATUS_FILE
    try:
        record = read_json(path) if path.is_file() else None
    except StoreError:
        return None
    if not isinstance(record, dict) or record.get("status") not in STATUSES:
        return None
    if record["status"] == "running" and not is_held(run_dir / LOCK_FILE):
        note = f"its trainer (pid {record.get('pid')}) ended without a word (killed?); the same command resumes it"
        record = {**record, "status": "interrupted", "note": note}
    return record


def final_status(metrics: dict[str, Any]) -> str:
    """The status a tested run ends in, from its metrics.json."""
    if metrics.get("diverged_at_epoch") is not None:
        return "diverged"
    return "stopped" if metrics.get("stopped_by_hand") else "finished"


class Tracker:
    """The status of one run while a trainer holds it: `running()` once the run is its own (after
    the config check), `end(...)` when it is tested. An error after `running()` is recorded as
    failed; an error before it leaves the run's record as it was (a refused call changes nothing)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.started = False

    def running(self) -> None:
        self.started = True
        write_status(self.run_dir, "running")

    def end(self, status: str, epoch: int | None = None, note: str | None = None) -> None:
        write_status(self.run_dir, status, epoch, note)
        self.started = False


@contextlib.contextmanager
def tracked(run_dir: Path) -> Iterator[Tracker]:
    """Hold the run (a second trainer of the same run waits) and record how the block ends."""
    tracker = Tracker(run_dir)
    with hold(Path(run_dir) / LOCK_FILE):
        try:
            yield tracker
        except Exception as exc:
            if tracker.started:
                tracker.end("failed", None, f"{type(exc).__name__}: {exc}")
            raise
        except BaseException:
            if tracker.started:
                tracker.end("interrupted", None, "interrupted; the same command resumes it")
            raise
