"""A schedule that fires: a real `prefect server start`, `anchorrec serve --cron '* * * * *'`, and no
run triggered by hand. The server's scheduler must create the run (auto_scheduled), the served
process must execute and publish it, print its stage lines, and the server log must stay clean
(prefect 3.8.8 beside SQLAlchemy 2.1 crashed the scheduler service: runs were never created)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import pyarrow.parquet as pq
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from store import dataset_paths

REPO = Path(__file__).resolve().parents[1]

TINY = [
    "--demo-items",
    "60",
    "--demo-users",
    "80",
    "--pretrain-epochs",
    "1",
    "--image-workers",
    "4",
    "--epochs",
    "2",
    "--patience",
    "2",
]
STAGES = ("ingest", "images", "features text", "features image", "pretrain", "train", "publish")
WAIT_S = 300  # serve starting, the next minute boundary (≤ 60 s), the tiny pipeline (~110 s on 2 busy cores)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(url: str, path: str, body: dict | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{url}{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _healthy(url: str) -> bool:
    try:
        return _api(url, "/health") is True
    except OSError:
        return False


def _scheduler_errors(log: Path) -> list[str]:
    text = log.read_text(errors="replace")
    return [line for line in text.splitlines() if "Traceback" in line or "| ERROR" in line]


def _wait(
    predicate: Callable[[], Any], seconds: float, what: str, procs: dict[str, subprocess.Popen], server_log: Path
) -> Any:
    """Poll until `predicate` is truthy; fail at once when a process ends or the scheduler errs."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} ended (rc {proc.returncode}) before {what}")
        errors = _scheduler_errors(server_log)
        assert not errors, f"the Prefect server logged errors before {what}: {errors[:3]}"
        time.sleep(1)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group (the served flow runs are its children), SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(15)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # a grandchild left behind in the group
    except ProcessLookupError:
        pass


@pytest.fixture()
def server(tmp_path: Path):
    """`prefect server start` on 127.0.0.1 with a throwaway PREFECT_HOME; yields (env, url, log, process)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_API_URL=url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_RUNNER_POLL_FREQUENCY="2",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait(lambda: _healthy(url), 120, "the Prefect server to answer", {"prefect server": proc}, log_path)
        yield env, url, log_path, proc
    finally:
        _stop(proc)


def _completed_scheduled_run(url: str) -> dict | None:
    runs = _api(url, "/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}})
    return next((r for r in runs if r["auto_scheduled"]), None)


def _lock() -> dict[str, str]:
    pins = [
        line.split("==")
        for line in (REPO / "requirements.lock").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    return {canonicalize_name(name): version for name, version in pins}


def test_lock_satisfies_pyproject_and_keeps_the_scheduler_on_sqlalchemy_2_0():
    """A dependency edited in pyproject.toml without `make lock` is caught here, not on a fresh machine."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lock = _lock()
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    unmet = [str(r) for r in wanted if lock.get(canonicalize_name(r.name)) not in r.specifier]
    assert not unmet, f"requirements.lock does not satisfy {unmet}: run `make lock`"
    assert Version(lock["sqlalchemy"]) < Version("2.1")  # prefect 3.8.8's scheduler fails on 2.1
    assert Version(metadata.version("sqlalchemy")) < Version("2.1"), "the venv is not installed from the lock"


@pytest.fixture()
def anchorrec_log():
    """The `anchorrec` logger as the hooks leave it (a handler on this test's stderr), restored after."""
    import logging

    log = logging.getLogger("anchorrec")
    saved = (log.handlers[:], log.level, log.propagate)
    yield
    log.handlers[:], log.level, log.propagate = saved[0], saved[1], saved[2]


def test_a_served_run_says_when_it_starts_and_why_it_failed(anchorrec_log, capsys):
    """The hooks run in the flow run's own process, where nothing configured logging yet."""
    import uuid

    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Completed, Failed, Running

    import cli

    scheduled = FlowRun(name="brave-fox", flow_id=uuid.uuid4(), auto_scheduled=True)
    by_hand = FlowRun(name="calm-owl", flow_id=uuid.uuid4(), auto_scheduled=False)
    cli._run_started(None, scheduled, Running())
    cli._run_ended(None, scheduled, Failed(message="Flow run encountered an exception: ValueError: bad\n  epochs"))
    cli._run_ended(None, by_hand, Completed())
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"scheduled run brave-fox started ({scheduled.id})"
    assert lines[1].startswith("scheduled run brave-fox failed after ")
    assert lines[1].endswith(" s: Flow run encountered an exception: ValueError: bad epochs")
    assert lines[2] == "run calm-owl completed"  # ended where it did not start (the runner's own process): no time
    assert len(lines) == 3


@pytest.mark.slow
def test_cron_schedule_fires_publishes_and_prints_stage_lines(server, tmp_path):
    env, url, server_log, server_proc = server
    home = tmp_path / "home"
    serve_log = tmp_path / "serve.log"
    with open(serve_log, "w") as out:
        served = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli",
                "serve",
                "--cron",
                "* * * * *",
                "--name",
                "every-minute",
                "--dataset",
                "demo",
                "--home",
                str(home),
                *TINY,
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        procs = {"prefect server": server_proc, "anchorrec serve": served}
        run = _wait(lambda: _completed_scheduled_run(url), WAIT_S, "a scheduled run to complete", procs, server_log)
        deployment = _api(url, f"/deployments/{run['deployment_id']}")
        assert deployment["name"] == "every-minute"
        assert run["created_by"] is None or run["created_by"]["type"] != "USER"  # the scheduler made it, not a person
        assert run["parameters"]["dataset"] == "demo" and run["parameters"]["demo_items"] == 60
    finally:
        _stop(served)
    assert served.returncode == 143  # SIGTERM (systemctl stop) ends serve as Ctrl-C does, not after a timeout
    assert not _scheduler_errors(server_log), server_log.read_text()[-3000:]

    paths = dataset_paths("demo", home)
    published = {
        m.parents[2].name: json.loads(m.read_text()) for m in paths.index_root.glob("*/versions/*/manifest.json")
    }
    assert published, f"no index manifest under {paths.index_root}"
    n_items = pq.read_metadata(paths.items).num_rows
    assert {m["count"] for m in published.values()} == {n_items}
    answer = subprocess.run(
        [sys.executable, "-m", "cli", "recommend", "--dataset", "demo", "--home", str(home), "--user", "0", "-k", "3"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert answer.returncode == 0, answer.stderr[-2000:]
    answered = [line for line in answer.stdout.splitlines() if line.startswith("answered by run ")]
    assert answered and answered[0].split()[3] in published, answer.stdout  # a run the schedule published

    lines = re.split(r"[\r\n]", serve_log.read_text())  # a progress bar's redraws are lines too
    heads = [line.split(":")[0] for line in lines if ":" in line and not line.startswith(" ")]
    for stage in STAGES:
        assert stage in heads, "\n".join(lines)
    assert f"scheduled run {run['name']} started ({run['id']})" in lines
    assert any(line.startswith(f"scheduled run {run['name']} completed after ") for line in lines), "\n".join(lines)
    assert not [line for line in lines if "Traceback" in line or "ERROR" in line], "\n".join(lines)
    assert (
        lines.count("stopped (SIGTERM): finished stages and checkpoints are kept; run the same command again to resume")
        == 1
    )
