"""Progress of runs that cannot draw a bar: trials in threads, seeds in worker processes.

Bars from parallel runs overwrite each other, and a Sports run lasts an hour; a line per run at
most every minute (and at its first epoch) says how far it is, how good it is so far, and how
fast it goes. Lines go to the `anchorrec` logger, which the CLI prints at INFO.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

EVERY_S = 60.0

log = logging.getLogger("anchorrec.progress")


class EpochProgress:
    """`callback(epoch, record)` for `fit`: a line at most every `every` seconds, with the best
    validation `metric` so far (the trainer's SELECT_METRIC)."""

    def __init__(self, head: str, epochs: int, metric: str, every: float = EVERY_S) -> None:
        self.head, self.epochs, self.metric, self.every = head, epochs, metric, every
        self.best: tuple[float, int] | None = None
        self.last: float | None = None

    def replay(self, history: list[dict[str, Any]]) -> None:
        """The epochs a continued run did before (its checkpoint's history): the best so far is the run's."""
        for record in history:
            self._track(record["epoch"], record)

    def _track(self, epoch: int, record: dict[str, Any]) -> None:
        if "valid" in record:
            value = float(record["valid"][self.metric])
            if self.best is None or value > self.best[0]:
                self.best = (value, epoch)

    def __call__(self, epoch: int, record: dict[str, Any]) -> None:
        self._track(epoch, record)
        now = time.monotonic()
        if self.last is not None and now - self.last < self.every:
            return
        self.last = now
        seconds = float(record.get("train_s", 0.0)) + float(record.get("eval_s", 0.0))
        valid = f", valid {self.metric} {float(record['valid'][self.metric]):.4f}" if "valid" in record else ""
        best = f", best {self.best[0]:.4f} (best_epoch {self.best[1]})" if self.best else ""
        log.info("%s: %d/%d epochs%s%s (%.0f s/epoch)", self.head, epoch + 1, self.epochs, valid, best, seconds)

    def pruned(self, reason: object) -> None:
        log.info("%s: pruned (%s)", self.head, reason)

    def done(self, metrics: dict[str, Any]) -> None:
        log.info(
            "%s: done after %d epochs, valid %s %.4f (best_epoch %d)",
            self.head,
            metrics["epochs_run"],
            self.metric,
            metrics["valid"][self.metric],
            metrics["best_epoch"],
        )


def log_to_stderr() -> None:
    """The `anchorrec` lines, one per message on stderr: set by the CLI and in every worker process
    (spawned workers start without handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    ours = logging.getLogger("anchorrec")
    ours.handlers[:] = [handler]
    ours.setLevel(logging.INFO)
    ours.propagate = False
