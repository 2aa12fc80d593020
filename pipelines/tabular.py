"""Users' own files in: interactions and item metadata as CSV, TSV or Parquet (`release="csv"`).

Reading is Arrow's (pyarrow.csv / pyarrow.parquet), every column as a string first, then
converted column by column with vectorized checks, so a bad value costs one row, never the
file: rows with no user or item, an unparsable timestamp or an unknown split value are counted
in BadRecords with their row number (the line number, unless a quoted value spans lines; the
header is row 1) and skipped; an unparsable rating is counted and kept with no rating.
Wrong-width CSV rows are counted too (Arrow's invalid-row handler). Blank lines are skipped.

Columns are found by role, either named by the user (`columns="user=reviewerID,item=asin"`) or
by the first of a few usual names (DEFAULT_NAMES). Timestamps are integer Unix seconds or ISO
8601 dates/times (naive ones are UTC); a file without a timestamp column gets 0 for every
interaction. A split column (train/valid/test, or 0/1/2 as in MMRec's x_label) is carried to
prepare, which keeps it when every kept interaction has one.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipelines.amazon import BAD_CSV, BAD_RATING, BAD_TIMESTAMP, MISSING_ASIN, MISSING_USER
from pipelines.records import REVIEW_SPLIT_SCHEMA, BadRecords, Product, ReviewBatch

BAD_SPLIT = "unknown split value (expected train, valid or test)"
INTERACTION_ROLES = ("user", "item", "rating", "timestamp", "split")
META_ROLES = ("asin", "title", "description", "brand", "categories", "image")
DEFAULT_NAMES: dict[str, tuple[str, ...]] = {
    "user": ("user", "user_id", "userID", "reviewerID", "reviewer_id"),
    "item": ("item", "asin", "parent_asin", "item_id", "itemID"),
    "rating": ("rating", "overall", "stars", "score"),
    "timestamp": ("timestamp", "unixReviewTime", "time", "ts", "date"),
    "split": ("split", "x_label"),
    "asin": ("asin", "parent_asin", "item", "item_id"),
    "title": ("title", "name"),
    "description": ("description",),
    "brand": ("brand", "store"),
    "categories": ("categories", "category"),
    "image": ("image_url", "image_path", "path", "image_file", "imUrl"),
}
SPLIT_CODES = {"train": 0, "valid": 1, "validation": 1, "val": 1, "test": 2, "0": 0, "1": 1, "2": 2}
TABLE_SUFFIXES = (".csv", ".tsv", ".tab", ".txt", ".parquet", ".pq")
_INT = re.compile(r"^\s*\d+\s*$")
_FLOAT = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


def is_table_file(path: str | Path) -> bool:
    """True for a CSV/TSV/Parquet file name (optionally .gz / .bz2 compressed text)."""
    name = Path(path).name.lower()
    for comp in (".gz", ".bz2"):
        name = name.removesuffix(comp)
    return name.endswith(TABLE_SUFFIXES)


def parse_columns(
    spec: str | Mapping[str, str] | None, roles: tuple[str, ...] = INTERACTION_ROLES, option: str = "--columns"
) -> dict[str, str]:
    """'user=reviewerID,item=asin' or 'user=0,item=1' (or a dict) → {role: column}; unknown roles are an error."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, Mapping):
        pairs = [(str(k).strip(), str(v).strip()) for k, v in spec.items()]
    else:
        pairs = []
        for part in str(spec).split(","):
            if not part.strip():
                continue
            key, sep, value = part.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise ValueError(
                    f'{option}: {part.strip()!r} is not ROLE=COLUMN; write e.g. {option} "{_example(roles)}"'
                )
            pairs.append((key.strip(), value.strip()))
    pairs = [("timestamp" if k == "time" else k, v) for k, v in pairs]
    unknown = [k for k, _ in pairs if k not in roles]
    if unknown:
        other = "--meta-columns" if option == "--columns" else "--columns"
        also = (
            f" ({other} names the {'metadata' if other == '--meta-columns' else 'interaction'} columns)"
            if set(unknown) & set(META_ROLES if other == "--meta-columns" else INTERACTION_ROLES)
            else ""
        )
        raise ValueError(
            f"{option}: unknown role(s) {', '.join(unknown)}; the roles are {', '.join(roles)}{also} "
            f'(e.g. {option} "{_example(roles)}")'
        )
    return dict(pairs)


