"""pipelines.download against a real local HTTP server that cuts, stalls and fails on purpose."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from pipelines.download import DownloadError, fetch, read_manifest

FAST = dict(progress=False, backoff=0.01, timeout=2.0)


@pytest.fixture()
def payload(tmp_path: Path) -> tuple[Path, bytes]:
    """A 300 kB random file in a served directory."""
    served = tmp_path / "served"
    served.mkdir()
    data = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    (served / "meta_Test.json.gz").write_bytes(data)
    return served, data


def _gets(server, name: str) -> list[dict]:
    return [r for r in server.requests_for(name) if r["method"] == "GET"]


STALL = dict(progress=False, backoff=0.01, timeout=0.5)  # a 0.5 s read timeout cuts a stall short


def _fetch_whole(tmp_path: Path, http_server, data: bytes, **options) -> list[dict]:
    """Fetch the served file into f.gz, check every byte arrived once, and return the server's GETs."""
    dest = tmp_path / "f.gz"
    fetch(http_server.url_for("meta_Test.json.gz"), dest, manifest=tmp_path / "m.json", **(options or FAST))
    assert dest.read_bytes() == data
    return _gets(http_server, "meta_Test.json.gz")


def test_plain_download_records_manifest(tmp_path, http_server, payload):
    served, data = payload
    http_server.serve(served)
    url = http_server.url_for("meta_Test.json.gz")
    dest, manifest = tmp_path / "raw" / "meta_Test.json.gz", tmp_path / "raw" / "manifest.json"

    out = fetch(url, dest, manifest=manifest, **FAST)

    assert out == dest and dest.read_bytes() == data
    assert not (tmp_path / "raw" / "meta_Test.json.gz.part").exists()
    entry = json.loads(manifest.read_text())["meta_Test.json.gz"]
    assert entry["url"] == url and entry["requested"] == url
    assert entry["bytes"] == 300_000
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert entry["verified"] == ["size"]
    assert datetime.fromisoformat(entry["fetched_at"]).tzinfo is not None


def test_resume_after_cut_connection(tmp_path, http_server, payload):
    served, data = payload
    http_server.serve(served).fault("meta_Test.json.gz", "cut", times=1, after=100_000)
    gets = _fetch_whole(tmp_path, http_server, data)
    assert [g["fault"] for g in gets] == ["cut", None]
    assert gets[0]["range"] is None and gets[1]["range"] == "bytes=100000-"


def test_retry_after_500(tmp_path, http_server, payload):
    served, data = payload
    http_server.serve(served).fault("meta_Test.json.gz", "status", times=2, code=500)
    assert [g["fault"] for g in _fetch_whole(tmp_path, http_server, data)] == ["status", "status", None]


def test_stall_is_detected_by_read_timeout_then_succeeds(tmp_path, http_server, payload):
    served, data = payload
    http_server.serve(served).fault("meta_Test.json.gz", "stall", times=1, seconds=10)
    t0 = time.monotonic()
    gets = _fetch_whole(tmp_path, http_server, data, **STALL)
    assert time.monotonic() - t0 < 5  # the 10 s stall was cut short by the 0.5 s read timeout
    assert len(gets) == 2


def test_stall_mid_body_resumes_from_received_bytes(tmp_path, http_server, payload):
    served, data = payload
    http_server.serve(served).fault("meta_Test.json.gz", "stall", times=1, seconds=10, after=65_536)
    assert _fetch_whole(tmp_path, http_server, data, **STALL)[1]["range"] == "bytes=65536-"


def test_server_ignoring_range_restarts_cleanly(tmp_path, http_server, payload):
    served, data = payload
    http_server.serve(served)
    http_server.fault("meta_Test.json.gz", "cut", times=1, after=70_000)
    http_server.fault("meta_Test.json.gz", "ignore_range", times=1)
    gets = _fetch_whole(tmp_path, http_server, data)  # not 70 kB of prefix followed by the whole file again
    assert [g["fault"] for g in gets] == ["cut", "ignore_range"]
    assert gets[1]["range"] == "bytes=70000-"


def test_size_mismatch_is_refused(tmp_path, http_server, payload):
    served, _ = payload
    http_server.serve(served)
    dest = tmp_path / "f.gz"
    url = http_server.url_for("meta_Test.json.gz")
    with pytest.raises(DownloadError) as err:
        fetch(url, dest, manifest=tmp_path / "m.json", size=300_001, **FAST)
    assert "size mismatch" in str(err.value) and "300001" in str(err.value) and url in str(err.value)
    assert not dest.exists() and not (tmp_path / "f.gz.part").exists()
    assert read_manifest(tmp_path / "m.json") == {}


def test_sha256_mismatch_is_refused_and_discarded(tmp_path, http_server, payload):
    served, _ = payload
    http_server.serve(served)
    dest = tmp_path / "f.gz"
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch(http_server.url_for("meta_Test.json.gz"), dest, manifest=tmp_path / "m.json", sha256="0" * 64, **FAST)
    assert not dest.exists() and not (tmp_path / "f.gz.part").exists()
    assert read_manifest(tmp_path / "m.json") == {}


