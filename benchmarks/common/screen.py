"""What reached a user's screen during a benchmark: WARNING-or-louder log records, counted."""

from __future__ import annotations

import logging


class WarningCount(logging.Handler):
    """Counts the records at WARNING or above that pass through it (attach it to the root logger)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.n = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.n += 1
