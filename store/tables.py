"""Atomic Parquet/JSON writes and validating reads.

A crash must leave the old file or the new one, never half of one: everything is written to a
temporary file in the same directory, fsynced, then renamed over the target.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from store import fixes, records
from store.atomic import atomic_path, read_json, temp_beside, write_json  # noqa: F401 (their home before store.atomic)
from store.errors import StoreError

# Key-value metadata every table written here carries, so a reader can tell a whole file from
# one that lost rows (see store.verify).
NUM_ROWS = "num_rows"


def write_table(
    table: pa.Table,
    path: str | Path,
    schema: pa.Schema | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Cast `table` to `schema` (if given), attach key-value metadata, write atomically.

    The row count goes into the metadata and every page gets a CRC, so readers detect a file
    that was cut or damaged instead of reading less data. No clock time is written: the same
    table gives the same bytes (stage cache keys hash file bytes).
    """
    path = Path(path)
    if schema is not None:
        table = conform(table, schema, source=path)
    merged = dict(table.schema.metadata or {})
    merged.update({k.encode(): str(v).encode() for k, v in (metadata or {}).items()})
    merged[NUM_ROWS.encode()] = str(table.num_rows).encode()
    table = table.replace_schema_metadata(merged)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_page_checksum=True)
    return path


def conform(table: pa.Table, schema: pa.Schema, source: str | Path | None = None) -> pa.Table:
    """Select and cast the schema's columns; say which column is missing or uncastable."""
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise StoreError(
            source,
            f"missing column(s) {missing}; has {table.column_names}",
            fixes.repair(source) if source is not None else "",
        )
    columns = []
    for field in schema:
        col = table.column(field.name)
        try:
            col = col.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise StoreError(
                source,
                f"column {field.name!r} is {col.type}, expected {field.type}: {exc}",
                fixes.repair(source) if source is not None else "",
            ) from exc
        if not field.nullable and col.null_count:
            raise StoreError(
                source,
                f"column {field.name!r} has {col.null_count} null value(s)",
                fixes.repair(source) if source is not None else "",
            )
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema.remove_metadata())


def read_table(path: str | Path, schema: pa.Schema | None = None, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet table and validate it against `schema`, naming the file on any problem."""
    path = Path(path)
    if not path.exists():
        raise StoreError(path, "does not exist", fixes.repair(path))
    readable(path)
    try:
        table = pq.read_table(path, columns=columns, page_checksum_verification=True)
    except (pa.ArrowException, OSError) as exc:
        raise StoreError(path, f"not a readable Parquet file ({exc})", fixes.repair(path)) from exc
    recorded = (table.schema.metadata or {}).get(NUM_ROWS.encode())
    if recorded is not None and int(recorded) != table.num_rows:
        raise StoreError(path, f"has {table.num_rows} rows but its writer recorded {int(recorded)}", fixes.repair(path))

    records.check(path)  # a well-formed file that is not what its stage wrote is refused too
    if schema is None:
        return table
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns if c in schema.names])
    meta = table.schema.metadata
    out = conform(table, schema, source=path)
    return out.replace_schema_metadata(meta) if meta else out


def readable(path: str | Path) -> None:
    """Refuse a file this user may not read with "permission denied" and what to do, instead of
    the rerun advice a damaged file gets: rerunning the stage would not help."""
    path = Path(path)
    try:
        with open(path, "rb"):
            pass
    except PermissionError as exc:
        raise StoreError(
            path,
            "permission denied: this user cannot read it",
            f"give read access (ls -l {path}; chmod/chown), or run as the store's owner",
        ) from exc
    except IsADirectoryError as exc:
        raise StoreError(path, "is a directory, not a file", fixes.repair(path)) from exc


def read_metadata(path: str | Path) -> dict[str, str]:
    """The Parquet key-value metadata (without Arrow's own schema blob)."""
    path = Path(path)
    if not path.exists():
        raise StoreError(path, "does not exist", fixes.repair(path))
    readable(path)
    try:
        raw = pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError) as exc:
        raise StoreError(path, f"not a readable Parquet file ({exc})", fixes.repair(path)) from exc
    return {k.decode(): v.decode() for k, v in raw.items() if k != b"ARROW:schema"}