def test_matching_sha256_and_size_are_recorded_as_verified(tmp_path, http_server, payload):
    served, data = payload
    http_server.serve(served)
    digest = hashlib.sha256(data).hexdigest()
    fetch(
        http_server.url_for("meta_Test.json.gz"),
        tmp_path / "f.gz",
        manifest=tmp_path / "m.json",
        sha256=digest.upper(),
        size=len(data),
        **FAST,
    )
    assert read_manifest(tmp_path / "m.json")["f.gz"]["verified"] == ["size", "sha256"]


def test_partial_download_is_never_taken_as_complete(tmp_path, http_server, payload):
    served, data = payload
    http_server.serve(served).fault("meta_Test.json.gz", "cut", times=3, after=1000)
    dest, manifest = tmp_path / "f.gz", tmp_path / "m.json"
    url = http_server.url_for("meta_Test.json.gz")
    with pytest.raises(DownloadError, match="incomplete|connection lost"):
        fetch(url, dest, manifest=manifest, retries=2, **FAST)
    assert not dest.exists()
    assert (tmp_path / "f.gz.part").stat().st_size == 3000  # three cut attempts, each resumed
    assert read_manifest(manifest) == {}
    # the next run resumes where the last one stopped and finishes
    fetch(url, dest, manifest=manifest, **FAST)
    assert dest.read_bytes() == data
    assert _gets(http_server, "meta_Test.json.gz")[-1]["range"] == "bytes=3000-"


def test_complete_part_left_before_rename_is_finished_with_416(tmp_path, http_server, payload):
    served, data = payload
    http_server.serve(served)
    url = http_server.url_for("meta_Test.json.gz")
    dest = tmp_path / "f.gz"
    (tmp_path / "f.gz.part").write_bytes(data)
    (tmp_path / "f.gz.part.json").write_text(json.dumps({"url": url}))
    fetch(url, dest, manifest=tmp_path / "m.json", **FAST)
    assert dest.read_bytes() == data
    assert len(_gets(http_server, "meta_Test.json.gz")) == 1


def test_partial_from_another_url_is_discarded(tmp_path, http_server, payload):
    served, data = payload
    http_server.serve(served)
    (tmp_path / "f.gz.part").write_bytes(b"x" * 5000)
    (tmp_path / "f.gz.part.json").write_text(json.dumps({"url": "https://elsewhere/f.jsonl"}))
    assert _fetch_whole(tmp_path, http_server, data)[0]["range"] is None


def test_missing_content_length(tmp_path, http_server, payload):
    served, data = payload
    http_server.serve(served).fault("meta_Test.json.gz", "no_length", times=2)
    fetch(http_server.url_for("meta_Test.json.gz"), tmp_path / "a.gz", manifest=tmp_path / "m.json", **FAST)
    assert (tmp_path / "a.gz").read_bytes() == data
    assert read_manifest(tmp_path / "m.json")["a.gz"]["verified"] == []  # nothing to check it against
    fetch(
        http_server.url_for("meta_Test.json.gz"),
        tmp_path / "b.gz",
        manifest=tmp_path / "m.json",
        size=len(data),
        **FAST,
    )
    assert read_manifest(tmp_path / "m.json")["b.gz"]["verified"] == ["size"]


