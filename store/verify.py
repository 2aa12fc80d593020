"""Does an output file agree with what its writer recorded? The "repair on rerun" check.

Stages are cached by the hash of their inputs, so a cache hit says nothing about whether the
outputs on disk are still whole. `problem(path)` answers that cheaply for one file: Parquet
footers and recorded row counts always, the recorded content hash when the writer recorded one
(run vectors, feature tables), and for a published index the manifest ↔ index ↔ vectors
agreement. A flow reruns a stage whose output has a problem instead of trusting its cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from store import fixes, records, versions
from store.errors import StoreError
from store.index import INDEX_FILE, MANIFEST_FILE, check_serving
from store.layout import DatasetPaths
from store.tables import NUM_ROWS, read_json, readable
from store.tokens import KIND as TOKENS_KIND
from store.tokens import load_tokens
from store.vectors import read_features, verified_vectors_hash


def footer_problem(path: str | Path) -> str | None:
    """Why a Parquet file cannot be trusted from its footer alone (missing, cut, lost rows), or None."""
    path = Path(path)
    if not path.exists():
        return str(StoreError(path, "does not exist", fixes.repair(path)))
    try:
        readable(path)
    except StoreError as exc:
        return str(exc)
    try:
        meta = pq.ParquetFile(path).metadata
    except (pa.ArrowException, OSError) as exc:
        return str(StoreError(path, f"not a readable Parquet file ({exc})", fixes.repair(path)))
    recorded = (meta.metadata or {}).get(NUM_ROWS.encode())
    if recorded is not None and int(recorded) != meta.num_rows:
        return str(
            StoreError(path, f"has {meta.num_rows} rows but its writer recorded {int(recorded)}", fixes.repair(path))
        )
    return None


def parquet_problem(path: str | Path, record: bool = True) -> str | None:
    """footer_problem, the stage record (unless record=False), then the content hash recorded
    inside run vectors, feature and token tables."""
    path = Path(path)
    found = footer_problem(path) or (records.problem(path) if record else None)
    if found:
        return found
    kv = _kv(path)
    try:
        if kv.get("kind") == TOKENS_KIND:
            load_tokens(path)
        elif "vectors_hash" in kv:
            key = pq.read_schema(path).names[0]
            verified_vectors_hash(path, key)
        elif "content_hash" in kv and "dim" in kv:
            read_features(path)
    except StoreError as exc:
        return str(exc)
    return None


def published_problem(paths: DatasetPaths, run_id: str, version: str | None = None) -> str | None:
    """Why the index `run_id` serves (or its `version`) cannot be served (missing, corrupt,
    stale; for a version also its item and user vectors), or None."""
    try:
        serving = versions.pinned(paths, run_id, version) if version else versions.serving(paths, run_id)
        check_serving(paths, serving)
    except StoreError as exc:
        return str(exc)
    return None


def _index_run(path: Path) -> tuple[DatasetPaths, str, str | None] | None:
    """(dataset, run, version or None) when `path` is index/<run>/manifest.json, items.faiss or
    CURRENT (what the run serves), or a file of index/<run>/versions/<version>/ (that version)."""
    if path.name in (MANIFEST_FILE, INDEX_FILE, versions.CURRENT_FILE) and path.parent.parent.name == "index":
        return DatasetPaths(path.parent.parent.parent), path.parent.name, None
    parents = path.parents
    if len(parents) > 4 and parents[1].name == versions.VERSIONS_DIR and parents[3].name == "index":
        return DatasetPaths(parents[4]), parents[2].name, path.parent.name
    return None


def problem(path: str | Path, record: bool = True) -> str | None:
    """One line naming the file, what is wrong and the command that repairs it; None when it is fine.

    Knows Parquet tables (footer, row count, stage record, recorded hashes), index manifests and
    FAISS files (the whole published index is checked), JSON files (parse) and anything else
    (exists). record=False skips the stage record (a stage checking what it just wrote).
    """
    path = Path(path)
    published = _index_run(path)
    if published is not None:
        return published_problem(*published)
    if not path.exists():
        return str(StoreError(path, "does not exist", fixes.repair(path)))
    if path.suffix == ".parquet":
        return parquet_problem(path, record)
    if path.suffix == ".json":
        try:
            read_json(path)
        except StoreError as exc:
            return str(exc)
    return None


def problems(paths: list[Path], record: bool = True) -> list[str]:
    """The problems of several outputs (empty when all are fine): a stage reruns when any is listed."""
    return [p for p in (problem(x, record) for x in paths) if p]


def pages_problem(path: Path) -> str | None:
    """Why some data page of a Parquet file fails its CRC (flipped bytes the footer cannot show)."""
    try:
        reader = pq.ParquetFile(path, page_checksum_verification=True)
        for _ in reader.iter_batches(batch_size=65536):
            pass
    except (pa.ArrowException, OSError) as exc:
        return str(StoreError(path, f"damaged data page ({exc})", fixes.repair(path)))
    return None


def full_problem(path: str | Path) -> str | None:
    """Everything a reader must know before it serves `path`: readable, footer and row count, and
    either the stage record (same bytes as the stage wrote: nothing more to check) or, without a
    record, every page CRC and the content hash recorded inside the file."""
    path = Path(path)
    found = footer_problem(path)
    if found:
        return found
    try:
        has_record = records.read(path) is not None
    except StoreError as exc:
        return str(exc)
    if has_record:  # same bytes as the stage left: done; other bytes: damaged (say where) or replaced
        found = records.problem(path)
        return found and (_content_problem(path) or found)
    return _content_problem(path)


def _content_problem(path: Path) -> str | None:
    """Recorded hashes inside the file (a full read) or, for tables without one, every page CRC."""
    found = parquet_problem(path, record=False)
    if found:
        return found
    return None if _read_in_full(_kv(path)) else pages_problem(path)


def _kv(path: Path) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (pq.read_schema(path).metadata or {}).items() if k != b"ARROW:schema"}


def _read_in_full(kv: dict[str, str]) -> bool:
    """Whether parquet_problem reads every row of a table with this metadata (and so every page CRC)."""
    return kv.get("kind") == TOKENS_KIND or "vectors_hash" in kv or ("content_hash" in kv and "dim" in kv)


# resolved path → ((file identity, record identity), verdict): see `checked`.
_VERDICTS: dict[str, tuple[tuple[Any, Any], str | None]] = {}


def _identities(path: Path) -> tuple[Any, Any]:
    record = records.record_path(path)
    record_ident = records.identity(record) if record is not None and record.exists() else None
    return records.identity(path), record_ident


def checked(path: str | Path) -> str | None:
    """`full_problem`, cached per process on the file's and its record's identity (inode, size,
    mtime_ns, ctime_ns): repeated queries verify a file once, a changed file is verified again.
    Files changed in the last seconds are not cached (mtime has clock-tick resolution)."""
    path = Path(path)
    try:
        ident = _identities(path)
    except FileNotFoundError:
        return str(StoreError(path, "does not exist", fixes.repair(path)))
    except PermissionError:
        return footer_problem(path)
    key = str(path.resolve())
    hit = _VERDICTS.get(key)
    if hit is not None and hit[0] == ident:
        return hit[1]
    verdict = full_problem(path)
    try:
        still = _identities(path)
    except OSError:
        return verdict
    if still == ident and records.settled(ident[0]) and (ident[1] is None or records.settled(ident[1])):
        _VERDICTS[key] = (ident, verdict)
    return verdict


def require(path: str | Path) -> None:
    """Raise StoreError when `path` has a problem (for readers that want the check up front)."""
    found = problem(path)
    if found:
        raise StoreError(None, found)


__all__ = [
    "checked",
    "footer_problem",
    "full_problem",
    "pages_problem",
    "parquet_problem",
    "problem",
    "problems",
    "published_problem",
    "require",
]
