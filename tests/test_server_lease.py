"""One Prefect API server per PREFECT_HOME: reused by the next command, never left behind.

The server records itself in PREFECT_HOME/anchorrec-server.json; each command holds a shared
flock lease for its life, and the server exits a grace period after the last lease is gone,
SIGKILL of the command included.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cli_helpers
import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

GRACE_S = 3
DEMO = ["--demo-items", "60", "--demo-users", "80"]


def user_env(root: Path, grace: float = GRACE_S) -> dict:
    """A user's shell with no Prefect server configured and its own homes."""
    return cli_helpers.user_env(root / "home", root / "prefect", ANCHORREC_SERVER_GRACE_S=str(grace))


def anchorrec(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def timed(args: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    return proc, time.perf_counter() - t0


def state(env: dict) -> dict:
    path = Path(env["PREFECT_HOME"]) / "anchorrec-server.json"
    return json.loads(path.read_text()) if path.exists() else {}


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def servers_of(env: dict) -> list[psutil.Process]:
    """Server processes started for this PREFECT_HOME (whoever their parent is now)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if any(c.endswith("prefect_server.py") for c in cmd) and env["PREFECT_HOME"] in cmd:
            found.append(p)
    return found


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_kill_9_leaves_nothing_listening_or_running(tmp_path) -> None:
    env = user_env(tmp_path)
    err = tmp_path / "stderr.txt"
    with err.open("w") as fh:
        proc = subprocess.Popen(
            anchorrec("pipeline", *DEMO, "--pretrain-epochs", "1", "--epochs", "2"),
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=fh,
        )
    try:
        assert wait_until(lambda: "ingest:" in err.read_text() or proc.poll() is not None, 300), err.read_text()
        assert proc.poll() is None, err.read_text()[-2000:]  # still working: a stage after ingest runs
        server = state(env)
        assert server.get("ready") and listening(server["port"]), server
        started = [server["pid"]] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()

    def alive():
        return [pid for pid in started if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]

    assert wait_until(lambda: not alive() and not listening(server["port"]), GRACE_S + 30), (alive(), server)
    assert state(env) == {} and servers_of(env) == []  # the record went with the server


def test_the_next_command_reuses_the_server_and_pays_seconds_not_a_start(tmp_path) -> None:
    env = user_env(tmp_path, grace=60)
    first, t_first = timed(anchorrec("ingest", *DEMO), env)
    assert first.returncode == 0, first.stderr[-2000:]
    pid = state(env)["pid"]
    second, t_second = timed(anchorrec("ingest", *DEMO), env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "ingest: cached" in second.stderr
    assert state(env)["pid"] == pid and [p.pid for p in servers_of(env)] == [pid]
    assert t_second < t_first / 2, (t_first, t_second)  # the first paid the server's start; the second did not
    for p in servers_of(env):  # leave nothing for the grace period
        p.terminate()


def test_concurrent_commands_share_one_server_without_tracebacks(tmp_path) -> None:
    env = user_env(tmp_path, grace=GRACE_S)
    procs = [
        subprocess.Popen(
            anchorrec("ingest", *DEMO, "--dataset", name),
            cwd=REPO,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in ("one", "two")
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "Traceback" not in out + err and "ERROR" not in out + err, err[-3000:]
        assert "ingest: 60 items" in err
    assert len(servers_of(env)) <= 1  # one server for both (it may already have gone after the grace)
    assert wait_until(lambda: servers_of(env) == [], GRACE_S + 30)


def test_a_server_whose_home_was_deleted_exits(tmp_path) -> None:
    """Test and temp homes get deleted: the server must not outlive them (nobody can find it again)."""
    env = user_env(tmp_path, grace=2)
    code = "import prefect_server; print(prefect_server.ensure_api())"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith("http://127.0.0.1:"), proc.stderr
    server = state(env)
    shutil.rmtree(env["PREFECT_HOME"])
    assert wait_until(lambda: not psutil.pid_exists(server["pid"]) and not listening(server["port"]), 2 + 30), server


def test_a_configured_api_url_is_used_and_nothing_is_started(tmp_path, monkeypatch) -> None:
    import prefect_server

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert prefect_server.ensure_api() is None
    assert not (tmp_path / "prefect").exists()
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.setenv("ANCHORREC_SERVER", "per-command")  # the old behaviour, for comparisons
    assert prefect_server.ensure_api() is None
    assert not (tmp_path / "prefect").exists()


def test_a_bad_grace_period_is_one_line_before_any_server(tmp_path) -> None:
    env = {**user_env(tmp_path), "ANCHORREC_SERVER_GRACE_S": "soon"}
    proc, _ = timed(anchorrec("ingest", *DEMO), env)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: ANCHORREC_SERVER_GRACE_S=soon: give the seconds the Prefect server outlives the last command, e.g. 45"
    ]
    assert state(env) == {} and servers_of(env) == []
