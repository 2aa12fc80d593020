"""Fetch one raw file (http(s), file:// or a local path) into a dataset's raw/ directory.

Multi-gigabyte review dumps over flaky academic hosts: a download must survive dropped
connections (resume with HTTP Range), stalled servers (read timeout), temporary 5xx (retry with
exponential backoff, via tenacity) and dead hosts (fall back to mirrors in order). Above all a
partial file must never pass for a complete one, so bytes go to `<dest>.part` and are renamed to
`<dest>` only once their count matches the announced size (and the sha256, when one is known).
Every completed file is recorded in raw/manifest.json (url, bytes, sha256, fetched_at), which is
also what lets a second call skip a file that is already there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import requests
import tenacity
import urllib3
from tqdm.auto import tqdm

from pipelines.catalog import LOCAL_FIX
from pipelines.hosts import DEAD_HOST_KINDS, classify, short_error
from pipelines.sources import is_local, local_path
from store.errors import SourceUnavailable
from store.hashing import file_sha256
from store.layout import source_name
from store.tables import write_json

log = logging.getLogger(__name__)

CHUNK = 1 << 16
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")
_manifest_lock = threading.Lock()


class DownloadError(SourceUnavailable):
    """No candidate URL produced a verified file; says which URLs failed, why, and what to do.

    A user error (store.errors.SourceUnavailable): reported in one line, never retried as a stage.
    """

    def __init__(self, url: str, problem: str, fix: str = "", attempts: list[tuple[str, str]] | None = None) -> None:
        super().__init__(None, f"{url}: {problem}", fix)
        self.url = url
        self.problem = problem
        self.attempts = attempts or [(url, problem)]

    def __reduce__(self):
        """Rebuilt from its parts, so it crosses process boundaries."""
        return type(self), (self.url, self.problem, self.fix, self.attempts)


class _Transient(Exception):
    """Worth retrying the same URL (dropped connection, timeout, 5xx, short body)."""


class _Failed(Exception):
    """This URL will not give the file (4xx, size or checksum mismatch): try the next mirror."""

    def __init__(self, problem: str, kind: str = "other") -> None:
        super().__init__(problem)
        self.kind = kind


# ---------------------------------------------------------------------------------------------
# public entry point


def fetch(
    source: str | Path,
    dest: str | Path,
    *,
    manifest: str | Path,
    sha256: str | None = None,
    size: int | None = None,
    retries: int = 5,
    timeout: float = 30,
    progress: bool = True,
    mirrors: Sequence[str] = (),
    backoff: float = 1.0,
) -> Path:
    """Make `dest` a verified copy of `source` (or of the first mirror that works); return dest.

    `retries` is per URL (transient failures only); `timeout` is the connect and the per-read
    timeout in seconds, so a stalled server is detected even mid-file; `backoff` scales the
    exponential wait between retries (1 s, 2 s, 4 s, … capped at 60 s).
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0, got {timeout}")
    dest, manifest = Path(dest), Path(manifest)
    candidates = [str(source), *(str(m) for m in mirrors)]
    sha256 = sha256.lower() if sha256 else None

    entry = read_manifest(manifest).get(dest.name)
    if entry is not None and _is_current(dest, entry, candidates, sha256, size):
        log.info("%s: already complete (%s bytes, manifest matches); not downloading", dest, entry["bytes"])
        return dest

    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[tuple[str, str, str]] = []
    for url in candidates:
        try:
            if is_local(url):
                got = _copy_local(url, dest, sha256=sha256, size=size, progress=progress)
            else:
                got = _download_http(
                    url,
                    dest,
                    sha256=sha256,
                    size=size,
                    retries=retries,
                    timeout=timeout,
                    progress=progress,
                    backoff=backoff,
                )
        except _Failed as exc:
            log.debug("%s: %s", url, exc)  # the final error lists every URL's reason
            failures.append((url, str(exc), exc.kind))
            continue
        _record(manifest, dest.name, requested=str(source), **got)
        return dest

    kinds = {k for _, _, k in failures}
    if kinds <= {"unreachable"}:
        fix = f"unreachable: check the network or {LOCAL_FIX}"
    elif kinds <= {"missing"}:
        fix = f"check the path or URL, or {LOCAL_FIX}"
    else:
        fix = f"check the URL and the expected size/sha256, or {LOCAL_FIX}"
    detail = "; ".join(f"{u} → {p}" for u, p, _ in failures)
    raise DownloadError(
        candidates[0],
        f"could not fetch {dest.name} from {len(candidates)} location(s): {detail}",
        fix,
        attempts=[(u, p) for u, p, _ in failures],
    )


