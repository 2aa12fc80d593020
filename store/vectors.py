"""Feature tables and run vectors: NumPy matrices in, FixedSizeList<float32> Parquet out.

Feature rows are keyed by `asin` as well as `item_id` so that a re-indexed catalog is caught
instead of silently misaligning vectors; `align_features` does that check.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from store import schemas
from store.errors import StoreError
from store.tables import read_metadata, read_table, write_table


def fixed_list(vectors: np.ndarray, valid: np.ndarray | None = None) -> pa.FixedSizeListArray:
    """(n, d) float matrix → FixedSizeList<float32>[d], rows with valid=False as nulls."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"expected an (n, d) matrix, got shape {vectors.shape}")
    n, d = vectors.shape
    mask = None if valid is None else pa.array(~np.asarray(valid, dtype=bool))
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), d, mask=mask)


def to_matrix(column: pa.ChunkedArray | pa.Array, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """FixedSizeList column → (n, d) float32 matrix (nulls as zero rows) and a validity mask."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    valid = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    flat = column.flatten() if column.null_count == 0 else None
    if flat is not None and len(flat) == len(column) * dim:
        mat = flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        return mat.reshape(len(column), dim), valid
    mat = np.zeros((len(column), dim), dtype=np.float32)
    values = column.values.to_numpy(zero_copy_only=False).reshape(-1, dim)
    mat[:] = values[column.offset : column.offset + len(column)]
    mat[~valid] = 0.0
    return mat, valid


def array_hash(*arrays: np.ndarray) -> str:
    """Content hash of arrays (shape, dtype and bytes): the cache key of derived artefacts."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


@dataclass
class FeatureTable:
    """A feature table in memory: rows aligned with `asins`/`item_ids`."""

    asins: list[str]
    item_ids: np.ndarray
    vectors: np.ndarray
    valid: np.ndarray
    reasons: list[str | None]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def write_features(
    path: str | Path,
    asins: Sequence[str],
    item_ids: Sequence[int] | np.ndarray,
    vectors: np.ndarray,
    *,
    encoder: str,
    model: str,
    weights: str,
    modality: str,
    input_hash: str,
    valid: np.ndarray | None = None,
    reasons: Sequence[str | None] | None = None,
    extra: dict[str, str] | None = None,
) -> Path:
    """Write a feature table with the metadata ARCHITECTURE.md requires (atomically)."""
    if modality not in schemas.MODALITIES:
        raise ValueError(f"modality must be one of {schemas.MODALITIES}, got {modality!r}")
    n, dim = np.asarray(vectors).shape
    if len(asins) != n or len(item_ids) != n:
        raise ValueError(f"{n} vectors but {len(asins)} asins and {len(item_ids)} item ids")
    if valid is None:
        valid = np.ones(n, dtype=bool)
    if reasons is None:
        reasons = [None if ok else "missing" for ok in valid]
    table = pa.table(
        {
            "asin": pa.array(list(asins), pa.string()),
            "item_id": pa.array(np.asarray(item_ids, dtype=np.int32)),
            "vector": fixed_list(vectors, valid),
            "reason": pa.array(list(reasons), pa.string()),
        }
    )
    meta = {
        "encoder": encoder,
        "model": model,
        "weights": weights,
        "dim": str(dim),
        "modality": modality,
        "input_hash": input_hash,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    meta.update(extra or {})
    return write_table(table, path, schemas.feature_schema(dim), metadata=meta)


def read_features(path: str | Path) -> FeatureTable:
    """Read a feature table, checking its metadata and vector width."""
    path = Path(path)
    meta = read_metadata(path) if path.exists() else {}
    if path.exists() and "dim" not in meta:
        raise StoreError(path, "has no 'dim' metadata: not a feature table written by the store")
    table = read_table(path)
    dim = int(meta["dim"])
    if not pa.types.is_fixed_size_list(table.schema.field("vector").type):
        raise StoreError(path, f"column 'vector' is {table.schema.field('vector').type}, not FLOAT[{dim}]")
    table = read_table(path, schemas.feature_schema(dim))
    vectors, valid = to_matrix(table.column("vector"), dim)
    return FeatureTable(
        asins=table.column("asin").to_pylist(),
        item_ids=table.column("item_id").to_numpy().astype(np.int64),
        vectors=vectors,
        valid=valid,
        reasons=table.column("reason").to_pylist(),
        metadata=meta,
    )


def align_features(features: FeatureTable, items_asins: Sequence[str], source: str | Path = "") -> tuple[np.ndarray, np.ndarray]:
    """Rows of `features` in item_id order of the items table, matched by asin.

    Returns (n_items, d) vectors and a validity mask; items absent from the table are invalid.
    Refuses a table whose asins mostly do not match: that is a feature table of another catalog.
    """
    pos = {a: i for i, a in enumerate(features.asins)}
    rows = np.array([pos.get(a, -1) for a in items_asins], dtype=np.int64)
    found = rows >= 0
    if len(items_asins) and found.mean() < 0.5:
        raise StoreError(
            source or None,
            f"only {int(found.sum())} of {len(items_asins)} items have a row in this feature table",
            "it was extracted for another catalog: re-extract features for this dataset",
        )
    out = np.zeros((len(items_asins), features.dim), dtype=np.float32)
    out[found] = features.vectors[rows[found]]
    valid = np.zeros(len(items_asins), dtype=bool)
    valid[found] = features.valid[rows[found]]
    return out, valid


def write_vectors(path: str | Path, key: str, ids: np.ndarray, vectors: np.ndarray, metadata: dict[str, str] | None = None) -> Path:
    """Run output: `user_id` or `item_id` plus the final embedding."""
    if key not in ("user_id", "item_id"):
        raise ValueError("key must be 'user_id' or 'item_id'")
    vectors = np.asarray(vectors, dtype=np.float32)
    table = pa.table({key: pa.array(np.asarray(ids, dtype=np.int32)), "vector": fixed_list(vectors)})
    meta = {"dim": str(vectors.shape[1]), "vectors_hash": array_hash(vectors)}
    meta.update(metadata or {})
    return write_table(table, path, schemas.vectors_schema(key, vectors.shape[1]), metadata=meta)


def read_vectors(path: str | Path, key: str) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """(ids, vectors, metadata) of a run's user or item vectors."""
    meta = read_metadata(path) if Path(path).exists() else {}
    table = read_table(path)
    field_type = table.schema.field("vector").type if "vector" in table.column_names else None
    if field_type is None or not pa.types.is_fixed_size_list(field_type):
        raise StoreError(path, f"column 'vector' is {field_type}, expected a fixed-size float list")
    dim = field_type.list_size
    table = read_table(path, schemas.vectors_schema(key, dim))
    vectors, _ = to_matrix(table.column("vector"), dim)
    return table.column(key).to_numpy().astype(np.int64), vectors, meta
