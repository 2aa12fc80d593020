"""Streaming readers for the Amazon review dumps (2014, 2018, 2023) into pipelines.records.

Why hand-rolled block reading instead of `gzip.open(...)` + `for line in fh`:
- a truncated download must keep every complete line before the cut and report where the cut
  is (gzip.open raises EOFError and the caller cannot tell how far it got);
- decompression runs in a background thread (zlib and ISA-L release the GIL), so on two cores
  inflate and parsing overlap;
- review files are the big ones (10^7-10^8 lines), and only four fields of each line matter: a
  block of whole lines goes to Arrow's C++ JSON reader with just those fields in its schema,
  several times faster than any per-line Python loop (benchmarks/speed/bench_ingest.py).
Any block the fast path cannot take cleanly is re-read line by line (orjson, then a slow path
that repairs bad encodings with errors='replace' and counts them, and reports malformed lines
with file and line number), so both paths give the same records and the same report.
2014 metadata lines are Python literals and are read with `ast.literal_eval`, never `eval`.
"""

from __future__ import annotations

import ast
import functools
import io
import itertools
import json
import queue
import threading
import types
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from pipelines.records import REVIEW_BATCH_SCHEMA, BadRecords, Product, Review, ReviewBatch

_zlib: types.ModuleType
try:  # ISA-L inflates gzip ~1.5-2x faster than zlib; same API, used when installed
    from isal import isal_zlib

    _zlib, INFLATE = isal_zlib, "isal"
except ImportError:
    _zlib = zlib
    INFLATE = "zlib"

try:  # orjson ships with prefect; the stdlib fallback keeps the reader working without it
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - exercised only where orjson is absent
    _loads = json.loads

RELEASES = ("2014", "2018", "2023")
BLOCK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"

# Reasons reported in BadRecords (one place, so tests and reports agree on the wording).
TRUNCATED = "truncated or corrupt gzip (rest of file lost)"
INVALID_JSON = "malformed line (not JSON)"
INVALID_LITERAL = "malformed line (not a JSON or Python literal)"
NOT_OBJECT = "line is not an object"
BAD_UTF8 = "invalid utf-8 (bytes replaced, record kept)"
MISSING_ASIN = "missing asin"
MISSING_USER = "missing reviewer id"
BAD_RATING = "invalid rating (set to null, record kept)"
BAD_TIMESTAMP = "missing or invalid timestamp"
BAD_CSV = "malformed CSV row"


# --------------------------------------------------------------------------------------------
# bytes → lines
# --------------------------------------------------------------------------------------------
class CorruptStream(Exception):
    """The gzip stream of a file is cut or damaged (yielded by _inflate, never raised)."""


def _inflate(path: Path, on_read: Callable[[int], None] | None) -> Iterator[bytes | Exception]:
    """Decompressed blocks of `path` (gzip, multi-member gzip, or plain).

    A truncated or corrupt stream ends with an exception object *yielded*, not raised, so the
    consumer can still split and keep what came before it.
    """
    with open(path, "rb") as fh:
        head = fh.read(2)
        fh.seek(0)
        if head != GZIP_MAGIC:
            while block := fh.read(BLOCK):
                if on_read:
                    on_read(len(block))
                yield block
            return
        d = _zlib.decompressobj(wbits=31)
        while raw := fh.read(BLOCK):
            if on_read:
                on_read(len(raw))
            try:
                out = d.decompress(raw)
                while d.eof and d.unused_data:  # concatenated gzip members
                    rest = d.unused_data
                    if not rest.strip(b"\x00"):  # zero padding after the last member
                        break
                    d = _zlib.decompressobj(wbits=31)
                    out += d.decompress(rest)
            except (zlib.error, _zlib.error) as exc:
                yield CorruptStream(f"{type(exc).__name__}: {exc}")
                return
            if out:
                yield out
        if not d.eof:
            yield CorruptStream("compressed stream ends before its end marker (truncated file)")