# ---------------------------------------------------------------------------------------------
# manifest


def read_manifest(manifest: str | Path) -> dict[str, dict[str, Any]]:
    """Entries of raw/manifest.json keyed by file name; an unreadable manifest counts as empty
    (it is a record of downloads, so losing it only costs a re-download)."""
    manifest = Path(manifest)
    if not manifest.exists():
        return {}
    try:
        data = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("%s: unreadable (%s); treating it as empty and rewriting it", manifest, exc)
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def _locked(manifest: Path) -> Iterator[None]:
    """Serialize read-modify-write of the manifest across threads and (on POSIX) processes."""
    with _manifest_lock:
        manifest.parent.mkdir(parents=True, exist_ok=True)
        lock_path = manifest.with_name(f".{manifest.name}.lock")
        with open(lock_path, "a+") as fh:
            try:
                import fcntl

                fcntl.flock(fh, fcntl.LOCK_EX)
            except (ImportError, OSError):  # pragma: no cover - non-POSIX
                pass
            yield


def _record(
    manifest: Path, name: str, *, requested: str, url: str, bytes: int, sha256: str, verified: list[str]
) -> None:
    entry = {  # a local source by file name only: the manifest never names the machine (store.layout.source_name)
        "url": source_name(url),
        "requested": source_name(requested),
        "bytes": bytes,
        "sha256": sha256,
        "verified": verified,
        "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    with _locked(manifest):
        data = read_manifest(manifest)
        data[name] = entry
        write_json(data, manifest)


def _is_current(dest: Path, entry: Any, candidates: list[str], sha256: str | None, size: int | None) -> bool:
    if not isinstance(entry, dict) or not dest.is_file():
        return False
    n = dest.stat().st_size
    if entry.get("bytes") != n or (size is not None and size != n):
        return False
    wanted = {_normalize(c) for c in candidates} | {source_name(c) for c in candidates}
    if (
        _normalize(str(entry.get("requested", ""))) not in wanted
        and _normalize(str(entry.get("url", ""))) not in wanted
    ):
        return False
    if is_local(candidates[0]):  # a local source that changed since must be copied again
        src = local_path(candidates[0])  # recorded by name: same size, and not modified after the copy
        if not src.is_file() or src.stat().st_size != n or src.stat().st_mtime_ns > dest.stat().st_mtime_ns:
            return False
    if sha256 is not None:
        return entry.get("sha256") == sha256 and file_sha256(dest) == sha256
    return True


# ---------------------------------------------------------------------------------------------
# local files


def _normalize(source: str) -> str:
    if source and is_local(source):
        return local_path(source).absolute().as_uri()
    return source


def _copy_local(source: str, dest: Path, *, sha256: str | None, size: int | None, progress: bool) -> dict[str, Any]:
    src = local_path(source)
    if not src.is_file():
        raise _Failed(f"no such file: {src}", kind="missing")
    n = src.stat().st_size
    if size is not None and n != size:
        raise _Failed(f"size mismatch: expected {size} bytes, {src} has {n}", kind="size")
    uri = src.absolute().as_uri()
    if dest.exists() and src.resolve() == dest.resolve():  # already in place: only verify it
        digest = file_sha256(dest)
        _check_sha(digest, sha256, None)
        return {"url": uri, "bytes": n, "sha256": digest, "verified": ["size", "sha256"] if sha256 else ["size"]}
    part = _part(dest)
    try:
        with open(src, "rb") as fin, open(part, "wb") as fout, _bar(dest.name, n, 0, progress) as bar:
            while block := fin.read(1 << 20):
                fout.write(block)
                bar.update(len(block))
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise _Failed(f"cannot copy {src}: {exc}", kind="missing") from exc
    return _finish(part, dest, uri, expected=n, sha256=sha256)


# ---------------------------------------------------------------------------------------------
# http(s)


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _part_info(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part.json")


def _bar(name: str, total: int | None, initial: int, progress: bool) -> tqdm:
    return tqdm(
        total=total,
        initial=initial,
        desc=name,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not progress,
        leave=False,
    )


def _session() -> requests.Session:
    """Retries live in tenacity (they must also cover a body cut mid-stream), not in urllib3."""
    s = requests.Session()
    adapter = requests.adapters.HTTPAdapter(max_retries=urllib3.Retry(total=0, redirect=10, raise_on_redirect=True))
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.headers["User-Agent"] = "anchorrec-downloader/0.1"
    return s


def _download_http(
    url: str,
    dest: Path,
    *,
    sha256: str | None,
    size: int | None,
    retries: int,
    timeout: float,
    progress: bool,
    backoff: float,
) -> dict[str, Any]:
    part, info = _part(dest), _part_info(dest)
    _claim_part(part, info, url)
    state: dict[str, Any] = {}
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(retries + 1),
        wait=tenacity.wait_exponential(multiplier=backoff, max=60),
        retry=tenacity.retry_if_exception_type(_Transient),
        reraise=True,
        before_sleep=lambda rs: log.debug(  # on screen only the outcome: the file or one error line
            "%s: %s; retry %d/%d", url, rs.outcome and rs.outcome.exception(), rs.attempt_number, retries
        ),
    )
    with _session() as session:
        try:
            for attempt in retrying:
                with attempt:
                    _attempt(session, url, part, info, size=size, timeout=timeout, progress=progress, state=state)
        except _Transient as exc:
            kind = "unreachable" if state.get("never_connected", True) else "transient"
            raise _Failed(f"{exc} (gave up after {retries + 1} attempt(s))", kind=kind) from exc
        except _Failed:
            raise
    result = _finish(part, dest, url, expected=state.get("expected"), sha256=sha256)
    info.unlink(missing_ok=True)
    return result


def _claim_part(part: Path, info: Path, url: str) -> None:
    """A .part left by another URL (say an uncompressed mirror) must not be resumed from this one."""
    owner = None
    if info.exists():
        try:
            owner = json.loads(info.read_text()).get("url")
        except (OSError, json.JSONDecodeError):
            owner = None
    if part.exists() and owner != url:
        log.info("%s: discarding a partial file from %s", part, owner or "an unknown source")
        part.unlink()
    if owner != url or not info.exists():
        write_json({"url": url}, info)


def _attempt(
    session: requests.Session,
    url: str,
    part: Path,
    info: Path,
    *,
    size: int | None,
    timeout: float,
    progress: bool,
    state: dict[str, Any],
) -> None:
    have = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
        validator = _read_info(info).get("etag") or _read_info(info).get("last_modified")
        if validator:
            headers["If-Range"] = validator
    try:
        resp = session.get(url, headers=headers, stream=True, timeout=(timeout, timeout))
    except requests.exceptions.InvalidURL as exc:
        raise _Failed(f"invalid URL: {exc}") from exc
    except requests.exceptions.MissingSchema as exc:
        raise _Failed(f"invalid URL: {exc}") from exc
    except requests.exceptions.InvalidSchema as exc:
        raise _Failed(f"unsupported URL scheme: {exc}") from exc
    except requests.exceptions.Timeout as exc:
        raise _Transient(f"no response within {timeout:g} s") from exc
    except requests.exceptions.TooManyRedirects as exc:
        raise _Failed(f"too many redirects: {exc}") from exc
    except requests.exceptions.RequestException as exc:
        kind = classify(exc)
        if kind in DEAD_HOST_KINDS:  # a name that does not resolve or a refused port: retrying cannot help
            what = "name does not resolve" if kind == "dns" else "connection refused"
            raise _Failed(f"unreachable ({what}: {_short_text(short_error(exc))})", kind="unreachable") from exc
        raise _Transient(f"unreachable ({type(exc).__name__}: {_short(exc)})") from exc
    state["never_connected"] = False
    with resp:
        code = resp.status_code
        if code == 416 and have:
            m = _UNSATISFIED_RANGE.search(resp.headers.get("Content-Range", ""))
            if m and int(m.group(1)) == have and (size is None or size == have):
                state["expected"] = have  # the previous attempt had in fact received everything
                return
            part.unlink(missing_ok=True)
            raise _Transient("server refused the resume range; restarting from byte 0")
        if code in RETRY_STATUSES:
            raise _Transient(f"HTTP {code} {resp.reason}")
        if code == 404 or code == 410:
            raise _Failed(f"HTTP {code} {resp.reason}: not on this server", kind="missing")
        if code not in (200, 206):
            raise _Failed(f"HTTP {code} {resp.reason}")
        if code == 206:
            m = _CONTENT_RANGE.search(resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                part.unlink(missing_ok=True)
                raise _Transient(
                    f"server resumed at the wrong offset ({resp.headers.get('Content-Range')!r}); restarting"
                )
            total = None if m.group(3) == "*" else int(m.group(3))
            mode = "ab"
        else:
            if have:
                log.info("%s: server ignored the Range request; restarting from byte 0", url)
            have, mode = 0, "wb"
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            write_json(
                {"url": url, "etag": resp.headers.get("ETag"), "last_modified": resp.headers.get("Last-Modified")},
                info,
            )
        if size is not None and total is not None and total != size:
            part.unlink(missing_ok=True)
            raise _Failed(f"size mismatch: expected {size} bytes, server announces {total}", kind="size")
        expected = total if total is not None else size
        state["expected"] = expected
        with open(part, mode) as fh, _bar(part.name[:-5], expected, have, progress) as bar:
            try:
                for chunk in resp.raw.stream(CHUNK, decode_content=False):
                    fh.write(chunk)
                    have += len(chunk)
                    bar.update(len(chunk))
                    if expected is not None and have > expected:
                        break
            except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError) as exc:
                fh.flush()
                raise _Transient(f"connection lost after {have} bytes ({type(exc).__name__})") from exc
    if expected is not None and have > expected:
        part.unlink(missing_ok=True)
        raise _Failed(f"size mismatch: received more than the {expected} bytes expected", kind="size")
    if expected is not None and have < expected:
        raise _Transient(f"incomplete: {have} of {expected} bytes")
    if expected is None:
        log.warning("%s: server sent no length; the byte count (%d) cannot be verified", url, have)


def _read_info(info: Path) -> dict[str, Any]:
    try:
        return json.loads(info.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _short(exc: BaseException, limit: int = 160) -> str:
    return _short_text(str(exc), limit)


def _short_text(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_sha(digest: str, sha256: str | None, part: Path | None) -> None:
    if sha256 is not None and digest != sha256:
        if part is not None:
            part.unlink(missing_ok=True)
        raise _Failed(f"sha256 mismatch: expected {sha256}, got {digest} (file discarded)", kind="sha256")


def _finish(part: Path, dest: Path, url: str, *, expected: int | None, sha256: str | None) -> dict[str, Any]:
    """Verify the finished .part and rename it into place: the only way a file becomes `dest`."""
    n = part.stat().st_size
    if expected is not None and n != expected:  # defensive: callers already ensure this
        raise _Failed(f"size mismatch: {n} bytes on disk, {expected} expected", kind="size")
    digest = file_sha256(part)
    _check_sha(digest, sha256, part)
    os.replace(part, dest)
    verified = (["size"] if expected is not None else []) + (["sha256"] if sha256 else [])
    return {"url": url, "bytes": n, "sha256": digest, "verified": verified}


__all__ = ["DownloadError", "fetch", "read_manifest"]
