"""The command line as a user runs it: short quiet output, Ctrl-C within seconds, rerun resumes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import user_env

from store import dataset_paths

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

SMALL = [
    "--demo-items",
    "100",
    "--demo-users",
    "140",
    "--pretrain-epochs",
    "2",
    "--image-workers",
    "4",
    "--epochs",
    "5",
    "--patience",
    "5",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """A user's shell: no Prefect server configured (the CLI starts its own), a fresh home."""
    root = tmp_path_factory.mktemp("cli")
    return user_env(root / "home", root / "prefect", COLUMNS="120")


def anchorrec(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def run_bytes(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """Output decoded without newline translation: text mode would turn a bar's \r redraws into lines."""
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, timeout=600)
    proc.stdout, proc.stderr = proc.stdout.decode(), proc.stderr.decode()
    return proc


@pytest.fixture(scope="module")
def first(env) -> subprocess.CompletedProcess:
    return run_bytes(anchorrec("pipeline", *SMALL), env)


def test_pipeline_output_is_short_and_has_no_error_lines(first):
    assert first.returncode == 0, first.stderr[-3000:]
    text = first.stdout + first.stderr
    lines = text.split("\n")  # what a terminal shows: a progress bar redraws its line with \r
    assert len(lines) < 60, text
    assert not [line for line in lines if "ERROR" in line or "Traceback" in line or "Retrying" in line]
    shown = [line.split("\r")[-1] for line in first.stderr.split("\n")]  # a bar's last redraw, then the line
    stages = [line.split(":")[0] for line in shown if ":" in line and not line.startswith(" ")]
    for stage in ("ingest", "images", "features text", "features image", "pretrain", "train", "publish"):
        assert stage in stages, first.stderr
    assert "answered" not in text and "published anchorrec-" in text


def test_ctrl_c_stops_within_seconds_and_the_rerun_resumes(first, env):
    assert first.returncode == 0
    p = dataset_paths("demo", env["ANCHORREC_HOME"])
    before = set(p.runs_dir.glob("anchorrec-*"))
    args = ["train", "--pretrain-epochs", "2", "--lr", "2e-3", "--epochs", "60", "--patience", "60"]
    proc = subprocess.Popen(
        anchorrec(*args),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while not [d for d in p.runs_dir.glob("anchorrec-*") if d not in before and (d / "checkpoint.pt").exists()]:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no checkpoint of the new run"
        time.sleep(0.2)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 10
    assert proc.returncode == 130
    assert "stopped (SIGINT)" in err and "ConnectError" not in err and "Traceback" not in err
    assert err.count("\n") < 20

    again = run_bytes(anchorrec(*args), env)
    assert again.returncode == 0, again.stderr[-3000:]
    (run,) = [d for d in p.runs_dir.glob("anchorrec-*") if d not in before]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] >= 1
    assert "ingest" not in again.stderr  # train does not ingest
    assert "pretrain: cached" in again.stderr


def test_store_commands_answer_with_the_run_they_used(first, env):
    assert first.returncode == 0
    listed = subprocess.run(anchorrec("runs"), cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "finished" in listed.stdout and "anchorrec-" in listed.stdout
    rec = subprocess.run(
        anchorrec("recommend", "--user", "0", "-k", "3"), cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert rec.returncode == 0, rec.stderr
    assert rec.stdout.startswith("answered by run anchorrec-") and "model anchorrec" in rec.stdout
    ls = subprocess.run(anchorrec("ls"), cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert ls.returncode == 0 and "│ demo" in ls.stdout
