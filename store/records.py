"""What each stage wrote: rows and content hash per output, so a valid but wrong file is refused.

Page CRCs, recorded row counts and content hashes inside a file catch damage, but not a file
that is well-formed and simply not what the stage wrote: an interactions table rewritten with
zero rows, a feature table copied from another dataset, vectors from another run. After a stage
ran (flows.run_stage, the one writer of records), each Parquet output gets a record beside the
data: `<dataset>/records/<path relative to the dataset>.json` with the stage, the row count, the
byte size and the SHA-256 of the bytes. Readers (store.tables.read_table, store.verify, the SQL
views) compare the file with its record; run_stage's cache check does too, so the stage reruns.

Paths are relative to the dataset, so a copied or moved home keeps its records valid. A file
without a record (written before records existed, or by a test) is checked as before.
The SHA-256 of a file is computed once per process while its identity (inode, size, mtime_ns,
ctime_ns) is unchanged.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from store import fixes
from store.atomic import write_json
from store.errors import StoreError
from store.hashing import file_sha256

RECORDS_DIR = "records"
# A file changed within this many seconds of a check may still change within the same clock
# tick (mtime has tick resolution): no cached answer is kept for it.
RACY_S = 2.0

Identity = tuple[int, int, int, int]


def identity(path: str | Path) -> Identity:
    """(inode, size, mtime_ns, ctime_ns): changes whenever the file's bytes can have changed."""
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def settled(ident: Identity) -> bool:
    """True when the file was last changed long enough ago that a cached answer is safe."""
    return time.time_ns() - max(ident[2], ident[3]) > RACY_S * 1e9


def _located(path: str | Path) -> tuple[Path, Path] | None:
    """(dataset root, path relative to it) of a recordable file: Parquet, not under index/."""
    path = Path(path)
    if path.suffix != ".parquet":
        return None
    found = fixes.locate(path)
    if found is None or found[1] == "index":
        return None
    root = found[0]
    return root, path.relative_to(root)


def record_path(path: str | Path) -> Path | None:
    """Where the record of `path` lives, or None for a file that gets no record."""
    found = _located(path)
    if found is None:
        return None
    root, rel = found
    return root / RECORDS_DIR / f"{rel.as_posix()}.json"


_SHA: dict[str, tuple[Identity, str]] = {}


def content_sha256(path: str | Path) -> str:
    """SHA-256 of the file's bytes, cached per process while the file's identity is unchanged."""
    path = Path(path)
    key = str(path.resolve())
    ident = identity(path)
    hit = _SHA.get(key)
    if hit is not None and hit[0] == ident:
        return hit[1]
    digest = file_sha256(path)
    if settled(ident) and identity(path) == ident:
        _SHA[key] = (ident, digest)
    return digest


def _rows(path: Path) -> int | None:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:  # noqa: BLE001 - the record only reports rows; the bytes are what is compared
        return None


def write(path: str | Path, stage: str) -> Path | None:
    """Record what `stage` left in `path` (rows, bytes, SHA-256); None when the file gets no record."""
    target = record_path(path)
    if target is None or not Path(path).is_file():
        return None
    path = Path(path)
    rel = _located(path)[1]  # type: ignore[index]
    record = {
        "file": rel.as_posix(),
        "stage": stage,
        "rows": _rows(path),
        "bytes": path.stat().st_size,
        "sha256": content_sha256(path),
    }
    return write_json(record, target)


def withdraw(paths: list[Path]) -> dict[Path, Path]:
    """Move the records of `paths` aside (before their stage runs): the stage's read-back of its own
    new output must not meet the old record. Returns record → aside path, for restore/discard."""
    saved = {}
    for path in paths:
        target = record_path(path)
        if target is not None and target.is_file():
            aside = target.with_name(f".{target.name}.withdrawn")
            os.replace(target, aside)
            saved[target] = aside
    return saved


def restore(saved: dict[Path, Path]) -> None:
    """Put withdrawn records back unchanged (the stage was cached, or failed: an output it did not
    replace matches its record again, one it replaced does not)."""
    for target, aside in saved.items():
        if aside.exists():
            os.replace(aside, target)


def discard(saved: dict[Path, Path]) -> None:
    """Drop withdrawn records: the stage wrote its outputs anew and records them now."""
    for aside in saved.values():
        aside.unlink(missing_ok=True)


def read(path: str | Path) -> dict[str, Any] | None:
    """The record of `path`, None when there is none; a damaged record is refused."""
    target = record_path(path)
    if target is None or not target.is_file():
        return None
    try:
        record = json.loads(target.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(target, f"stage record unreadable ({exc})", fixes.repair(path)) from exc
    if not isinstance(record, dict) or not {"sha256", "bytes"} <= set(record):
        raise StoreError(target, "is not a stage record (no sha256/bytes)", fixes.repair(path))
    return record


def check(path: str | Path) -> None:
    """Raise StoreError (naming the file and the command that rewrites it) when `path` is not the
    file its stage recorded; nothing when it is, or when it has no record."""
    path = Path(path)
    record = read(path)
    if record is None:
        return
    size = path.stat().st_size
    if size == record["bytes"] and content_sha256(path) == record["sha256"]:
        return
    stage = record.get("stage") or fixes.writer_of(path)
    rows = _rows(path)
    what = f"has {rows} rows ({size} bytes)" if rows is not None else f"has {size} bytes"
    raise StoreError(
        path,
        f"{what} but stage {stage} recorded {record.get('rows')} rows ({record['bytes']} bytes, sha256 "
        f"{str(record['sha256'])[:12]}): not the file the stage wrote (emptied, replaced or from another run)",
        fixes.repair(path),
    )


def problem(path: str | Path) -> str | None:
    """`check` as a one-line answer: None when the file is what its stage recorded (or has no record)."""
    try:
        check(path)
    except StoreError as exc:
        return str(exc)
    return None


__all__ = [
    "RECORDS_DIR",
    "check",
    "content_sha256",
    "discard",
    "identity",
    "problem",
    "read",
    "record_path",
    "restore",
    "settled",
    "withdraw",
    "write",
]
