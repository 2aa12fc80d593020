"""One exception type for everything the store refuses, so callers can catch it at the edge."""
from __future__ import annotations

from pathlib import Path


class StoreError(Exception):
    """A file in the store is missing, malformed or inconsistent.

    The message always names the file and says what to do, because the person reading it is
    usually looking at a pipeline log, not at the code.
    """

    def __init__(self, path: str | Path | None, problem: str, fix: str = "") -> None:
        self.path = Path(path) if path is not None else None
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path is not None else ""
        hint = f" — {fix}" if fix else ""
        super().__init__(f"{where}{problem}{hint}")