def test_local_path_and_file_url(tmp_path, payload):
    served, data = payload
    src = served / "meta_Test.json.gz"
    manifest = tmp_path / "raw" / "manifest.json"
    fetch(str(src), tmp_path / "raw" / "a.gz", manifest=manifest, progress=False)
    fetch(src.as_uri(), tmp_path / "raw" / "b.gz", manifest=manifest, progress=False)
    assert (tmp_path / "raw" / "a.gz").read_bytes() == data == (tmp_path / "raw" / "b.gz").read_bytes()
    entries = read_manifest(manifest)
    assert entries["a.gz"]["url"] == entries["b.gz"]["url"] == "meta_Test.json.gz"  # by name: no machine path
    assert entries["a.gz"]["sha256"] == hashlib.sha256(data).hexdigest()
    with pytest.raises(DownloadError, match="no such file"):
        fetch(str(tmp_path / "missing.gz"), tmp_path / "raw" / "c.gz", manifest=manifest, progress=False)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_url_names_it_and_says_what_to_do(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/reviews_Test_5.json.gz"
    with pytest.raises(DownloadError) as err:
        fetch(url, tmp_path / "r.gz", manifest=tmp_path / "m.json", retries=1, **FAST)
    msg = str(err.value)
    assert url in msg and "unreachable (connection refused" in msg
    assert "pass --reviews/--meta with local files (download them elsewhere)" in msg
    assert err.value.url == url and len(err.value.attempts) == 1
    assert not (tmp_path / "r.gz").exists()


def test_dead_hosts_are_not_retried_and_the_error_is_a_user_error(tmp_path, caplog):
    """No DNS, a refused port: retrying cannot help, so each location is tried once, quietly."""
    from store.errors import USER_ERRORS

    dns, refused = "http://no-such-host.invalid/meta.json.gz", f"http://127.0.0.1:{_closed_port()}/meta.json.gz"
    t0 = time.monotonic()
    with caplog.at_level("DEBUG", logger="pipelines.download"), pytest.raises(DownloadError) as err:
        fetch(
            dns,
            tmp_path / "m.gz",
            manifest=tmp_path / "m.json",
            mirrors=[refused],
            progress=False,
            retries=5,
            backoff=10.0,
        )  # a single retry would wait 10 s
    assert time.monotonic() - t0 < 5
    assert isinstance(err.value, USER_ERRORS)
    assert [u for u, _ in err.value.attempts] == [dns, refused]
    assert "name does not resolve" in err.value.attempts[0][1] and "connection refused" in err.value.attempts[1][1]
    assert not [r for r in caplog.records if r.levelno >= 30]  # nothing on screen but the error itself
    assert [r.levelname for r in caplog.records].count("DEBUG") == 2  # the debug log keeps each URL's failure


def test_retries_are_logged_at_debug_only(tmp_path, http_server, payload, caplog):
    served, data = payload
    http_server.serve(served).fault("meta_Test.json.gz", "status", times=2, code=503)
    with caplog.at_level("DEBUG", logger="pipelines.download"):
        fetch(http_server.url_for("meta_Test.json.gz"), tmp_path / "f.gz", manifest=tmp_path / "m.json", **FAST)
    assert (tmp_path / "f.gz").read_bytes() == data
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert [r.levelname for r in retries] == ["DEBUG", "DEBUG"]


def test_404_is_not_retried_and_mirror_is_used(tmp_path, http_server, payload):
    served, data = payload
    http_server.serve(served)
    missing = http_server.url_for("gone.json.gz")
    mirror = http_server.url_for("meta_Test.json.gz")
    dest, manifest = tmp_path / "f.gz", tmp_path / "m.json"
    fetch(missing, dest, manifest=manifest, mirrors=[mirror], **FAST)
    assert dest.read_bytes() == data
    assert len(_gets(http_server, "gone.json.gz")) == 1
    entry = read_manifest(manifest)["f.gz"]
    assert entry["url"] == mirror and entry["requested"] == missing
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(missing, tmp_path / "g.gz", manifest=manifest, **FAST)


def test_complete_file_is_not_downloaded_again(tmp_path, http_server, payload):
    served, data = payload
    http_server.serve(served)
    url = http_server.url_for("meta_Test.json.gz")
    dest, manifest = tmp_path / "f.gz", tmp_path / "m.json"
    fetch(url, dest, manifest=manifest, **FAST)
    fetched_at = read_manifest(manifest)["f.gz"]["fetched_at"]
    fetch(url, dest, manifest=manifest, **FAST)
    fetch(url, dest, manifest=manifest, sha256=hashlib.sha256(data).hexdigest(), **FAST)
    assert len(_gets(http_server, "meta_Test.json.gz")) == 1
    assert read_manifest(manifest)["f.gz"]["fetched_at"] == fetched_at
    # a truncated dest no longer matches its manifest entry: fetched again
    dest.write_bytes(data[:10])
    fetch(url, dest, manifest=manifest, **FAST)
    assert dest.read_bytes() == data
    assert len(_gets(http_server, "meta_Test.json.gz")) == 2


def test_corrupt_manifest_is_rebuilt(tmp_path, http_server, payload):
    served, data = payload
    http_server.serve(served)
    manifest = tmp_path / "m.json"
    manifest.write_text("{not json")
    fetch(http_server.url_for("meta_Test.json.gz"), tmp_path / "f.gz", manifest=manifest, **FAST)
    assert read_manifest(manifest)["f.gz"]["bytes"] == len(data)


@pytest.mark.integration
def test_real_2018_files_survive_a_cut_and_a_500(tmp_path, http_server, shared_data):
    src = shared_data / "amazon2018-giftcards"
    http_server.serve(src)
    http_server.fault("meta_Gift_Cards.json.gz", "cut", times=1, after=200_000)
    http_server.fault("Gift_Cards_5.json.gz", "status", times=1, code=502)
    raw = tmp_path / "raw"
    for name in ("meta_Gift_Cards.json.gz", "Gift_Cards_5.json.gz"):
        fetch(http_server.url_for(name), raw / name, manifest=raw / "manifest.json", **FAST)
        assert (raw / name).read_bytes() == (src / name).read_bytes()
    entries = read_manifest(raw / "manifest.json")
    assert set(entries) == {"meta_Gift_Cards.json.gz", "Gift_Cards_5.json.gz"}
    assert (
        entries["meta_Gift_Cards.json.gz"]["sha256"]
        == hashlib.sha256((src / "meta_Gift_Cards.json.gz").read_bytes()).hexdigest()
    )
