"""pipelines.images on dead hosts: classified failures, hosts marked down, no retry noise.

Real sockets only: a name under `.invalid` never resolves (RFC 6761) and a port of 127.0.0.1
that nobody listens on refuses at once, so these tests need no network and no mocks.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest
from test_images import FAST, _by_asin, _jpeg, _write_items

from pipelines.hosts import HostBoard, HostDown, classify, host_of
from pipelines.images import fetch_images, read_audit
from store.layout import dataset_paths

DEAD_NAME = "img.anchorrec-test.invalid"
# Settings under which the old fetcher spent ≥ 1 s per dead URL (urllib3 retried connects with
# backoff 0 + 1 s): 40 dead URLs on 4 workers took ≥ 10 s.
SLOW_IF_RETRIED = {**FAST, "backoff": 0.5}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def lookups(monkeypatch):
    """Counts real name lookups per host (the real resolver still answers)."""
    real = socket.getaddrinfo
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def counting(host, *args, **kwargs):
        with lock:
            counts[host] = counts.get(host, 0) + 1
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counting)
    return counts


def _noise(caplog) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]


def test_every_host_dead_finishes_fast_and_quiet(home, lookups, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    port = _closed_port()
    rows = [(f"D{i:02d}", f"http://{DEAD_NAME}/images/I/{i}.jpg") for i in range(20)]
    rows += [(f"R{i:02d}", f"http://127.0.0.1:{port}/{i}.jpg") for i in range(20)]
    paths = dataset_paths("dead")
    _write_items(paths, rows)

    t0 = time.perf_counter()
    summary = fetch_images(paths, **{**SLOW_IF_RETRIED, "progress": True})
    elapsed = time.perf_counter() - t0

    assert elapsed < 3.0, elapsed  # the old fetcher: ≥ 10 s here
    assert summary["line"] == "images: 0 ok, 40 failed (host_down: 34, dns: 3, refused: 3)"
    assert summary["error"] == 40 and summary["reasons"] == {"host_down": 34, "dns": 3, "refused": 3}
    assert lookups[DEAD_NAME] == 3  # one try per URL, and none once the host is down
    audit = _by_asin(paths)
    for prefix, kind, host in (("D", "dns", DEAD_NAME), ("R", "refused", f"127.0.0.1:{port}")):
        mine = [audit[a] for a, _ in rows if a.startswith(prefix)]
        tried = [r for r in mine if r["reason"] == kind]  # which 3 depends on thread timing
        assert len(tried) == 3 and sum(r["reason"] == "host_down" for r in mine) == 17
        assert all(r["status"] == "error" and r["source"] == "url" and r["path"] is None for r in mine)
        assert all(r["detail"].startswith(f"unreachable ({kind}):") for r in tried)
        down = next(r["detail"] for r in mine if r["reason"] == "host_down")
        assert f"host {host} marked down after 3 failures in a row (first: {kind}:" in down
        assert (DEAD_NAME if kind == "dns" else f"Connection refused by {host}") in tried[0]["detail"]
    assert not list(paths.images_dir.glob("*.jpg"))
    assert _noise(caplog) == []
    out = capsys.readouterr()
    assert out.out == ""  # the library prints nothing; the flow prints summary["line"] as the stage's line
    assert "Retrying" not in out.err and "NameResolutionError" not in out.err


def test_half_dead_half_served_counts_exact(home, http_server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    served = tmp_path / "served"
    served.mkdir()
    for i in range(10):
        (served / f"{i}.jpg").write_bytes(_jpeg(24 + i, 24, (20 * i, 80, 0)))
    http_server.serve(served)
    port = _closed_port()
    rows = [(f"S{i:02d}", http_server.url_for(f"{i}.jpg")) for i in range(15)]  # 10 exist, 5 are 404
    rows += [(f"D{i:02d}", f"http://{DEAD_NAME}/{i}.jpg") for i in range(10)]
    rows += [(f"R{i:02d}", f"http://127.0.0.1:{port}/{i}.jpg") for i in range(10)]
    rows += [(f"N{i}", None) for i in range(3)]
    rows = rows[::2] + rows[1::2]  # interleave the hosts
    paths = dataset_paths("half")
    _write_items(paths, rows)

    summary = fetch_images(paths, **SLOW_IF_RETRIED)

    assert (
        summary["line"] == "images: 10 ok, 25 failed (host_down: 14, http_error: 5, dns: 3, refused: 3), 3 without url"
    )
    assert (summary["ok"], summary["http_error"], summary["error"], summary["no_url"], summary["total"]) == (
        10,
        5,
        20,
        3,
        38,
    )
    assert summary["sources"] == {"url": 35}
    audit = _by_asin(paths)
    for i in range(10):
        assert audit[f"S{i:02d}"]["status"] == "ok"
        assert paths.image(f"S{i:02d}").read_bytes() == (served / f"{i}.jpg").read_bytes()
    assert {audit[f"S{i}"]["http_status"] for i in range(10, 15)} == {404}
    assert len([r for r in http_server.requests if r["method"] == "GET"]) == 15  # each served URL once
    assert _noise(caplog) == []


def test_transient_failures_are_retried_quietly(home, http_server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    served = tmp_path / "served"
    served.mkdir()
    (served / "busy.jpg").write_bytes(_jpeg(30, 30))
    (served / "gone.jpg").write_bytes(_jpeg(30, 30))
    http_server.serve(served)
    http_server.fault("busy.jpg", "status", times=2, code=503)
    http_server.fault("gone.jpg", "status", times=5, code=503)
    paths = dataset_paths("busy")
    _write_items(paths, [("T1", http_server.url_for("busy.jpg")), ("T2", http_server.url_for("gone.jpg"))])

    summary = fetch_images(paths, **FAST)  # retries=2: three tries

    assert summary["line"] == "images: 1 ok, 1 failed (http_error: 1)"
    assert [r["fault"] for r in http_server.requests_for("busy.jpg")] == ["status", "status", None]
    assert len(http_server.requests_for("gone.jpg")) == 3
    t2 = _by_asin(paths)["T2"]
    assert t2["http_status"] == 503 and t2["detail"] == "HTTP 503 Service Unavailable (after 3 attempts)"
    retries = [r for r in caplog.records if r.name == "pipelines.images" and "Retrying" in r.getMessage()]
    assert len(retries) == 4 and {r.levelno for r in retries} == {logging.DEBUG}
    assert _noise(caplog) == []


def test_host_down_after_zero_never_marks_down(home, lookups):
    rows = [(f"D{i}", f"http://{DEAD_NAME}/{i}.jpg") for i in range(5)]
    paths = dataset_paths("never")
    _write_items(paths, rows)
    summary = fetch_images(paths, host_down_after=0, **SLOW_IF_RETRIED)
    assert summary["line"] == "images: 0 ok, 5 failed (dns: 5)"
    assert lookups[DEAD_NAME] == 5  # still one try per URL: DNS failures are not retried
    with pytest.raises(ValueError, match="host_down_after"):
        fetch_images(paths, host_down_after=-1)


def test_rerun_after_host_down_tries_again(home, http_server, tmp_path):
    """'down' lasts one run: the audit keeps the URL, so the next run fetches it."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "a.jpg").write_bytes(_jpeg(20, 20))
    port = _closed_port()
    paths = dataset_paths("rerun")
    _write_items(paths, [(f"A{i}", f"http://127.0.0.1:{port}/a.jpg") for i in range(4)])
    first = fetch_images(paths, **FAST)
    assert first["reasons"] == {"refused": 3, "host_down": 1}
    http_server.serve(served)
    _write_items(paths, [(f"A{i}", http_server.url_for("a.jpg")) for i in range(4)])
    second = fetch_images(paths, **FAST)
    assert second["line"] == "images: 4 ok"
    assert read_audit(paths).column("reason").to_pylist() == [None] * 4


