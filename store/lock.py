"""One writer per dataset, and "is anyone still writing this file?" without guessing from clocks.

Both rest on `flock`: the kernel drops a lock with the last descriptor of the process that held
it, so a crash, a kill -9 or a power cut can never leave a dataset locked (no stale-lock cleanup,
no pid files to trust). Readers never come here: a query, `runs` or `ls` neither waits nor locks.

The dataset lock is `<dataset>/.writer.lock`. Its content says who holds it (pid, command, since
when), so that a second writer can say whom it waits for; the content is only a description, the
flock is the lock. It is taken once per command, in the process that runs the command: nested
takes in that process (a flow inside a command, threads of a tuning study) pass through, and
worker processes of a command never take it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from store.errors import StoreError
from store.layout import DatasetPaths

log = logging.getLogger("anchorrec")

LOCK_FILE = ".writer.lock"
_held: dict[Path, int] = {}  # lock files this process holds → nesting depth
_guard = threading.Lock()


def lock_path(paths: DatasetPaths) -> Path:
    return paths.root / LOCK_FILE


def holder(path: Path) -> dict:
    """Who holds the lock file `path`, as its holder wrote it ({} when unreadable or released).

    The holder rewrites the file right after taking the lock, so a reader may catch it empty for
    a moment: read again rather than name nobody.
    """
    for _ in range(20):
        try:
            info = json.loads(path.read_text() or "null")
        except (OSError, ValueError):
            info = None
        if isinstance(info, dict):
            return info
        time.sleep(0.05)
    return {}


def describe(info: dict) -> str:
    """'pid 4242 (anchorrec pipeline, since 2026-12-05 21:40:12 UTC, 35 s ago)'."""
    if not info:
        return "another process (it has not said which yet)"
    since = info.get("since")
    when = ""
    if isinstance(since, (int, float)):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
        when = f", since {stamp}, {max(0, round(time.time() - since))} s ago"
    return f"pid {info.get('pid', '?')} ({info.get('command', '?')}{when})"


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextlib.contextmanager
def dataset_lock(
    paths: DatasetPaths, command: str, wait: bool = True, say: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold the dataset's writer lock for the block; wait for another writer, or refuse at once.

    The dataset directory is created first (an ingest starts from nothing), so taking the lock never
    races with the stage that fills it. `say` prints the one waiting line (default: the anchorrec
    logger, which the CLI shows on stderr).
    """
    paths.root.mkdir(parents=True, exist_ok=True)
    path = lock_path(paths).resolve()
    with _guard:
        if path in _held:  # this command already holds it (a nested flow, a thread of it)
            _held[path] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _guard:
                _held[path] -= 1
        return
    fd = _acquire(path, paths.name, command, wait, say or log.warning)
    with _guard:
        _held[path] = 1
    try:
        yield
    finally:
        with _guard:
            del _held[path]
        _release(fd)


def _acquire(path: Path, dataset: str, command: str, wait: bool, say: Callable[[str], None]) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # not inherited by exec'd children (PEP 446)
    try:
        if not _try_flock(fd):
            who = describe(holder(path))
            if not wait:
                raise StoreError(
                    path,
                    f"dataset {dataset!r} is being written by {who}",
                    "wait for it to end, or run the command without --no-wait to wait for it",
                )
            say(
                f"waiting: dataset {dataset!r} is being written by {who}; this command goes on when it ends "
                "(finished stages are then cached)"
            )
            fcntl.flock(fd, fcntl.LOCK_EX)
        info = {"pid": os.getpid(), "command": command, "argv": " ".join(sys.argv[:12])[:400], "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _release(fd: int) -> None:
    """Clear the description, then let go (closing the descriptor drops the flock)."""
    try:
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- a file held while a process works on it
@contextlib.contextmanager
def hold(path: Path) -> Iterator[None]:
    """Hold `path` exclusively for the block, waiting for another holder (two trainers of one run).

    A second holder in the same process also waits: flock locks belong to open files, not to
    processes, so a thread of this process is kept off a file another thread holds.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def is_held(path: Path) -> bool:
    """Whether some live process holds `path` (with `hold`). A look, not a take: a shared lock for
    an instant, which delays a starting holder by that instant and never refuses it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