def _example(roles: tuple[str, ...]) -> str:
    if roles == META_ROLES:
        return "asin=product_id,title=name,brand=maker,image=image_url"
    return "user=reviewerID,item=asin,rating=stars,timestamp=ts"


def resolve_columns(
    path: Path,
    found: list[str],
    mapping: dict[str, str],
    roles: tuple[str, ...],
    required: tuple[str, ...],
    option: str = "--columns",
) -> dict[str, str]:
    """{role: column} for this file: the user's names or positions (which must exist), else the usual ones."""
    mapping = {r: _positional(path, found, c, option) for r, c in mapping.items()}
    missing_named = {r: c for r, c in mapping.items() if c not in found}
    out = {r: c for r, c in mapping.items() if c in found}
    for role in roles:
        if role not in out and role not in mapping:
            name = next((n for n in DEFAULT_NAMES[role] if n in found), None)
            if name is not None and name not in out.values():
                out[role] = name
    absent = [r for r in required if r not in out]
    if missing_named or absent:
        what = [f"{r}={c} (no such column)" for r, c in missing_named.items()]
        what += [f"{r} (no column named {', '.join(DEFAULT_NAMES[r])})" for r in absent if r not in missing_named]
        wrong = [*missing_named, *(r for r in absent if r not in missing_named)]
        example = ",".join(
            f"{r}={found[min(k, len(found) - 1)] if found else 'COLUMN'}" for k, r in enumerate(required)
        )
        raise ValueError(
            f"{path.name}: cannot find column(s) for role {', '.join(wrong)}: {'; '.join(what)}; columns found: "
            f'{", ".join(found) or "none"}; say which column is the {wrong[0]} with {option} "{example}"'
        )
    return out


def _positional(path: Path, found: list[str], column: str, option: str) -> str:
    """A column given by position (0 = first) → its name; names pass through."""
    if column in found or not column.isdigit():
        return column
    k = int(column)
    if k >= len(found):
        raise ValueError(
            f"{path.name}: {option} names column {k} but the file has {len(found)} column(s) (positions count from 0)"
        )
    return found[k]


# --------------------------------------------------------------------------------------------
# file → string table + row numbers
# --------------------------------------------------------------------------------------------
def sniff_delimiter(path: Path) -> str:
    """',' or '\\t' (or ';' / '|') by extension, else by csv.Sniffer on the first lines."""
    name = path.name.lower().removesuffix(".gz").removesuffix(".bz2")
    if name.endswith((".tsv", ".tab")):
        return "\t"
    if name.endswith(".csv"):
        return ","
    with pa.input_stream(str(path), compression="detect") as fh:
        head = fh.read(64 * 1024).decode("utf-8", "replace")
    try:
        return csv.Sniffer().sniff(head.split("\n", 1)[0] or head, delimiters=",\t;|").delimiter
    except csv.Error:
        return ","


def is_parquet(path: Path) -> bool:
    if path.name.lower().endswith((".parquet", ".pq")):
        return True
    with open(path, "rb") as fh:
        return fh.read(4) == b"PAR1"


