"""Fetch every item's product image into images/<asin>.jpg and audit each outcome.

Product image URLs in the Amazon dumps are years old: many 404, some return HTML error pages,
a few point at huge files, and on many machines whole hosts cannot be reached. The image encoder
must know which items really have a picture, so every item gets one row in images/audit.parquet
(status ok, cached, no_url, http_error, undecodable, too_large, error; a finer `reason` such as
dns, refused, timeout or host_down; the `source` and `origin` of the image) instead of a silent
gap. Images are verified by decoding them here, once, so feature extraction can trust any file
with status ok/cached.

Quiet and fast on dead hosts: urllib3 does not retry (its retries log a warning per attempt);
tenacity retries transient failures (timeouts, 429/5xx, a dropped body) and logs them at DEBUG;
a name that does not resolve or a refused connection is never retried, and a host that fails so
`host_down_after` times in a row is marked down for the run (pipelines.hosts). The run prints
one line: `images: 100 ok (40 cached, 10 local), 32 failed (http_error: 20, host_down: 12), …`.

Images the user already has (`images_dir`: a folder of <asin>.jpg|.png|… or a CSV asin,path;
pipelines.local_images) are taken before any URL, through the same checks.

Resumable: an image already on disk that still decodes, and whose origin (URL or local file) is
the one recorded by the last audit, is kept as 'cached'. Local paths and file:// URLs go through
the same checks as http(s), which is how the generated demo catalog and the tests use it; a
relative path (items.parquet records local images so: raw/images/<asin>.jpg, pipelines.image_paths)
is relative to the dataset directory. No row names the machine: a user's file is its name and
content hash (`origin`), so a copied home's audit is byte-identical.
"""

from __future__ import annotations

import io
import logging
import os
import re
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import requests
import tenacity
import urllib3
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from pipelines.hosts import DEAD_HOST_KINDS, HostBoard, HostDown, classify, host_of, short_error
from pipelines.local_images import LocalImage, LocalImages, find_local_images
from pipelines.sources import is_local, local_path
from store import schemas
from store.hashing import file_sha256
from store.layout import DatasetPaths
from store.tables import conform, read_table, temp_beside, write_table

log = logging.getLogger(__name__)

RETRY_STATUSES = (429, 500, 502, 503, 504)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
CHUNK = 1 << 16
USABLE = ("ok", "cached")
LOCAL_SOURCES = ("local_dir", "local_csv")


@dataclass
class Outcome:
    """One item's result: a row of images/audit.parquet (item and url are added by the caller)."""

    status: str
    http_status: int | None = None
    detail: str | None = None
    bytes: int | None = None
    path: str | None = None
    reason: str | None = None  # defaults to the status for a failure (see `why`)
    source: str | None = None
    origin: str | None = None

    @property
    def why(self) -> str | None:
        return None if self.status in USABLE else (self.reason or self.status)


class _Stop(Exception):
    """Ends one item's fetch with a final outcome."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.detail)
        self.outcome = outcome


class _Transient(Exception):
    """Worth another try (timeout, 429/5xx, a body cut short); `outcome` if no try is left."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.detail)
        self.outcome = outcome


