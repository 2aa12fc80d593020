"""Parquet schemas of the tables every room exchanges.

Readers validate against these (see store.tables.read_table), so a table written by an old
version or by hand fails with a message naming the column, not deep inside a model.
"""
from __future__ import annotations

import pyarrow as pa

ITEMS = pa.schema(
    [
        pa.field("item_id", pa.int32(), nullable=False),
        pa.field("asin", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("description", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("categories", pa.list_(pa.string())),
        pa.field("image_url", pa.string()),
        pa.field("text", pa.string()),
    ]
)

USERS = pa.schema(
    [
        pa.field("user_id", pa.int32(), nullable=False),
        pa.field("reviewer_id", pa.string(), nullable=False),
    ]
)

SPLITS = ("train", "valid", "test")

INTERACTIONS = pa.schema(
    [
        pa.field("user_id", pa.int32(), nullable=False),
        pa.field("item_id", pa.int32(), nullable=False),
        pa.field("rating", pa.float32()),
        pa.field("timestamp", pa.int64(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
)

IMAGE_STATUSES = ("ok", "cached", "no_url", "http_error", "undecodable", "too_large", "error")

IMAGE_AUDIT = pa.schema(
    [
        pa.field("item_id", pa.int32(), nullable=False),
        pa.field("asin", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("http_status", pa.int32()),
        pa.field("detail", pa.string()),
        pa.field("bytes", pa.int64()),
        pa.field("path", pa.string()),
    ]
)


def feature_schema(dim: int) -> pa.Schema:
    """A feature table: one row per item, `vector` null when the modality is missing (`reason`)."""
    return pa.schema(
        [
            pa.field("asin", pa.string(), nullable=False),
            pa.field("item_id", pa.int32(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dim)),
            pa.field("reason", pa.string()),
        ]
    )


def vectors_schema(key: str, dim: int) -> pa.Schema:
    """Run outputs: `user_id`/`item_id` and the final embedding the score uses."""
    return pa.schema(
        [
            pa.field(key, pa.int32(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
        ]
    )


# Keys every feature table's Parquet metadata carries (ARCHITECTURE.md).
FEATURE_METADATA_KEYS = (
    "encoder",
    "model",
    "weights",
    "dim",
    "modality",
    "input_hash",
    "created_at",
)
MODALITIES = ("image", "text", "mm")
