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

# <dataset>/cold_items.parquet (ingest --cold-items): items held out with all their interactions
COLD_SPLITS = ("valid", "test")
COLD_ITEMS = pa.schema(
    [
        pa.field("item_id", pa.int32(), nullable=False),
        pa.field("asin", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
)

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
# Why an item has no image, finer than `status` (whose 'error' covers every network failure):
# a dead host (dns, refused, host_down) calls for a local copy, a timeout for a rerun.
IMAGE_REASONS = ("dns", "refused", "timeout", "http_error", "undecodable", "too_large", "host_down", "no_url", "error")
# Where an item's image came from this run ('cache': kept from an earlier run).
IMAGE_SOURCES = ("url", "cache", "local_dir", "local_csv")

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
# The core above is what readers may rely on (audits of older versions have only it); the
# fetcher writes these provenance columns too: `reason` (IMAGE_REASONS, null when the item has
# an image), `source` (IMAGE_SOURCES, null when none) and `origin` (the URL or local file the
# image was read from: what decides, on a rerun, whether the file in images/ is still current).
IMAGE_AUDIT_PROVENANCE = (
    pa.field("reason", pa.string()),
    pa.field("source", pa.string()),
    pa.field("origin", pa.string()),
)
IMAGE_AUDIT_FULL = pa.schema([*IMAGE_AUDIT, *IMAGE_AUDIT_PROVENANCE])


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


# Keys every feature table's Parquet metadata carries (ARCHITECTURE.md). No clock time: the same
# rows must give the same bytes; `created_at` lives in the sidecar features/<name>.json.
FEATURE_METADATA_KEYS = (
    "encoder",
    "model",
    "weights",
    "dim",
    "modality",
    "input_hash",
    "content_hash",
    "num_rows",
)
MODALITIES = ("image", "text", "mm")
