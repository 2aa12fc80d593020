"""Atomic files: a temporary file beside the target, renamed into place; JSON written and read so.

The lowest layer of the store: every other store module writes through it (tables, records,
indexes), and it imports none of them, so a module that tables reads (store.records) can write
its JSON without importing tables back.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

from store import fixes
from store.errors import StoreError


def temp_beside(path: Path) -> Path:
    """Create an empty, uniquely named hidden file beside `path` and return its path.

    Its mode is what `open()` would give (0666 less the umask), so the renamed file is readable by
    whoever may read the dataset directory; `tempfile.mkstemp` would make every table, index and
    report 0600, unreadable to a serving process running as another user.
    """
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    return tmp


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on clean exit rename it into place, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return path


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise StoreError(path, "does not exist", fixes.repair(path))
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f"at line {exc.lineno}: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else f"({exc.reason})"
        raise StoreError(path, f"invalid JSON {where}", fixes.repair(path)) from exc
