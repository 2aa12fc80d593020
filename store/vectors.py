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

from store import fixes, records, schemas
from store.errors import StoreError
from store.tables import conform, read_json, read_metadata, read_table, write_json, write_table

# How `vectors_hash` of run vectors is computed. Files without the key (older writers) hashed
# the vector rows alone.
HASH_OF = "ids+vectors"


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


def vectors_hash(ids: np.ndarray, vectors: np.ndarray) -> str:
    """Hash of ids and vector rows together: a row shuffle or an id/vector mix-up changes it."""
    return array_hash(np.asarray(ids, dtype=np.int64), np.asarray(vectors, dtype=np.float32))


def features_hash(
    asins: Sequence[str], item_ids: np.ndarray, vectors: np.ndarray, valid: np.ndarray, reasons: Sequence[str | None]
) -> str:
    """Content hash of a feature table's rows (asin, id, vector, validity, reason), in order."""
    h = hashlib.sha256()
    for text in (asins, ["\x00" if r is None else r for r in reasons]):
        h.update("\x1f".join(text).encode())
        h.update(b"\x1e")
    h.update(
        array_hash(
            np.asarray(item_ids, dtype=np.int64),
            np.where(np.asarray(valid, bool)[:, None], vectors, 0).astype(np.float32),
            np.asarray(valid, bool),
        ).encode()
    )
    return h.hexdigest()[:16]


def sidecar(path: str | Path) -> Path:
    """`features/<name>.json` beside `features/<name>.parquet`: times that must not change the table's bytes."""
    return Path(path).with_suffix(".json")


def _refuse(path: str | Path, problem: str, stage: str | None = None) -> StoreError:
    return StoreError(path, problem, fixes.repair(path, stage))


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
    vectors_f32 = np.asarray(vectors, dtype=np.float32)
    content = features_hash(list(asins), np.asarray(item_ids), vectors_f32, valid, list(reasons))
    meta = {
        "encoder": encoder,
        "model": model,
        "weights": weights,
        "dim": str(dim),
        "modality": modality,
        "input_hash": input_hash,
        "content_hash": content,
    }
    meta.update(extra or {})
    meta.pop("created_at", None)  # a clock time would make identical tables differ in bytes
    out = write_table(table, path, schemas.feature_schema(dim), metadata=meta)
    write_json(
        {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "content_hash": content}, sidecar(path)
    )
    return out


def read_features(path: str | Path) -> FeatureTable:
    """Read a feature table, checking its metadata and vector width."""
    path = Path(path)
    meta = read_metadata(path)
    if "dim" not in meta:
        raise _refuse(path, "has no 'dim' metadata: not a feature table written by the store", "features")
    table = read_table(path)
    dim = int(meta["dim"])
    if "vector" not in table.column_names or not pa.types.is_fixed_size_list(table.schema.field("vector").type):
        kind = table.schema.field("vector").type if "vector" in table.column_names else "missing"
        raise _refuse(path, f"column 'vector' is {kind}, not FLOAT[{dim}]", "features")
    table = conform_checked(path, table, schemas.feature_schema(dim))
    vectors, valid = to_matrix(table.column("vector"), dim)
    out = FeatureTable(
        asins=table.column("asin").to_pylist(),
        item_ids=table.column("item_id").to_numpy().astype(np.int64),
        vectors=vectors,
        valid=valid,
        reasons=table.column("reason").to_pylist(),
        metadata=meta,
    )
    recorded = meta.get("content_hash")
    if recorded is not None:
        actual = features_hash(out.asins, out.item_ids, vectors, valid, out.reasons)
        if actual != recorded:
            raise _refuse(
                path, f"rows do not match the content_hash its writer recorded ({actual} ≠ {recorded})", "features"
            )
    side = sidecar(path)
    if "created_at" not in meta and side.exists():
        try:
            meta["created_at"] = str(read_json(side).get("created_at", ""))
        except (StoreError, AttributeError):
            pass  # the sidecar only carries a time for people; the table is verified above
    return out


