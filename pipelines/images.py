"""Fetch every item's product image into images/<asin>.jpg and audit each outcome.

Product image URLs in the Amazon dumps are years old: many 404, some return HTML error pages,
a few point at huge files. The image encoder must know which items really have a picture, so
every item gets one row in images/audit.parquet (ok, cached, no_url, http_error, undecodable,
too_large, error) instead of a silent gap. Images are verified by decoding them here, once, so
feature extraction can trust any file with status ok/cached.

Resumable: an image already on disk that still decodes (and whose URL has not changed since the
last audit) is kept as 'cached'. Local paths and file:// URLs go through the same checks as
http(s), which is how the generated demo catalog and the tests use it.
"""
from __future__ import annotations

import io
import logging
import os
import re
import tempfile
import urllib.parse
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import requests
import tenacity
import urllib3
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from store import schemas
from store.layout import DatasetPaths
from store.tables import read_table, write_table

log = logging.getLogger(__name__)

RETRY_STATUSES = (429, 500, 502, 503, 504)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
CHUNK = 1 << 16


@dataclass
class Outcome:
    """One item's result: a row of images/audit.parquet (item and url are added by the caller)."""

    status: str
    http_status: int | None = None
    detail: str | None = None
    bytes: int | None = None
    path: str | None = None