def read_string_table(
    path: str | Path,
    bad: BadRecords,
    *,
    header: bool | None = None,
    names: frozenset[str] = frozenset(),
    option: str = "--columns",
    roles: tuple[str, ...] = INTERACTION_ROLES,
    count: bool = True,
) -> tuple[pa.Table, np.ndarray]:
    """Every column as strings (Parquet timestamps as Unix seconds) and each row's number.

    `header`: True / False, or None to decide from the first two rows (decide_header; `names` are
    column names the caller expects, e.g. the user's --columns). A file without a header has
    columns named by position, "0", "1", …. Every line is counted in `bad.count_lines`.
    """
    path = Path(path)
    if is_parquet(path):
        table = pq.read_table(path)
        cols = []
        for col in table.columns:
            if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
                col = pc.cast(pc.cast(col, pa.timestamp("s")), pa.int64())
            if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
                col = pa.chunked_array([pa.array([json.dumps(v) if v is not None else None for v in col.to_pylist()])])
            cols.append(pc.cast(col, pa.string()))
        if count:
            bad.count_lines(path, table.num_rows)
        return pa.table(cols, names=table.column_names), np.arange(2, table.num_rows + 2)
    delimiter = sniff_delimiter(path)
    first_rows = _first_rows(path, delimiter)
    if header is None:
        header = decide_header(path, first_rows, names | set(_ALL_DEFAULT_NAMES), option, roles)
    skipped: list[int] = []
    blank_invalid = [0]

    def invalid(row: pacsv.InvalidRow) -> str:
        if row.text.strip():
            bad.add(
                path,
                row.number,
                BAD_CSV,
                f"{row.actual_columns} fields, expected {row.expected_columns}: {row.text[:80]!r}",
            )
        else:
            blank_invalid[0] += 1
        if row.number is not None:
            skipped.append(row.number)
        return "skip"

    parse = pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=invalid, ignore_empty_lines=False)
    if header:
        names_found = first_rows[0] if first_rows else []
        read = pacsv.ReadOptions(use_threads=False, block_size=1 << 24)
    else:
        names_found = [str(k) for k in range(len(first_rows[0]) if first_rows else 1)]
        read = pacsv.ReadOptions(use_threads=False, block_size=1 << 24, column_names=names_found)
    if header:
        try:
            probe = pacsv.open_csv(
                str(path),
                read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 16),
                parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=lambda r: "skip"),
            )
            names_found = probe.schema.names
            probe.close()
        except (pa.ArrowInvalid, OSError) as exc:
            raise ValueError(
                f"{path.name}: cannot read it as a table ({exc}); give a CSV, TSV or Parquet file"
            ) from exc
    convert = pacsv.ConvertOptions(
        column_types={n: pa.string() for n in names_found},
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    try:
        table = pacsv.read_csv(str(path), read_options=read, parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid as exc:
        raise ValueError(f"{path.name}: cannot read it as a table ({exc}); give a CSV, TSV or Parquet file") from exc
    start = 2 if header else 1
    rows = np.setdiff1d(np.arange(start, table.num_rows + len(skipped) + start), np.asarray(skipped, dtype=np.int64))
    if count:
        bad.count_lines(
            path, table.num_rows + len(skipped) + int(bool(header)), header=int(bool(header)), blank=blank_invalid[0]
        )
    return table, rows[: table.num_rows]


_ALL_DEFAULT_NAMES = frozenset(n for names in DEFAULT_NAMES.values() for n in names)
_ID_SHAPED = re.compile(r"^[A-Z0-9]{8,}$")  # ASINs (B00000JBLH, 0001527665), reviewer ids (A32T2H8150OJLU)


def _first_rows(path: Path, delimiter: str, n: int = 2) -> list[list[str]]:
    """The first n non-blank rows, split by the csv module (a quick look, not the real read)."""
    with pa.input_stream(str(path), compression="detect") as fh:
        head = fh.read(256 * 1024).decode("utf-8", "replace").lstrip("\ufeff")
    lines = [ln for ln in head.splitlines()[:50] if ln.strip()]
    rows = list(csv.reader(lines, delimiter=delimiter))
    return [r for r in rows if r][:n]


def looks_like_data(value: str) -> bool:
    """A value no one would name a column: a number, an ASIN/reviewer-id-shaped id, an ISO date."""
    v = value.strip()
    if re.match(_FLOAT, v) or (_ID_SHAPED.match(v) and any(c.isdigit() for c in v)):
        return True
    if v[:1].isdigit():
        try:
            datetime.fromisoformat(v)
            return True
        except ValueError:
            return False
    return False


def decide_header(
    path: Path,
    rows: list[list[str]],
    names: set[str] | frozenset[str],
    option: str = "--columns",
    roles: tuple[str, ...] = INTERACTION_ROLES,
) -> bool:
    """Is the first row a header? Column names we know → yes; values shaped like data → no; words
    over numbers → yes. Otherwise stop: guessing wrong loses a row or mislabels every column."""
    if not rows:
        return True
    first = [v.strip() for v in rows[0]]
    named = any(v in names for v in first)
    data = [v for v in first if looks_like_data(v)]
    if named and not data:
        return True
    if data and not named:
        return False
    if (
        not named
        and len(rows) > 1
        and any(looks_like_data(b) and not looks_like_data(a) for a, b in zip(first, rows[1]))
    ):
        return True
    second = rows[1] if len(rows) > 1 else []
    as_named = ",".join(f"{r}={first[k]}" for k, r in enumerate(roles[: min(2, len(first))]))
    placed = ",".join(f"{r}={k}" for k, r in enumerate(roles[: min(2, len(first))]))
    raise ValueError(
        f"{path.name}: cannot tell whether row 1 is a header: row 1 {first}, row 2 {second}; if row 1 names "
        f'the columns say {option} "{as_named}", if it is data say --no-header {option} "{placed}"'
    )


def positional_hint(row: list[str], roles: tuple[str, ...] = INTERACTION_ROLES) -> str:
    """A guess at ROLE=POSITION for a headerless file, from the shapes of its first row."""
    guess: dict[str, int] = {}
    for k, v in enumerate(v.strip() for v in row):
        if roles == META_ROLES:
            role = "asin" if k == 0 else "title" if k == 1 else None
        elif re.fullmatch(r"[A-Z0-9]{10}", v) and "item" not in guess:
            role = "item"
        elif re.match(_FLOAT, v) and "." in v or (v.isdigit() and len(v) == 1):
            role = "rating"
        elif v.isdigit() and len(v) >= 9 or looks_like_data(v) and "-" in v:
            role = "timestamp"
        else:
            role = "user" if "user" not in guess else "item"
        if role and role not in guess:
            guess[role] = k
    for role, k in (("user", 0), ("item", 1)):
        guess.setdefault(role, k)
    return ",".join(f"{r}={k}" for r, k in sorted(guess.items(), key=lambda x: x[1]))


def check_columns(
    path: str | Path, columns: str | Mapping[str, str] | None, *, no_header: bool = False, meta: bool = False
) -> dict[str, str]:
    """What read_interactions / read_meta_table would decide about the header and the columns, from
    the first rows only: the command line refuses a file it cannot read before any work starts."""
    path = Path(path)
    roles, option = (META_ROLES, "--meta-columns") if meta else (INTERACTION_ROLES, "--columns")
    mapping = parse_columns(columns, roles, option)
    if is_parquet(path):
        found = pq.read_schema(path).names
    else:
        rows = _first_rows(path, sniff_delimiter(path))
        header = (
            False
            if no_header
            else decide_header(path, rows, frozenset(mapping.values()) | _ALL_DEFAULT_NAMES, option, roles)
        )
        found = rows[0] if header and rows else [str(k) for k in range(len(rows[0]) if rows else 1)]
        if not header and not mapping:
            said = "--no-header says" if no_header else "row 1 looks like data"
            row = rows[0] if rows else []
            raise ValueError(
                f"{path.name} has no header ({said}: {row[:4]}); say which column is which by position, "
                f'e.g. {option} "{positional_hint(row, roles)}"'
            )
        found = [c.strip() for c in found]
    return resolve_columns(path, found, mapping, roles, ("asin",) if meta else ("user", "item"), option)


def _blank(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """True where a string value is null or only spaces."""
    return pc.fill_null(pc.equal(pc.utf8_trim_whitespace(col), ""), True)


def _report(
    bad: BadRecords, path: Path, mask: np.ndarray, rows: np.ndarray, reason: str, table: pa.Table, dropped: bool = True
) -> None:
    for k in np.flatnonzero(mask):
        bad.add(path, int(rows[k]), reason, _brief(table, int(k)), dropped=dropped)


def _brief(table: pa.Table, k: int) -> str:
    row = table.slice(k, 1).to_pylist()[0]
    return ", ".join(f"{c}={str(v)[:30]!r}" for c, v in list(row.items())[:5])


def to_float(col: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """Floats (null where empty) and a mask of values present but not numbers."""
    col = pc.utf8_trim_whitespace(col)
    ok = pc.fill_null(pc.match_substring_regex(col, _FLOAT), False)
    values = pc.cast(pc.if_else(ok, col, pa.scalar(None, pa.string())), pa.float64())
    present = pc.invert(_blank(col))
    return values, pc.and_(present, pc.invert(ok)).to_numpy(zero_copy_only=False)


MILLIS_ABOVE = 10**11  # an epoch beyond this is in milliseconds (1e11 s is the year 5138; 1e11 ms is 1973)


def to_unix_seconds(col: pa.ChunkedArray, units: Counter | None = None) -> np.ndarray:
    """Unix seconds per value; -1 where missing or not a time.

    Integers are epoch seconds, or milliseconds above MILLIS_ABOVE (divided by 1000); strings are
    ISO 8601 dates/times (naive ones UTC). `units` counts values read as seconds / milliseconds / iso.
    """
    values = pc.utf8_trim_whitespace(col).to_pylist()
    out = np.full(len(values), -1, dtype=np.int64)
    cache: dict[str, tuple[int, str]] = {}
    units = units if units is not None else Counter()
    for k, v in enumerate(values):
        if v is None or v == "":
            continue
        if v not in cache:
            cache[v] = _seconds(v)
        out[k], unit = cache[v]
        if out[k] >= 0:
            units[unit] += 1
    return out


def _seconds(value: str) -> tuple[int, str]:
    if _INT.match(value) or re.match(_FLOAT, value):
        t = int(float(value)) if not _INT.match(value) else int(value)
        if t < 0 or t >= 1 << 62:
            return -1, ""
        return (t // 1000, "milliseconds") if t > MILLIS_ABOVE else (t, "seconds")
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return -1, ""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    t = int(dt.timestamp())
    return (t, "iso") if t >= 0 else (-1, "")


# --------------------------------------------------------------------------------------------
# interactions
# --------------------------------------------------------------------------------------------
def read_interactions(
    path: str | Path,
    bad: BadRecords,
    columns: str | Mapping[str, str] | None = None,
    *,
    no_header: bool = False,
    split: int | None = None,
    notes: dict[str, Any] | None = None,
) -> tuple[ReviewBatch, dict[str, str]]:
    """One batch with a split column (null where not given) and the {role: column} it used.

    `split` (0/1/2) is the split of every row (a --train/--valid/--test file); `notes` receives
    what was inferred (header or not, timestamp units) for prepare.json.
    """
    path = Path(path)
    mapping = parse_columns(columns, INTERACTION_ROLES)
    table, rows = read_string_table(path, bad, header=False if no_header else None, names=frozenset(mapping.values()))
    headerless = table.column_names[:1] == ["0"]
    if headerless and not mapping:
        row = [str(v) for v in table.slice(0, 1).to_pylist()[0].values()] if table.num_rows else []
        said = "--no-header says" if no_header else "row 1 looks like data"
        raise ValueError(
            f"{path.name} has no header ({said}: {row[:4]}); say which column is which by position, "
            f'e.g. --columns "{positional_hint(row)}"'
        )
    used = resolve_columns(path, table.column_names, mapping, INTERACTION_ROLES, ("user", "item"))
    units: Counter = Counter()
    if notes is not None:
        notes.update(header=not headerless, timestamp_units=units)
    n = table.num_rows
    blank_row = np.ones(n, dtype=bool)
    for col in table.columns:
        blank_row &= _blank(col).to_numpy(zero_copy_only=False)
    keep = ~blank_row
    bad.count_blank(path, int(blank_row.sum()))
    user = pc.utf8_trim_whitespace(table.column(used["user"]))
    item = pc.utf8_trim_whitespace(table.column(used["item"]))
    for name, col, reason in (("user", user, MISSING_USER), ("item", item, MISSING_ASIN)):
        miss = keep & _blank(col).to_numpy(zero_copy_only=False)
        _report(bad, path, miss, rows, reason, table)
        keep &= ~miss
    if "timestamp" in used:
        ts = to_unix_seconds(table.column(used["timestamp"]), units)
        bad_ts = keep & (ts < 0)
        _report(bad, path, bad_ts, rows, BAD_TIMESTAMP, table)
        keep &= ~bad_ts
    else:
        ts = np.zeros(n, dtype=np.int64)
    split = pa.nulls(n, pa.int8()) if split is None else pa.array(np.full(n, split, np.int8))
    if "split" in used:
        raw = pc.utf8_lower(pc.utf8_trim_whitespace(table.column(used["split"])))
        codes = pc.index_in(raw, value_set=pa.array(list(SPLIT_CODES)))
        unknown = keep & pc.and_(pc.invert(_blank(raw)), pc.is_null(codes)).to_numpy(zero_copy_only=False)
        _report(bad, path, unknown, rows, BAD_SPLIT, table)
        keep &= ~unknown
        lookup = pa.array(list(SPLIT_CODES.values()), pa.int8())
        split = pc.take(lookup, codes)
    rating = pa.nulls(n, pa.float64())
    if "rating" in used:
        rating, bad_rating = to_float(table.column(used["rating"]))
        _report(bad, path, keep & bad_rating, rows, BAD_RATING, table, dropped=False)
    take = pa.array(np.flatnonzero(keep))
    batch = pa.table(
        [
            pc.take(user, take),
            pc.take(item, take),
            pc.take(rating, take),
            pa.array(ts[keep], pa.int64()),
            pc.take(split, take),
        ],
        schema=REVIEW_SPLIT_SCHEMA,
    )
    return ReviewBatch(batch.combine_chunks()), used


# --------------------------------------------------------------------------------------------
# item metadata
# --------------------------------------------------------------------------------------------
def split_categories(value: str | None) -> list[str]:
    """'a|b' or a JSON list '["a", "b"]' → ['a', 'b']."""
    if value is None or not value.strip():
        return []
    v = value.strip()
    if v.startswith("["):
        try:
            parsed = json.loads(v)
        except ValueError:
            parsed = None
        if isinstance(parsed, list):
            flat: list[str] = []
            for x in parsed:
                flat.extend(str(y) for y in x) if isinstance(x, list) else flat.append(str(x))
            return [x.strip() for x in flat if x is not None and str(x).strip()]
    return [c.strip() for c in v.split("|") if c.strip()]


def image_location(value: str | None, base_dir: Path | None) -> str | None:
    """URLs as they are; a relative path resolved against the metadata file's folder."""
    if value is None or not value.strip():
        return None
    v = value.strip()
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", v):
        return v
    p = Path(v).expanduser()
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return str(p.resolve())


def read_meta_table(
    path: str | Path,
    bad: BadRecords,
    *,
    base_dir: str | Path | None = None,
    columns: str | Mapping[str, str] | None = None,
    no_header: bool = False,
) -> Iterator[Product]:
    """Products of a metadata CSV/TSV/Parquet (asin, title, description, brand, categories, image);
    `columns` is --meta-columns ('asin=sku,title=name,image=photo', or positions)."""
    path = Path(path)
    mapping = parse_columns(columns, META_ROLES, "--meta-columns")
    table, rows = read_string_table(
        path,
        bad,
        header=False if no_header else None,
        names=frozenset(mapping.values()),
        option="--meta-columns",
        roles=META_ROLES,
        count=False,
    )
    if table.column_names[:1] == ["0"] and not mapping:
        row = [str(v) for v in table.slice(0, 1).to_pylist()[0].values()] if table.num_rows else []
        raise ValueError(
            f"{path.name} has no header (row 1: {row[:4]}); say which column is which by position, "
            f'e.g. --meta-columns "{positional_hint(row, META_ROLES)}"'
        )
    used = resolve_columns(path, table.column_names, mapping, META_ROLES, ("asin",), "--meta-columns")
    base = Path(base_dir) if base_dir is not None else path.parent
    data = {role: table.column(col).to_pylist() for role, col in used.items()}
    empty = [None] * table.num_rows
    for k in range(table.num_rows):
        asin = (data["asin"][k] or "").strip()
        if not asin:
            if any(table.column(c)[k].is_valid for c in table.column_names):
                bad.add(path, int(rows[k]), MISSING_ASIN, _brief(table, k))
            continue
        yield Product(
            asin=asin,
            title=data.get("title", empty)[k],
            description=data.get("description", empty)[k],
            brand=data.get("brand", empty)[k],
            categories=split_categories(data.get("categories", empty)[k]),
            image_url=image_location(data.get("image", empty)[k], base),
        )
