"""Token tables: `tokens/<name>.parquet`, several fp16 vectors per item (image patches, word states).

Why a format of its own instead of a wider feature table: a fusion encoder needs the tokens of an
item and how many of them are real, and masked word modelling needs the tokenizer ids. The file
stores only the real tokens of each row (a text of 9 word pieces costs 9 tokens, not max_length),
so the padded (n, max_tokens, dim) array is built on read.

Schema (one row per item, in item_id order of items.parquet):

| column | type | meaning |
| --- | --- | --- |
| `asin` | string | the item, as in items.parquet |
| `item_id` | int32 | 0..n-1 |
| `n_tokens` | int16 | real tokens; 0 when the item has no image / empty text |
| `tokens` | list<fixed_size_list<halffloat>[dim]> | the real tokens, null when n_tokens is 0 |
| `ids` | list<int32> | text tables only: tokenizer ids of the tokens (CLS … SEP) |
| `reason` | string | why an item has no tokens, null otherwise |

Key-value metadata: `kind=tokens`, `encoder`, `model`, `weights`, `modality`, `dim`, `max_tokens`,
`input_hash`, `content_hash`, `token_meta` (JSON: grid for images; max_length, tokenizer,
vocab_size and the special token ids for text). No clock time: `created_at` is in
`tokens/<name>.json`. This module is in the store so that verify and every room can read the
format; features.tokens writes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from store import fixes
from store.errors import StoreError
from store.tables import (
    NUM_ROWS,
    read_json,
    read_metadata,
    read_table,
    write_json,
    write_table,
)
from store.vectors import sidecar

KIND = "tokens"
FP16_MAX = float(np.finfo(np.float16).max)


@dataclass
class TokenTable:
    """A token table in memory, zero-padded to `max_tokens`; `mask` says which tokens are real."""

    asin: list[str]
    item_id: np.ndarray  # int32 (n,)
    tokens: np.ndarray  # float16 (n, max_tokens, dim)
    mask: np.ndarray  # bool (n, max_tokens)
    ids: np.ndarray | None  # int32 (n, max_tokens), 0 = pad; None for image tokens
    modality: str
    meta: dict = field(default_factory=dict)
    reasons: list[str | None] = field(default_factory=list)

    @property
    def valid(self) -> np.ndarray:
        """Items with at least one token: a missing modality has none, never a zero vector."""
        return np.asarray(self.mask.any(axis=1))

    @property
    def n_tokens(self) -> np.ndarray:
        return self.mask.sum(axis=1).astype(np.int16)


def token_schema(dim: int, with_ids: bool) -> pa.Schema:
    fields = [
        pa.field("asin", pa.string(), nullable=False),
        pa.field("item_id", pa.int32(), nullable=False),
        pa.field("n_tokens", pa.int16(), nullable=False),
        pa.field("tokens", pa.list_(pa.list_(pa.float16(), dim))),
    ]
    if with_ids:
        fields.append(pa.field("ids", pa.list_(pa.int32())))
    fields.append(pa.field("reason", pa.string()))
    return pa.schema(fields)


def to_fp16(x: np.ndarray) -> np.ndarray:
    """float → float16, saturating instead of turning large activations into inf."""
    return np.clip(np.asarray(x, dtype=np.float32), -FP16_MAX, FP16_MAX).astype(np.float16)


def token_columns(tokens: np.ndarray, n_tokens: np.ndarray, ids: np.ndarray | None) -> dict[str, pa.Array]:
    """Padded (n, T, dim) tokens (+ (n, T) ids) → the `n_tokens`, `tokens` (and `ids`) columns,
    keeping only the first n_tokens[i] tokens of row i."""
    dim = tokens.shape[2]
    counts = np.asarray(n_tokens, dtype=np.int64)
    keep = np.arange(tokens.shape[1])[None, :] < counts[:, None]
    flat = to_fp16(tokens[keep]).reshape(-1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    empty = pa.array(counts == 0)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float16()), dim)
    out = {
        "n_tokens": pa.array(counts.astype(np.int16)),
        "tokens": pa.ListArray.from_arrays(pa.array(offsets), inner, mask=empty),
    }
    if ids is not None:
        out["ids"] = pa.ListArray.from_arrays(
            pa.array(offsets), pa.array(np.asarray(ids)[keep].astype(np.int32)), mask=empty
        )
    return out


def leaf_values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Every leaf value of a (nested) list column in row order, only those its rows point at
    (offsets and slices honoured): the stored tokens or ids of all rows, one after another."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    while pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        arr = arr.flatten()
    return arr.to_numpy(zero_copy_only=False)


def padded(
    counts: np.ndarray, max_tokens: int, dim: int, flat_tokens: np.ndarray, flat_ids: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The stored layout (real tokens only, row after row) → zero-padded (tokens, mask, ids)."""
    mask = np.arange(max_tokens)[None, :] < np.asarray(counts)[:, None]
    tokens = np.zeros((len(counts), max_tokens, dim), np.float16)
    tokens[mask] = flat_tokens.reshape(-1, dim)
    ids = None
    if flat_ids is not None:
        ids = np.zeros((len(counts), max_tokens), np.int32)
        ids[mask] = flat_ids
    return tokens, mask, ids