@dataclass(frozen=True)
class _Run:
    """What every item's fetch of one run shares."""

    session: requests.Session
    paths: DatasetPaths
    board: HostBoard
    local: LocalImages
    timeout: float
    max_bytes: int
    max_pixels: int
    retries: int
    backoff: float


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
    host_down_after: int = 3,
    images_dir: str | Path | None = None,
) -> dict:
    """Fetch the image of every item of items.parquet; write images/audit.parquet; return counts.

    Returns {status: count for every status in store.schemas.IMAGE_STATUSES, "total": n,
    "reasons": {reason: count}, "sources": {source: count}, "line": one-line summary}.
    `host_down_after` dns/refused failures in a row mark a host down for the run (0: never).
    `images_dir` (a folder of <asin>.jpg|.jpeg|.png|.webp or a CSV/TSV with columns asin,path)
    supplies images the user already has; they are used before any URL.
    With `shard=(i, n)` only the items at positions ≡ i (mod n) are fetched and their audit goes
    to a shard file; `merge_audits(paths, n)` then writes images/audit.parquet. That is how the
    Prefect flow fans image fetching out over workers of a distributed task runner.
    """
    for name, value, low in (
        ("workers", workers, 1),
        ("timeout", timeout, 1e-9),
        ("max_bytes", max_bytes, 1),
        ("max_pixels", max_pixels, 1),
        ("retries", retries, 0),
        ("backoff", backoff, 0),
        ("host_down_after", host_down_after, 0),
    ):
        if value < low:
            raise ValueError(f"fetch_images: {name} must be >= {low}, got {value}")
    local = find_local_images(images_dir)
    items = read_table(paths.items, schemas.ITEMS, columns=["item_id", "asin", "image_url"])
    if shard is not None:
        index, count = _check_shard(shard)
        items = items.take(list(range(index, items.num_rows, count)))
    item_ids = items.column("item_id").to_pylist()
    asins = items.column("asin").to_pylist()
    urls = [u.strip() if isinstance(u, str) else None for u in items.column("image_url").to_pylist()]
    previous = _previous_origins(paths)
    paths.images_dir.mkdir(parents=True, exist_ok=True)

    session = _session(workers)
    run = _Run(session, paths, HostBoard(host_down_after), local, timeout, max_bytes, max_pixels, retries, backoff)
    outcomes: list[Outcome | None] = [None] * len(asins)
    with session, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="img") as pool:
        futures = {
            pool.submit(_one, run, asin, url, previous.get(asin)): i for i, (asin, url) in enumerate(zip(asins, urls))
        }
        bar = tqdm(as_completed(futures), total=len(futures), desc="images", unit="img", disable=not progress)
        for fut in bar:
            outcomes[futures[fut]] = fut.result()
    if run.board.down_hosts():
        log.debug("hosts marked down this run: %s", ", ".join(run.board.down_hosts()))

    done = [o for o in outcomes if o is not None]
    assert len(done) == len(outcomes)  # every future has answered
    table = pa.table(
        {
            "item_id": pa.array(item_ids, pa.int32()),
            "asin": pa.array(asins, pa.string()),
            "url": pa.array(urls, pa.string()),
            "status": pa.array([o.status for o in done], pa.string()),
            "http_status": pa.array([o.http_status for o in done], pa.int32()),
            "detail": pa.array([o.detail for o in done], pa.string()),
            "bytes": pa.array([o.bytes for o in done], pa.int64()),
            "path": pa.array([o.path for o in done], pa.string()),
            "reason": pa.array([o.why for o in done], pa.string()),
            "source": pa.array([o.source for o in done], pa.string()),
            "origin": pa.array([o.origin for o in done], pa.string()),
        }
    )
    target = paths.image_audit if shard is None else _shard_audit(paths, *shard)
    write_table(table, target, schemas.IMAGE_AUDIT_FULL)
    return _summarize(table, target)