class _Stop(Exception):
    """Ends one item's fetch with a final outcome."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.detail)
        self.outcome = outcome


class _BodyLost(Exception):
    """The connection broke while reading the body: worth another try."""


def fetch_images(
    paths: DatasetPaths,
    *,
    workers: int = 8,
    timeout: float = 10,
    max_bytes: int = 10_000_000,
    max_pixels: int = 40_000_000,
    retries: int = 3,
    progress: bool = True,
    backoff: float = 0.5,
    shard: tuple[int, int] | None = None,
) -> dict:
    """Fetch the image of every item of items.parquet; write images/audit.parquet; return counts.

    Returns {status: count for every status in store.schemas.IMAGE_STATUSES, "total": n}.
    With `shard=(i, n)` only the items at positions ≡ i (mod n) are fetched and their audit goes
    to a shard file; `merge_audits(paths, n)` then writes images/audit.parquet. That is how the
    Prefect flow fans image fetching out over workers of a distributed task runner.
    """
    for name, value, low in (("workers", workers, 1), ("timeout", timeout, 1e-9), ("max_bytes", max_bytes, 1),
                             ("max_pixels", max_pixels, 1), ("retries", retries, 0), ("backoff", backoff, 0)):
        if value < low:
            raise ValueError(f"fetch_images: {name} must be >= {low}, got {value}")
    items = read_table(paths.items, schemas.ITEMS, columns=["item_id", "asin", "image_url"])
    if shard is not None:
        index, count = _check_shard(shard)
        items = items.take(list(range(index, items.num_rows, count)))
    item_ids = items.column("item_id").to_pylist()
    asins = items.column("asin").to_pylist()
    urls = [u.strip() if isinstance(u, str) else None for u in items.column("image_url").to_pylist()]
    previous = _previous_urls(paths)
    paths.images_dir.mkdir(parents=True, exist_ok=True)

    session = _session(retries, backoff, workers)
    limits = dict(timeout=timeout, max_bytes=max_bytes, max_pixels=max_pixels, retries=retries, backoff=backoff)
    outcomes: list[Outcome | None] = [None] * len(asins)
    with session, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="img") as pool:
        futures = {
            pool.submit(_one, session, paths, asin, url, previous.get(asin), **limits): i
            for i, (asin, url) in enumerate(zip(asins, urls))
        }
        bar = tqdm(as_completed(futures), total=len(futures), desc="images", unit="img", disable=not progress)
        for fut in bar:
            outcomes[futures[fut]] = fut.result()

    table = pa.table(
        {
            "item_id": pa.array(item_ids, pa.int32()),
            "asin": pa.array(asins, pa.string()),
            "url": pa.array(urls, pa.string()),
            "status": pa.array([o.status for o in outcomes], pa.string()),
            "http_status": pa.array([o.http_status for o in outcomes], pa.int32()),
            "detail": pa.array([o.detail for o in outcomes], pa.string()),
            "bytes": pa.array([o.bytes for o in outcomes], pa.int64()),
            "path": pa.array([o.path for o in outcomes], pa.string()),
        }
    )
    target = paths.image_audit if shard is None else _shard_audit(paths, *shard)
    write_table(table, target, schemas.IMAGE_AUDIT)
    return _summarize(table, target)


def merge_audits(paths: DatasetPaths, shards: int) -> dict:
    """Join the shard audits of a fanned-out fetch into images/audit.parquet (in item order)."""
    parts = [_shard_audit(paths, i, shards) for i in range(shards)]
    missing = [p.name for p in parts if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{paths.images_dir}: shard audits {missing} are missing: rerun those shards")
    table = pa.concat_tables([read_table(p, schemas.IMAGE_AUDIT) for p in parts]).sort_by("item_id")
    n_items = read_table(paths.items, schemas.ITEMS, columns=["item_id"]).num_rows
    if table.num_rows != n_items:
        raise ValueError(f"{paths.images_dir}: shard audits hold {table.num_rows} rows for {n_items} items")
    write_table(table, paths.image_audit, schemas.IMAGE_AUDIT)
    for p in parts:
        p.unlink()
    return _summarize(table, paths.image_audit)


def _check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    index, count = int(shard[0]), int(shard[1])
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    return index, count


def _shard_audit(paths: DatasetPaths, index: int, count: int) -> Path:
    return paths.images_dir / f".audit.shard-{index}-of-{count}.parquet"


def _summarize(table: pa.Table, target: Path) -> dict:
    summary = {s: 0 for s in schemas.IMAGE_STATUSES}
    for status in table.column("status").to_pylist():
        summary[status] += 1
    summary["total"] = table.num_rows
    line = ", ".join(f"{k} {v}" for k, v in summary.items() if k != "total" and v)
    message = f"images: {summary['total']} items → {line or 'nothing to do'} (audit: {target})"
    log.info(message)
    print(message)
    return summary


def read_audit(paths: DatasetPaths) -> pa.Table:
    """The last image audit, validated against store.schemas.IMAGE_AUDIT."""
    return read_table(paths.image_audit, schemas.IMAGE_AUDIT)


# ---------------------------------------------------------------------------------------------


def _previous_urls(paths: DatasetPaths) -> dict[str, str | None]:
    if not paths.image_audit.exists():
        return {}
    try:
        old = read_table(paths.image_audit, schemas.IMAGE_AUDIT, columns=["asin", "url"])
    except Exception as exc:  # a broken old audit only means we re-verify everything
        log.warning("%s: ignoring the previous audit (%s)", paths.image_audit, exc)
        return {}
    return dict(zip(old.column("asin").to_pylist(), old.column("url").to_pylist()))


def _session(retries: int, backoff: float, workers: int) -> requests.Session:
    """Connection errors, header timeouts and 5xx are retried by urllib3 with backoff."""
    retry = urllib3.Retry(
        total=retries, connect=retries, read=retries, status=retries, redirect=5,
        backoff_factor=backoff, backoff_max=10, status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET"}), raise_on_status=False, respect_retry_after_header=False,
    )
    adapter = requests.adapters.HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=workers)
    s = requests.Session()
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.headers["User-Agent"] = "anchorrec-images/0.1"
    return s


def _one(
    session: requests.Session, paths: DatasetPaths, asin: str, url: str | None, previous_url: str | None,
    *, timeout: float, max_bytes: int, max_pixels: int, retries: int, backoff: float,
) -> Outcome:
    """Never raises: any surprise becomes an 'error' row naming the exception."""
    try:
        if not url:
            return Outcome("no_url", detail="item has no image_url")
        if not _SAFE_NAME.match(asin or ""):
            return Outcome("error", detail=f"asin {asin!r} cannot be used as a file name")
        target = paths.image(asin)
        rel = target.relative_to(paths.root).as_posix()
        if target.exists():
            if previous_url is not None and previous_url != url:
                target.unlink()  # the item's picture changed: the old file is not its image now
            elif _still_valid(target, max_pixels):
                return Outcome("cached", bytes=target.stat().st_size, path=rel)
        data, http_status = _read(session, url, timeout=timeout, max_bytes=max_bytes, retries=retries, backoff=backoff)
        jpeg = _verify_as_jpeg(data, max_pixels)
        _write_atomic(target, jpeg)
        return Outcome("ok", http_status=http_status, bytes=len(jpeg), path=rel)
    except _Stop as stop:
        return stop.outcome
    except Exception as exc:  # noqa: BLE001 - one bad item must not end the run
        return Outcome("error", detail=f"{type(exc).__name__}: {exc}"[:500])


def _is_local(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme.lower() in ("", "file")


def _read(
    session: requests.Session, url: str, *, timeout: float, max_bytes: int, retries: int, backoff: float
) -> tuple[bytes, int | None]:
    if _is_local(url):
        parts = urllib.parse.urlsplit(url)
        path = Path(urllib.request.url2pathname(parts.path)) if parts.scheme else Path(url)
        if not path.is_file():
            raise _Stop(Outcome("error", detail=f"no such file: {path}"))
        n = path.stat().st_size
        if n > max_bytes:
            raise _Stop(Outcome("too_large", bytes=n, detail=f"{n} bytes > max_bytes {max_bytes}"))
        return path.read_bytes(), None
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(retries + 1),
        wait=tenacity.wait_exponential(multiplier=backoff, max=10),
        retry=tenacity.retry_if_exception_type(_BodyLost),
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                return _get(session, url, timeout=timeout, max_bytes=max_bytes)
    except _BodyLost as exc:
        raise _Stop(Outcome("error", detail=f"{exc} (after {retries + 1} attempts)")) from exc
    raise AssertionError("unreachable")  # pragma: no cover


def _get(session: requests.Session, url: str, *, timeout: float, max_bytes: int) -> tuple[bytes, int]:
    try:
        resp = session.get(url, stream=True, timeout=(timeout, timeout))
    except requests.exceptions.RetryError as exc:
        raise _Stop(Outcome("error", detail=f"gave up after retries: {exc}"[:500])) from exc
    except requests.exceptions.Timeout as exc:
        raise _Stop(Outcome("error", detail=f"timed out after {timeout:g} s")) from exc
    except requests.exceptions.RequestException as exc:
        raise _Stop(Outcome("error", detail=f"unreachable: {type(exc).__name__}: {exc}"[:500])) from exc
    with resp:
        if resp.status_code != 200:
            raise _Stop(Outcome("http_error", http_status=resp.status_code, detail=f"HTTP {resp.status_code} {resp.reason}"))
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise _Stop(Outcome("too_large", http_status=200, bytes=int(length),
                                detail=f"Content-Length {length} > max_bytes {max_bytes}"))
        buf = bytearray()
        try:
            for chunk in resp.iter_content(CHUNK):
                buf += chunk
                if len(buf) > max_bytes:
                    raise _Stop(Outcome("too_large", http_status=200, bytes=len(buf),
                                        detail=f"body exceeds max_bytes {max_bytes}; download aborted"))
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise _BodyLost(f"connection lost after {len(buf)} bytes ({type(exc).__name__})") from exc
        return bytes(buf), resp.status_code


def _verify_as_jpeg(data: bytes, max_pixels: int) -> bytes:
    """Decode fully (catches truncation and HTML error pages); JPEG bytes stay as served,
    anything else becomes an RGB JPEG. The pixel limit is checked from the header, before the
    decoder allocates anything."""
    img = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise _Stop(Outcome("too_large", bytes=len(data), detail=f"{w}x{h} pixels > max_pixels {max_pixels}"))
            img.load()
    except _Stop:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _Stop(Outcome("too_large", bytes=len(data), detail=f"decompression bomb: {exc}"[:500])) from exc
    except UnidentifiedImageError:
        head = data[:16]
        raise _Stop(Outcome("undecodable", bytes=len(data), detail=f"not an image (starts with {head!r})"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise _Stop(Outcome("undecodable", bytes=len(data), detail=f"{getattr(img, 'format', None) or 'image'} does not decode: {exc}"[:500])) from exc
    if img.format == "JPEG":
        return data
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
    else:
        rgb = img.convert("RGB")
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=95)
    return out.getvalue()


def _still_valid(path: Path, max_pixels: int) -> bool:
    """A cached image must still decode; draft mode decodes a JPEG at 1/8 scale, cheaply."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > max_pixels:
                return False
            if img.format == "JPEG":
                img.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            img.load()
        return True
    except Exception:  # noqa: BLE001 - anything unreadable is simply fetched again
        return False


def _write_atomic(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