# --- HostBoard on its own ------------------------------------------------------------------------


def _refuse() -> None:
    raise ConnectionRefusedError(111, "Connection refused")


def test_board_counts_failures_in_a_row_only():
    board = HostBoard(down_after=3)
    for _ in range(2):
        with pytest.raises(ConnectionRefusedError):
            board.attempt("h:1", _refuse)
    assert board.attempt("h:1", lambda: "answered") == "answered"  # a success resets the streak
    for _ in range(3):
        with pytest.raises(ConnectionRefusedError):
            board.attempt("h:1", _refuse)
    with pytest.raises(
        HostDown, match=r"host h:1 marked down after 3 failures in a row \(first: refused: Connection refused\)"
    ):
        board.attempt("h:1", lambda: "never called")
    assert board.down_hosts() == ["h:1"]
    assert board.attempt("other:2", lambda: 7) == 7  # hosts are independent


def test_board_timeouts_do_not_mark_a_host_down():
    board = HostBoard(down_after=1)

    def slow() -> None:
        raise TimeoutError("timed out")

    for _ in range(3):
        with pytest.raises(TimeoutError):
            board.attempt("slow", slow)
    assert board.down_hosts() == []


def test_board_is_thread_safe_and_probes_a_new_host_one_at_a_time():
    board = HostBoard(down_after=3)
    calls = []
    lock = threading.Lock()

    def dead() -> None:
        with lock:
            calls.append(threading.get_ident())
        time.sleep(0.01)
        _refuse()

    outcomes: list[str] = []

    def worker() -> None:
        for _ in range(10):
            try:
                board.attempt("dead:9", dead)
            except HostDown:
                outcomes.append("down")
            except ConnectionRefusedError:
                outcomes.append("refused")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 3 and sorted(outcomes).count("refused") == 3 and len(outcomes) == 80


def test_classify_and_host_of():
    import requests

    assert classify(socket.gaierror(-2, "Name or service not known")) == "dns"
    assert classify(ConnectionRefusedError(111, "Connection refused")) == "refused"
    assert classify(requests.exceptions.ReadTimeout("read timed out")) == "timeout"
    assert classify(requests.exceptions.ConnectionError(ValueError("odd"))) == "error"
    try:
        requests.get(f"http://{DEAD_NAME}/x.jpg", timeout=2)
    except requests.exceptions.RequestException as exc:
        assert classify(exc) == "dns"
    try:
        requests.get(f"http://127.0.0.1:{_closed_port()}/x.jpg", timeout=2)
    except requests.exceptions.RequestException as exc:
        assert classify(exc) == "refused"
    assert host_of("HTTPS://Images-NA.example.com/I/x.jpg") == "images-na.example.com"
    assert host_of("http://127.0.0.1:8080/x") == "127.0.0.1:8080"