def merge_audits(paths: DatasetPaths, shards: int) -> dict:
    """Join the shard audits of a fanned-out fetch into images/audit.parquet (in item order)."""
    parts = [_shard_audit(paths, i, shards) for i in range(shards)]
    missing = [p.name for p in parts if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{paths.images_dir}: shard audits {missing} are missing: rerun those shards")
    table = pa.concat_tables([_read_full(p) for p in parts]).sort_by("item_id")
    n_items = read_table(paths.items, schemas.ITEMS, columns=["item_id"]).num_rows
    if table.num_rows != n_items:
        raise ValueError(f"{paths.images_dir}: shard audits hold {table.num_rows} rows for {n_items} items")
    write_table(table, paths.image_audit, schemas.IMAGE_AUDIT_FULL)
    for p in parts:
        p.unlink()
    return _summarize(table, paths.image_audit)


def read_audit(paths: DatasetPaths) -> pa.Table:
    """The last image audit with every column of store.schemas.IMAGE_AUDIT_FULL (provenance
    columns are null in an audit written before they existed)."""
    return _read_full(paths.image_audit)


def summary_line(table: pa.Table) -> str:
    """`images: 100 ok (40 cached, 10 local), 32 failed (http_error: 20, host_down: 12), 16 without url`."""
    statuses = table.column("status").to_pylist()
    reasons = table.column("reason").to_pylist()
    sources = table.column("source").to_pylist()
    usable = [i for i, s in enumerate(statuses) if s in USABLE]
    extra = [
        f"{n} {label}"
        for n, label in (
            (statuses.count("cached"), "cached"),
            (sum(1 for i in usable if sources[i] in LOCAL_SOURCES), "local"),
        )
        if n
    ]
    line = f"images: {len(usable)} ok" + (f" ({', '.join(extra)})" if extra else "")
    failed = Counter(r or s for s, r in zip(statuses, reasons) if s not in USABLE and s != "no_url")
    if failed:
        parts = ", ".join(f"{k}: {v}" for k, v in sorted(failed.items(), key=lambda kv: (-kv[1], kv[0])))
        line += f", {sum(failed.values())} failed ({parts})"
    if statuses.count("no_url"):
        line += f", {statuses.count('no_url')} without url"
    return line


def _check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    index, count = int(shard[0]), int(shard[1])
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    return index, count


def _shard_audit(paths: DatasetPaths, index: int, count: int) -> Path:
    return paths.images_dir / f".audit.shard-{index}-of-{count}.parquet"


def _read_full(path: Path) -> pa.Table:
    raw = read_table(path)
    for f in schemas.IMAGE_AUDIT_PROVENANCE:
        if f.name not in raw.column_names:
            raw = raw.append_column(f, pa.nulls(raw.num_rows, f.type))
    return conform(raw, schemas.IMAGE_AUDIT_FULL, source=path)


def _summarize(table: pa.Table, target: Path) -> dict:
    summary: dict = {s: 0 for s in schemas.IMAGE_STATUSES}
    for status in table.column("status").to_pylist():
        summary[status] += 1
    summary["total"] = table.num_rows
    reasons = Counter(r for r in table.column("reason").to_pylist() if r)
    summary["reasons"] = dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    summary["sources"] = dict(sorted(Counter(s for s in table.column("source").to_pylist() if s).items()))
    summary["line"] = summary_line(table)
    log.info("%s (audit: %s)", summary["line"], target)  # the flows print it as the stage's line
    return summary


# ---------------------------------------------------------------------------------------------


def _previous_origins(paths: DatasetPaths) -> dict[str, str | None]:
    """asin → where the image on disk came from, per the last audit (its url before `origin`)."""
    if not paths.image_audit.exists():
        return {}
    try:
        old = read_audit(paths)
    except Exception as exc:  # a broken old audit only means we re-verify everything
        log.warning("%s: ignoring the previous audit (%s)", paths.image_audit, exc)
        return {}
    urls = old.column("url").to_pylist()
    origins = [o if o is not None else u for o, u in zip(old.column("origin").to_pylist(), urls)]
    return dict(zip(old.column("asin").to_pylist(), origins))


def _session(workers: int) -> requests.Session:
    """No retries inside urllib3 (each would log a warning); _read retries with tenacity."""
    adapter = requests.adapters.HTTPAdapter(max_retries=0, pool_connections=4, pool_maxsize=workers)
    s = requests.Session()
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.headers["User-Agent"] = "anchorrec-images/0.1"
    return s


def _one(run: _Run, asin: str, url: str | None, previous_origin: str | None) -> Outcome:
    """Never raises: any surprise becomes an 'error' row naming the exception."""
    try:
        if not _SAFE_NAME.match(asin or ""):
            return Outcome("error", detail=f"asin {asin!r} cannot be used as a file name")
        local = run.local.get(asin)
        if local is None and not url:
            more = " and no file in images_dir" if run.local.images else ""
            return Outcome("no_url", detail=f"item has no image_url{more}")
        if local:
            origin, source = _local_origin(local.path), local.source
        else:
            assert url  # no local file and no url returned above
            origin, source = url, "url"
        target = run.paths.image(asin)
        rel = target.relative_to(run.paths.root).as_posix()
        if _keep_cached(run, target, local, origin, previous_origin):
            return Outcome("cached", bytes=target.stat().st_size, path=rel, source="cache", origin=origin)
        try:
            if local is not None:
                data, http_status = _read_local(local.path, run.max_bytes, local.path.name), None
            else:
                data, http_status = _read(run, origin)  # the url
            jpeg = _verify_as_jpeg(data, run.max_pixels)
        except _Stop as stop:
            if local is None or not _same_file(local.path, target):
                target.unlink(missing_ok=True)  # images/ must not hold a picture the audit disowns
            out = stop.outcome
            out.source, out.origin = source, origin
            if local is not None:
                out.detail = f"{local.where}: {out.detail}"
            return out
        _write_atomic(target, jpeg)
        return Outcome("ok", http_status=http_status, bytes=len(jpeg), path=rel, source=source, origin=origin)
    except Exception as exc:  # noqa: BLE001 - one bad item must not end the run
        return Outcome("error", detail=f"{type(exc).__name__}: {exc}"[:500])


def _keep_cached(run: _Run, target: Path, local: LocalImage | None, origin: str, previous_origin: str | None) -> bool:
    """The file on disk is this item's current image: same origin as last time, and it decodes.

    Without a previous audit a URL's file is trusted (the old behaviour); a local file is simply
    taken again (cheap) unless the audit says it came from that very file and it is not newer.
    """
    if not target.exists():
        return False
    if local is not None:
        if (
            not local.path.is_file()
            or previous_origin != origin
            or local.path.stat().st_mtime_ns > target.stat().st_mtime_ns
        ):
            return False
    elif previous_origin is not None and previous_origin != origin:
        target.unlink()  # the item's picture changed: the old file is not its image now
        return False
    return _still_valid(target, run.max_pixels)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _local_origin(path: Path) -> str:
    """A user's image file by name and content hash: the audit never names where it lies (a home
    copied elsewhere stays byte-identical), yet a changed or different file is a different origin."""
    return f"{path.name} sha256:{file_sha256(path)[:16]}" if path.is_file() else path.name


def _read_local(path: Path, max_bytes: int, shown: str) -> bytes:
    """`shown` is how errors name the file: as recorded, never the machine's absolute path."""
    if not path.is_file():
        raise _Stop(Outcome("error", detail=f"no such file: {shown}"))
    n = path.stat().st_size
    if n > max_bytes:
        raise _Stop(Outcome("too_large", bytes=n, detail=f"{n} bytes > max_bytes {max_bytes}"))
    return path.read_bytes()


def _read(run: _Run, url: str) -> tuple[bytes, int | None]:
    if is_local(url):  # a relative path is relative to the dataset directory (raw/images/… of the demo)
        return _read_local(run.paths.located(local_path(url)), run.max_bytes, url), None
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(run.retries + 1),
        wait=tenacity.wait_exponential(multiplier=run.backoff, max=10),
        retry=tenacity.retry_if_exception_type(_Transient),
        before_sleep=tenacity.before_sleep_log(log, logging.DEBUG),
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                return _get(run, url)
    except _Transient as exc:
        out = exc.outcome
        out.detail = f"{out.detail} (after {run.retries + 1} attempts)"
        raise _Stop(out) from exc
    raise AssertionError("unreachable")  # pragma: no cover


def _get(run: _Run, url: str) -> tuple[bytes, int]:
    """One try. Dead-host failures are final (_Stop); what may pass is _Transient."""
    timeout = run.timeout
    try:
        resp = run.board.attempt(host_of(url), lambda: run.session.get(url, stream=True, timeout=(timeout, timeout)))
    except HostDown as exc:
        raise _Stop(Outcome("error", reason="host_down", detail=str(exc))) from exc
    except requests.exceptions.RequestException as exc:
        kind = classify(exc)
        if kind in DEAD_HOST_KINDS:
            by = "" if kind == "dns" else f" by {host_of(url)}"  # a dns message names the host already
            raise _Stop(Outcome("error", reason=kind, detail=f"unreachable ({kind}): {short_error(exc)}{by}")) from exc
        if kind == "timeout":
            raise _Transient(Outcome("error", reason="timeout", detail=f"timed out after {timeout:g} s")) from exc
        final = Outcome("error", detail=f"unreachable: {type(exc).__name__}: {short_error(exc)}"[:500])
        if isinstance(exc, requests.exceptions.ConnectionError) and not isinstance(exc, requests.exceptions.SSLError):
            raise _Transient(final) from exc
        raise _Stop(final) from exc
    with resp:
        if resp.status_code != 200:
            out = Outcome("http_error", http_status=resp.status_code, detail=f"HTTP {resp.status_code} {resp.reason}")
            raise (_Transient if resp.status_code in RETRY_STATUSES else _Stop)(out)
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > run.max_bytes:
            raise _Stop(
                Outcome(
                    "too_large",
                    http_status=200,
                    bytes=int(length),
                    detail=f"Content-Length {length} > max_bytes {run.max_bytes}",
                )
            )
        buf = bytearray()
        try:
            for chunk in resp.iter_content(CHUNK):
                buf += chunk
                if len(buf) > run.max_bytes:
                    raise _Stop(
                        Outcome(
                            "too_large",
                            http_status=200,
                            bytes=len(buf),
                            detail=f"body exceeds max_bytes {run.max_bytes}; download aborted",
                        )
                    )
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            kind = "timeout" if classify(exc) == "timeout" else "error"
            lost = f"connection lost after {len(buf)} bytes ({type(exc).__name__})"
            raise _Transient(Outcome("error", reason=kind, detail=lost)) from exc
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
        raise _Stop(
            Outcome(
                "undecodable",
                bytes=len(data),
                detail=f"{getattr(img, 'format', None) or 'image'} does not decode: {exc}"[:500],
            )
        ) from exc
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
    """No fsync, unlike store.tables.atomic_path: a lost image is fetched again, and thousands of fsyncs are slow."""
    tmp = temp_beside(target)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