def tokens_hash(
    asins: Sequence[str],
    item_ids: np.ndarray,
    n_tokens: np.ndarray,
    flat_tokens: np.ndarray,
    flat_ids: np.ndarray | None,
    reasons: Sequence[str | None],
) -> str:
    """Content hash of a token table's rows in order: what a verify recomputes from the file."""
    h = hashlib.sha256()
    for text in (asins, ["\x00" if r is None else r for r in reasons]):
        h.update("\x1f".join(text).encode())
        h.update(b"\x1e")
    arrays = [np.asarray(item_ids, np.int64), np.asarray(n_tokens, np.int64), np.asarray(flat_tokens, np.float16)]
    if flat_ids is not None:
        arrays.append(np.asarray(flat_ids, np.int32))
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def write_tokens(
    path: str | Path,
    asins: Sequence[str],
    item_ids: np.ndarray,
    columns: dict[str, pa.Array],
    reasons: Sequence[str | None],
    *,
    dim: int,
    max_tokens: int,
    modality: str,
    metadata: dict[str, str],
    token_meta: dict,
) -> Path:
    """Write a token table atomically, with its content hash, and the created_at sidecar."""
    table = pa.table(
        {
            "asin": pa.array(list(asins), pa.string()),
            "item_id": pa.array(np.asarray(item_ids, np.int32)),
            **columns,
            "reason": pa.array(list(reasons), pa.string()),
        }
    )
    with_ids = "ids" in columns
    content = tokens_hash(
        list(asins),
        np.asarray(item_ids),
        columns["n_tokens"].to_numpy(),
        leaf_values(columns["tokens"]),
        leaf_values(columns["ids"]) if with_ids else None,
        list(reasons),
    )
    meta = dict(metadata)
    meta.update(
        {
            "kind": KIND,
            "modality": modality,
            "dim": str(dim),
            "max_tokens": str(max_tokens),
            "content_hash": content,
            "token_meta": json.dumps(token_meta, sort_keys=True),
        }
    )
    meta.pop("created_at", None)
    out = write_table(table, path, token_schema(dim, with_ids), metadata=meta)
    write_json({"created_at": datetime.now(UTC).isoformat(timespec="seconds"), "content_hash": content}, sidecar(path))
    return out


def _refuse(path: Path, problem: str) -> StoreError:
    return StoreError(path, problem, fixes.repair(path, "features"))


def load_tokens(path: str | Path) -> TokenTable:
    """Read a token table, checking its kind, schema and recorded content hash."""
    path = Path(path)
    kv = read_metadata(path)
    if kv.get("kind") != KIND:
        raise _refuse(path, f"is not a token table (kind={kv.get('kind')!r})")
    dim, max_tokens = int(kv["dim"]), int(kv["max_tokens"])
    with_ids = kv.get("modality") == "text"
    table = read_table(path, token_schema(dim, with_ids))
    counts = table.column("n_tokens").to_numpy().astype(np.int64)
    if counts.max(initial=0) > max_tokens:
        raise _refuse(path, f"a row has {counts.max()} tokens, more than max_tokens={max_tokens}")
    flat = leaf_values(table.column("tokens"))
    flat_ids = leaf_values(table.column("ids")) if with_ids else None
    if len(flat) != counts.sum() * dim or (flat_ids is not None and len(flat_ids) != counts.sum()):
        raise _refuse(path, "n_tokens does not match the stored tokens")
    asins = table.column("asin").to_pylist()
    reasons = table.column("reason").to_pylist()
    item_ids = table.column("item_id").to_numpy().astype(np.int32)
    actual = tokens_hash(asins, item_ids, counts, flat, flat_ids, reasons)
    if actual != kv.get("content_hash"):
        raise _refuse(
            path, f"rows do not match the content_hash its writer recorded ({actual} ≠ {kv.get('content_hash')})"
        )
    tokens, mask, ids = padded(counts, max_tokens, dim, flat, flat_ids)
    meta: dict[str, Any] = {k: v for k, v in kv.items() if k not in ("token_meta", NUM_ROWS)}
    meta.update(json.loads(kv.get("token_meta", "{}")))
    meta["dim"], meta["max_tokens"] = dim, max_tokens
    return TokenTable(asins, item_ids, tokens, mask, ids, kv["modality"], meta, reasons)


def created_at(path: str | Path) -> str | None:
    """When the table was written (from its sidecar; never part of the table's bytes)."""
    side = sidecar(path)
    try:
        return str(read_json(side).get("created_at")) if side.exists() else None
    except (StoreError, AttributeError):
        return None


__all__ = [
    "KIND",
    "TokenTable",
    "created_at",
    "load_tokens",
    "token_columns",
    "token_schema",
    "tokens_hash",
    "write_tokens",
]