def _threaded(blocks: Iterator[bytes | Exception], depth: int = 8) -> Iterator[bytes | Exception]:
    """Run the inflate generator in a background thread so parsing overlaps decompression."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for b in blocks:
                if stop.is_set():
                    return
                q.put(b)
        except BaseException as exc:  # an OSError reading the file: hand it to the consumer
            q.put(exc)
        finally:
            close = getattr(blocks, "close", None)
            if close is not None:
                close()  # closes the file now, not at garbage collection
            q.put(done)

    worker = threading.Thread(target=produce, name="inflate", daemon=True)
    worker.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException) and not isinstance(item, CorruptStream):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                worker.join(0.01)


def iter_blocks(path: str | Path, bad: BadRecords, *, progress: bool = False) -> Iterator[tuple[int, int, bytes]]:
    """Yield (number of its first line, number of lines, block of lines each ending in '\n').

    A truncated gzip keeps every line read before the cut; the cut is reported once in `bad`
    with the line it happened on. A last line without a newline gets one.
    """
    path = Path(path)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name, leave=False)
    lineno = 1
    tail = b""
    try:
        for block in _threaded(_inflate(path, bar.update if bar else None)):
            if isinstance(block, Exception):
                bad.add(path, lineno, TRUNCATED, f"{block}; re-download the file")
                break
            if tail:
                block = tail + block
            cut = block.rfind(b"\n") + 1
            tail = block[cut:]
            if cut:
                body = block[:cut]
                n = body.count(b"\n")
                yield lineno, n, body
                lineno += n
        if tail:  # last line without newline (normal), or cut by truncation (then parse fails)
            yield lineno, 1, tail + b"\n"
    finally:
        if bar is not None:
            bar.close()


def iter_line_batches(
    path: str | Path, bad: BadRecords, *, progress: bool = False
) -> Iterator[tuple[int, list[bytes]]]:
    """Yield (number of the first line, lines without their '\n') — see iter_blocks."""
    for first, _, body in iter_blocks(path, bad, progress=progress):
        lines = body.split(b"\n")
        lines.pop()
        yield first, lines


# --------------------------------------------------------------------------------------------
# lines → objects
# --------------------------------------------------------------------------------------------
def _no_surrogates(obj: Any) -> Any:
    """Lone surrogates (legal JSON escapes, illegal UTF-8) would break the Parquet write."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
            return obj
        except UnicodeEncodeError:
            return obj.encode("utf-8", "replace").decode("utf-8")
    if isinstance(obj, dict):
        return {k: _no_surrogates(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_no_surrogates(v) for v in obj]
    return obj


def _slow_parse(line: bytes, path: Path, lineno: int, bad: BadRecords, literal: bool) -> Any:
    """Everything the fast path rejected: bad encodings, Python literals, malformed lines."""
    try:
        text = line.decode("utf-8")
        replaced = None
    except UnicodeDecodeError as exc:
        text = line.decode("utf-8", errors="replace")
        replaced = str(exc)
    text = text.lstrip("\ufeff").strip()
    if not text:
        bad.count_blank(path)
        return None
    obj: Any = None
    try:
        obj = json.loads(text)
    except ValueError as exc:
        if not literal:
            bad.add(path, lineno, INVALID_JSON, f"{exc}: {text[:80]!r}")
            return None
        try:
            obj = ast.literal_eval(text)  # safe: literals only, never eval()
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc2:
            bad.add(path, lineno, INVALID_LITERAL, f"{type(exc2).__name__}: {text[:80]!r}")
            return None
    if replaced is not None:
        bad.add(path, lineno, BAD_UTF8, replaced, dropped=False)
    return _no_surrogates(obj)


def iter_objects(
    path: str | Path, bad: BadRecords, *, literal: bool = False, progress: bool = False
) -> Iterator[tuple[int, dict]]:
    """(line number, dict) for each good line of a JSON-lines (or Python-literal-lines) file."""
    path = Path(path)
    for first, lines in iter_line_batches(path, bad, progress=progress):
        yield from _objects(path, first, lines, bad, literal)


def _objects(path: Path, first: int, lines: list[bytes], bad: BadRecords, literal: bool) -> Iterator[tuple[int, dict]]:
    loads = _loads
    for lineno, line in enumerate(lines, first):
        try:
            obj = loads(line)
        except ValueError:
            if not line.strip():
                bad.count_blank(path)
                continue
            obj = _slow_parse(line, path, lineno, bad, literal)
            if obj is None:
                continue
        if type(obj) is not dict:
            bad.add(path, lineno, NOT_OBJECT, repr(obj)[:80])
            continue
        yield lineno, obj


# --------------------------------------------------------------------------------------------
# field helpers
# --------------------------------------------------------------------------------------------
def _text(value: Any) -> str | None:
    """A string field or list of strings → one string; empty → None."""
    if value is None:
        return None
    if isinstance(value, list):
        value = " ".join(str(v) for v in value if v not in (None, ""))
    elif not isinstance(value, str):
        value = str(value)
    value = value.strip()
    return value or None


def _id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    value = value.strip()
    return value or None


def _strings(value: Any) -> list[str]:
    """Category lists: flatten one level of nesting (2014 has lists of paths), drop empties."""
    out: list[str] = []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return out
    for v in value:
        if isinstance(v, list):
            out.extend(str(x) for x in v if x not in (None, ""))
        elif v not in (None, ""):
            out.append(str(v))
    return out


def _first_url(*candidates: Any) -> str | None:
    for c in candidates:
        if isinstance(c, list):
            c = next((x for x in c if isinstance(x, str) and x.strip()), None)
        if isinstance(c, str) and c.strip():
            return c.strip()
    return None


def _image_2023(images: Any) -> str | None:
    """2023 `images` is a list of {thumb, large, hi_res, variant}: the MAIN large picture first."""
    if not isinstance(images, list) or not images:
        return None
    dicts = [im for im in images if isinstance(im, dict)]
    dicts.sort(key=lambda im: im.get("variant") != "MAIN")
    for im in dicts:
        url = _first_url(im.get("large"), im.get("hi_res"), im.get("thumb"))
        if url:
            return url
    return None


def _rating(value: Any) -> float | None | str:
    """Float rating, None when absent; the string BAD_RATING when present but unusable."""
    if value is None or value == "":
        return None
    try:
        r = float(value)
    except (TypeError, ValueError):
        return BAD_RATING
    return r if r == r else BAD_RATING  # NaN


def _timestamp(value: Any, millis: bool) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        t = int(value)
    except (TypeError, ValueError, OverflowError):
        try:
            t = int(float(value))
        except (TypeError, ValueError, OverflowError):
            return None
    if t < 0 or t >= 1 << 62:  # negative, or beyond int64: not a time
        return None
    return t // 1000 if millis else t


# --------------------------------------------------------------------------------------------
# per-release converters: dict → Product / Review, or a reason string when the line is unusable
# --------------------------------------------------------------------------------------------
def _detail(o: dict, key: str) -> Any:
    details = o.get("details")
    return details.get(key) if isinstance(details, dict) else None


def _product_2023(o: dict) -> Product | str:
    asin = _id(o.get("parent_asin") or o.get("asin"))
    if asin is None:
        return MISSING_ASIN
    cats = _strings(o.get("categories"))
    if not cats and o.get("main_category"):
        cats = _strings(o.get("main_category"))
    return Product(
        asin=asin,
        title=_text(o.get("title")),
        description=_text(o.get("description")),
        brand=_text(o.get("store") or _detail(o, "Brand")),
        categories=cats,
        image_url=_image_2023(o.get("images")),
    )


def _product_2018(o: dict) -> Product | str:
    asin = _id(o.get("asin"))
    if asin is None:
        return MISSING_ASIN
    return Product(
        asin=asin,
        title=_text(o.get("title")),
        description=_text(o.get("description")),
        brand=_text(o.get("brand")),
        categories=_strings(o.get("category")),
        image_url=_first_url(o.get("imageURLHighRes"), o.get("imageURL"), o.get("image")),  # `image`: older builds
    )


def _product_2014(o: dict) -> Product | str:
    asin = _id(o.get("asin"))
    if asin is None:
        return MISSING_ASIN
    return Product(
        asin=asin,
        title=_text(o.get("title")),
        description=_text(o.get("description")),
        brand=_text(o.get("brand")),
        categories=_strings(o.get("categories")),
        image_url=_first_url(o.get("imUrl")),
    )


def _review(o: dict, user_key: str, item_keys: tuple[str, ...], rating_key: str, time_key: str, millis: bool):
    user = o.get(user_key)
    if user is None or user == "":
        return MISSING_USER
    if type(user) is not str:
        user = str(user)
    asin = None
    for key in item_keys:
        asin = o.get(key)
        if asin:
            break
    if not asin:
        return MISSING_ASIN
    if type(asin) is not str:
        asin = str(asin)
    ts = o.get(time_key)
    if type(ts) is int and 0 <= ts < 1 << 62:
        ts = ts // 1000 if millis else ts
    else:
        ts = _timestamp(ts, millis)
        if ts is None:
            return BAD_TIMESTAMP
    r = o.get(rating_key)
    if type(r) is not float:
        r = _rating(r)
        if isinstance(r, str):  # BAD_RATING
            return Review(user, asin, None, ts), BAD_RATING
    return Review(user, asin, r, ts)


def _review_2023(o: dict):
    return _review(o, "user_id", ("parent_asin", "asin"), "rating", "timestamp", True)


def _review_2018(o: dict):
    return _review(o, "reviewerID", ("asin",), "overall", "unixReviewTime", False)


_PRODUCT = {"2014": _product_2014, "2018": _product_2018, "2023": _product_2023}
_REVIEW = {"2014": _review_2018, "2018": _review_2018, "2023": _review_2023}


def _check_release(release: str) -> str:
    if release not in RELEASES:
        raise ValueError(f"release must be one of {RELEASES}, got {release!r}")
    return release


# --------------------------------------------------------------------------------------------
# public readers
# --------------------------------------------------------------------------------------------
def read_products(path: str | Path, release: str, bad: BadRecords, *, progress: bool = False) -> Iterator[Product]:
    """Products of a metadata file; lines without an asin are counted in `bad` and skipped."""
    convert = _PRODUCT[_check_release(release)]
    path = Path(path)
    for lineno, obj in iter_objects(path, bad, literal=release == "2014", progress=progress):
        rec = convert(obj)
        if isinstance(rec, str):
            bad.add(path, lineno, rec, _brief(obj))
            continue
        yield rec


_NOT_JSON = object()  # a first record that json cannot read (2014's Python-literal lines)


def _first_record(path: str | Path) -> Any:
    """The first non-blank line of a JSON-lines file, parsed; _NOT_JSON when it is not JSON, None when empty."""
    for _, lines in iter_line_batches(path, BadRecords()):
        for line in lines:
            text = line.strip().lstrip(b"\xef\xbb\xbf")
            if text:
                try:
                    return json.loads(text)
                except ValueError:
                    return _NOT_JSON
    return None


def detect_meta_release(path: str | Path) -> str:
    """'2014', '2018' or '2023' from the first record of a metadata file (its keys and syntax)."""
    obj = _first_record(path)
    if obj is _NOT_JSON:
        return "2014"  # Python-literal lines ({'asin': …}) are the 2014 format
    keys = set(obj) if isinstance(obj, dict) else set()
    if keys & {"parent_asin", "main_category", "images", "store"}:
        return "2023"
    if keys & {"imUrl", "categories", "salesRank", "related"}:
        return "2014"
    return "2018"


def detect_review_release(path: str | Path) -> str:
    """'2023' (user_id, parent_asin, ms timestamps) or '2018' (reviewerID; 2014 has the same fields)
    from the first record of a review file."""
    obj = _first_record(path)
    return "2023" if isinstance(obj, dict) and {"user_id", "parent_asin"} & set(obj) else "2018"


def read_reviews(path: str | Path, release: str, bad: BadRecords, *, progress: bool = False) -> Iterator[Review]:
    """Reviews of a JSON-lines review file or a ratings CSV, one `Review` at a time."""
    for batch in read_review_batches(path, release, bad, progress=progress):
        yield from batch.reviews()


def read_review_batches(
    path: str | Path, release: str, bad: BadRecords, *, progress: bool = False
) -> Iterator[ReviewBatch]:
    """Reviews of a JSON-lines review file or a ratings CSV (sniffed), as Arrow batches.

    Fast path: each block of lines goes to Arrow's C++ JSON reader with only the four needed
    fields in the schema. A block it cannot take cleanly (a malformed line, a wrong type, a
    missing field, blank lines, bad UTF-8 in a kept field) is re-read line by line by the
    Python path, which reports each problem with its line. Both paths give the same records.
    """
    _check_release(release)
    path = Path(path)
    if review_format(path) == "csv":
        # 2018 ratings-only files are item,user,rating,timestamp; 2014's are user,item,…
        reviews = read_ratings_csv(path, bad, item_first=release != "2014", progress=progress)
        while chunk := list(itertools.islice(reviews, 1 << 16)):
            yield ReviewBatch.from_reviews(chunk)
        return
    spec = _REVIEW_SPEC[release]
    for first, n_lines, body in iter_blocks(path, bad, progress=progress):
        bad.count_lines(path, n_lines)
        batch = _arrow_block(body, n_lines, spec)
        if batch is None:
            batch = ReviewBatch.from_reviews(list(_python_block(path, first, body, release, bad)))
        if not spec.millis:
            batch = _seconds_from_millis(batch, path, bad)
        if len(batch):
            yield batch


MILLIS_ABOVE = 10**11  # an epoch beyond this is in milliseconds (as pipelines.tabular reads them)
MILLIS_TIMESTAMP = "timestamp in milliseconds (divided by 1000, record kept)"


def _seconds_from_millis(batch: ReviewBatch, path: Path, bad: BadRecords) -> ReviewBatch:
    """2014/2018 times are seconds; converted files sometimes carry milliseconds. Stored as they
    are they would be 1000x too large: convert them, and count them so the report says so."""
    ts = batch.table.column("timestamp")
    ms = pc.greater(ts, MILLIS_ABOVE)
    n = pc.sum(ms).as_py() or 0
    if not n:
        return batch
    shown = pc.filter(ts, ms).slice(0, bad.max_examples).to_pylist()
    for value in shown:
        bad.add(path, None, MILLIS_TIMESTAMP, f"unixReviewTime={value}", dropped=False)
    bad.counts[MILLIS_TIMESTAMP] += n - len(shown)
    bad.by_file[path.name] += n - len(shown)
    fixed = pc.if_else(ms, pc.divide(ts, 1000), ts)
    k = batch.table.schema.get_field_index("timestamp")
    return ReviewBatch(batch.table.set_column(k, batch.table.schema.field(k), fixed))


@dataclass(frozen=True)
class _ReviewSpec:
    user: str
    items: tuple[str, ...]
    rating: str
    time: str
    millis: bool

    @functools.cached_property
    def parse_options(self) -> pajson.ParseOptions:
        fields = [
            (self.user, pa.string()),
            *[(k, pa.string()) for k in self.items],
            (self.rating, pa.float64()),
            (self.time, pa.int64()),
        ]
        return pajson.ParseOptions(explicit_schema=pa.schema(fields), unexpected_field_behavior="ignore")


_REVIEW_SPEC = {
    "2023": _ReviewSpec("user_id", ("parent_asin", "asin"), "rating", "timestamp", True),
    "2018": _ReviewSpec("reviewerID", ("asin",), "overall", "unixReviewTime", False),
    "2014": _ReviewSpec("reviewerID", ("asin",), "overall", "unixReviewTime", False),
}


def _arrow_block(body: bytes, n_lines: int, spec: _ReviewSpec) -> ReviewBatch | None:
    """The block as a batch, or None when any line needs the careful Python path."""
    try:  # Arrow's JSON reader does not check UTF-8: bad bytes anywhere go the careful way
        pa.array([body], pa.binary()).cast(pa.string())
    except pa.ArrowInvalid:
        return None
    try:
        table = pajson.read_json(
            io.BytesIO(body),
            read_options=pajson.ReadOptions(use_threads=False, block_size=len(body) + 1),
            parse_options=spec.parse_options,
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    if table.num_rows != n_lines:  # blank lines are skipped by Arrow: lines would shift
        return None
    user = table.column(spec.user).combine_chunks()
    item = table.column(spec.items[0]).combine_chunks()
    for key in spec.items[1:]:  # 2023: parent_asin, else asin
        if item.null_count:
            item = pc.coalesce(item, table.column(key).combine_chunks())
    ts = table.column(spec.time).combine_chunks()
    if user.null_count or item.null_count or ts.null_count:
        return None
    if len(ts) and (
        pc.min(ts).as_py() < 0
        or pc.min(pc.binary_length(user)).as_py() == 0
        or pc.min(pc.binary_length(item)).as_py() == 0
    ):
        return None
    if spec.millis:
        ts = pc.divide(ts, 1000)
    rating = table.column(spec.rating).combine_chunks()
    return ReviewBatch(pa.table([user, item, rating, ts], schema=REVIEW_BATCH_SCHEMA))


def _python_block(path: Path, first: int, body: bytes, release: str, bad: BadRecords) -> Iterator[Review]:
    convert = _REVIEW[release]
    lines = body.split(b"\n")
    lines.pop()
    for lineno, obj in _objects(path, first, lines, bad, literal=release == "2014"):
        rec = convert(obj)
        if type(rec) is Review:
            yield rec
        elif type(rec) is str:
            bad.add(path, lineno, rec, _brief(obj))
        else:  # (record, repaired reason)
            bad.add(path, lineno, rec[1], _brief(obj), dropped=False)
            yield rec[0]


def review_format(path: str | Path) -> str:
    """'csv' for a ratings-only file, 'json' for review lines (by name, else by first byte)."""
    name = Path(path).name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith((".json", ".json.gz", ".jsonl", ".jsonl.gz")):
        return "json"
    for _, lines in iter_line_batches(path, BadRecords()):
        for line in lines:
            if line.strip():
                return "json" if line.lstrip().startswith((b"{", b"\xef\xbb\xbf{")) else "csv"
    return "json"


def read_ratings_csv(
    path: str | Path, bad: BadRecords, *, item_first: bool = True, progress: bool = False
) -> Iterator[Review]:
    """`item,user,rating,timestamp` rows (no header; a header line is skipped if present)."""
    import csv

    path = Path(path)
    iu = (0, 1) if item_first else (1, 0)
    for first, lines in iter_line_batches(path, bad, progress=progress):
        bad.count_lines(path, len(lines))
        for lineno, line in enumerate(lines, first):
            parts = line.rstrip(b"\r").split(b",")
            if len(parts) != 4:
                if not line.strip():
                    bad.count_blank(path)
                    continue
                fields = next(csv.reader([line.decode("utf-8", "replace")]), [])
                parts = [p.encode() for p in fields]
                if len(parts) != 4:
                    bad.add(path, lineno, BAD_CSV, f"{len(parts)} fields, expected 4: {line[:80]!r}")
                    continue
            try:
                item = parts[iu[0]].decode("utf-8").strip()
                user = parts[iu[1]].decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                item = parts[iu[0]].decode("utf-8", "replace").strip()
                user = parts[iu[1]].decode("utf-8", "replace").strip()
                bad.add(path, lineno, BAD_UTF8, str(exc), dropped=False)
            ts = _timestamp(parts[3].strip(), False)
            rating = _rating(parts[2].strip())
            if lineno == 1 and ts is None and rating == BAD_RATING:
                bad.header_lines[path.name] += 1
                continue  # a header row
            if not user:
                bad.add(path, lineno, MISSING_USER, repr(line[:80]))
                continue
            if not item:
                bad.add(path, lineno, MISSING_ASIN, repr(line[:80]))
                continue
            if ts is None:
                bad.add(path, lineno, BAD_TIMESTAMP, repr(line[:80]))
                continue
            if isinstance(rating, str):  # BAD_RATING
                bad.add(path, lineno, BAD_RATING, repr(line[:80]), dropped=False)
                rating = None
            yield Review(user, item, rating, ts)


def _brief(obj: dict) -> str:
    return ", ".join(f"{k}={str(v)[:30]!r}" for k, v in list(obj.items())[:4])
