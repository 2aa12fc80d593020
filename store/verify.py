"""Does an output file agree with what its writer recorded? The "repair on rerun" check.

Stages are cached by the hash of their inputs, so a cache hit says nothing about whether the
outputs on disk are still whole. `problem(path)` answers that cheaply for one file: Parquet
footers and recorded row counts always, the recorded content hash when the writer recorded one
(run vectors, feature tables), and for a published index the manifest ↔ index ↔ vectors
agreement. A flow reruns a stage whose output has a problem instead of trusting its cache.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from store import fixes
from store.errors import StoreError
from store.index import INDEX_FILE, MANIFEST_FILE, load_index
from store.layout import DatasetPaths
from store.tables import NUM_ROWS, read_json
from store.tokens import KIND as TOKENS_KIND
from store.tokens import load_tokens
from store.vectors import read_features, verified_vectors_hash


def footer_problem(path: str | Path) -> str | None:
    """Why a Parquet file cannot be trusted from its footer alone (missing, cut, lost rows), or None."""
    path = Path(path)
    if not path.is_file():
        return str(StoreError(path, "does not exist", fixes.repair(path)))
    try:
        meta = pq.ParquetFile(path).metadata
    except (pa.ArrowException, OSError) as exc:
        return str(StoreError(path, f"not a readable Parquet file ({exc})", fixes.repair(path)))
    recorded = (meta.metadata or {}).get(NUM_ROWS.encode())
    if recorded is not None and int(recorded) != meta.num_rows:
        return str(StoreError(path, f"has {meta.num_rows} rows but its writer recorded {int(recorded)}", fixes.repair(path)))
    return None


def parquet_problem(path: str | Path) -> str | None:
    """footer_problem, then the recorded content hash of run vectors, feature and token tables."""
    path = Path(path)
    found = footer_problem(path)
    if found:
        return found
    kv = {k.decode(): v.decode() for k, v in (pq.read_schema(path).metadata or {}).items() if k != b"ARROW:schema"}
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


def published_problem(paths: DatasetPaths, run_id: str) -> str | None:
    """Why the published index of `run_id` cannot be served (missing, corrupt, stale), or None."""
    try:
        load_index(paths, run_id)
    except StoreError as exc:
        return str(exc)
    return None


def _index_run(path: Path) -> tuple[DatasetPaths, str] | None:
    """(dataset, run) when `path` is index/<run>/manifest.json or index/<run>/items.faiss."""
    if path.name in (MANIFEST_FILE, INDEX_FILE) and path.parent.parent.name == "index":
        return DatasetPaths(path.parent.parent.parent), path.parent.name
    return None


def problem(path: str | Path) -> str | None:
    """One line naming the file, what is wrong and the command that repairs it; None when it is fine.

    Knows Parquet tables (footer, row count, recorded hashes), index manifests and FAISS files
    (the whole published index is checked), JSON files (parse) and anything else (exists).
    """
    path = Path(path)
    published = _index_run(path)
    if published is not None:
        return published_problem(*published)
    if not path.exists():
        return str(StoreError(path, "does not exist", fixes.repair(path)))
    if path.suffix == ".parquet":
        return parquet_problem(path)
    if path.suffix == ".json":
        try:
            read_json(path)
        except StoreError as exc:
            return str(exc)
    return None


def problems(paths: list[Path]) -> list[str]:
    """The problems of several outputs (empty when all are fine): a stage reruns when any is listed."""
    return [p for p in (problem(x) for x in paths) if p]


def require(path: str | Path) -> None:
    """Raise StoreError when `path` has a problem (for readers that want the check up front)."""
    found = problem(path)
    if found:
        raise StoreError(None, found)


__all__ = ["footer_problem", "parquet_problem", "problem", "problems", "published_problem", "require"]