def conform_checked(path: Path, table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`conform` that keeps the file's metadata (read_table already checked the row count)."""
    meta = table.schema.metadata
    out = conform(table, schema, source=path)
    return out.replace_schema_metadata(meta) if meta else out


def align_features(
    features: FeatureTable, items_asins: Sequence[str], source: str | Path = ""
) -> tuple[np.ndarray, np.ndarray]:
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
            f"it was extracted for another catalog: {fixes.repair(source or 'features', 'features')}",
        )
    out = np.zeros((len(items_asins), features.dim), dtype=np.float32)
    out[found] = features.vectors[rows[found]]
    valid = np.zeros(len(items_asins), dtype=bool)
    valid[found] = features.valid[rows[found]]
    return out, valid


def write_vectors(
    path: str | Path, key: str, ids: np.ndarray, vectors: np.ndarray, metadata: dict[str, str] | None = None
) -> Path:
    """Run output: `user_id` or `item_id` plus the final embedding."""
    if key not in ("user_id", "item_id"):
        raise ValueError("key must be 'user_id' or 'item_id'")
    vectors = np.asarray(vectors, dtype=np.float32)
    ids32 = np.asarray(ids, dtype=np.int32)
    table = pa.table({key: pa.array(ids32), "vector": fixed_list(vectors)})
    meta = dict(metadata or {})
    meta.update({"dim": str(vectors.shape[1]), "vectors_hash": vectors_hash(ids32, vectors), "hash_of": HASH_OF})
    return write_table(table, path, schemas.vectors_schema(key, vectors.shape[1]), metadata=meta)


def recorded_hash_problem(meta: dict[str, str], ids: np.ndarray, vectors: np.ndarray) -> str | None:
    """Why the rows disagree with the vectors_hash their writer recorded, or None."""
    recorded = meta.get("vectors_hash")
    if recorded is None:
        return None
    actual = vectors_hash(ids, vectors) if meta.get("hash_of") == HASH_OF else array_hash(vectors)
    if actual != recorded:
        return f"rows do not match the vectors_hash its writer recorded ({actual} ≠ {recorded}): rows were reordered or changed"
    return None


def read_vectors(path: str | Path, key: str) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """(ids, vectors, metadata) of a run's user or item vectors, checked against their recorded hash."""
    path = Path(path)
    meta = read_metadata(path)
    table = read_table(path)
    field_type = table.schema.field("vector").type if "vector" in table.column_names else None
    if field_type is None or not pa.types.is_fixed_size_list(field_type):
        raise _refuse(path, f"column 'vector' is {field_type}, expected a fixed-size float list")
    dim = field_type.list_size
    table = conform_checked(path, table, schemas.vectors_schema(key, dim))
    vectors, _ = to_matrix(table.column("vector"), dim)
    ids = table.column(key).to_numpy().astype(np.int64)
    problem = recorded_hash_problem(meta, ids, vectors)
    if problem:
        raise _refuse(path, problem)
    return ids, vectors, meta


# (path, key) → (file identity, vectors_hash): a file is verified once per process while it is unchanged.
_VERIFIED: dict[tuple[str, str], tuple[records.Identity, str]] = {}


def verified_vectors_hash(path: str | Path, key: str) -> str:
    """The recorded vectors_hash of a vectors file after checking its rows against it (cached by
    inode, size, mtime and ctime; not for a file changed in the last seconds, see store.records)."""
    path = Path(path)
    cache_key = (str(path.resolve()), key)
    ident = records.identity(path) if path.exists() else None
    hit = _VERIFIED.get(cache_key)
    if hit is not None and hit[0] == ident:
        return hit[1]
    ids, vectors, meta = read_vectors(path, key)
    recorded = meta.get("vectors_hash") or vectors_hash(ids, vectors)
    if ident is not None and records.settled(ident) and records.identity(path) == ident:
        _VERIFIED[cache_key] = (ident, recorded)
    return recorded
