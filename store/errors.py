"""One exception type for everything the store refuses, so callers can catch it at the edge."""

from __future__ import annotations

from pathlib import Path


def one_line(text: str) -> str:
    """Library messages (Arrow, FAISS) span lines; a log line must not."""
    return " ".join(str(text).split())


class StoreError(Exception):
    """A file in the store is missing, malformed or inconsistent.

    The message is one line that names the file and says what to do (an `anchorrec` command),
    because the person reading it is usually looking at a pipeline log, not at the code.
    """

    def __init__(self, path: str | Path | None, problem: str, fix: str = "") -> None:
        self.path = Path(path) if path is not None else None
        self.problem = one_line(problem)
        self.fix = one_line(fix)
        where = f"{self.path}: " if self.path is not None else ""
        hint = f" — {self.fix}" if self.fix else ""
        super().__init__(f"{where}{self.problem}{hint}")

    def __reduce__(self) -> tuple[type[StoreError], tuple[Path | None, str, str]]:
        """Rebuilt from its parts, so it crosses process boundaries (a worker's error reaches the parent)."""
        return type(self), (self.path, self.problem, self.fix)


# What a user can fix (a bad option, file or stored table): reported in one line, never retried.
USER_ERRORS: tuple[type[Exception], ...] = (StoreError, ValueError, FileNotFoundError, PermissionError)


class SourceUnavailable(StoreError):
    """An input file could not be fetched (no network, a dead host, HTTP errors after the retries).

    A user error, not a hiccup: the per-URL retries already ran, so retrying the whole stage only
    multiplies the wait (minutes offline) before the same answer; the fix is local files.
    """
