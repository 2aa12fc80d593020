"""Operating the pipeline: a killed run resumes, the shard map runs on Dask, a schedule serves."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import flows
from store import dataset_paths
from store.tables import read_table
from store.vectors import read_features, read_vectors

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]

TINY = dict(demo_items=100, demo_users=140, pretrain_epochs=2, image_workers=4)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def _options(params: dict) -> list[str]:
    out = []
    for k, v in params.items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def _wait_for(predicate, seconds: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


def test_killed_run_resumes_without_redoing_finished_stages(tmp_path):
    """SIGKILL mid-training, rerun: ingest/features/ICA are cache hits, training resumes."""
    home = tmp_path / "home"
    params = {"dataset": "demo", "home": str(home), **TINY, "epochs": 40, "patience": 40}
    proc = subprocess.Popen(
        _cli("pipeline", *_options(params)),
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    p = dataset_paths("demo", home)
    try:
        _wait_for(lambda: any(p.runs_dir.glob("anchorrec-*/checkpoint.pt")), 240, "a training checkpoint", proc)
        time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    upstream = {f: f.stat().st_mtime_ns for f in [p.items, p.interactions, *p.features_dir.glob("*.parquet")]}
    assert len(upstream) >= 5  # tables + text, image and ica features
    assert not list(p.root.rglob("*.tmp")) or all(f.name.startswith(".") for f in p.root.rglob("*.tmp"))

    result = flows.pipeline(**params)
    assert {f: f.stat().st_mtime_ns for f in upstream} == upstream  # finished stages not redone
    metrics = json.loads(p.metrics(result["run_id"]).read_text())
    assert metrics.get("resumed_from_epoch", 0) >= 1, "training should continue from its checkpoint"
    _, vectors, _ = read_vectors(p.item_vectors(result["run_id"]), "item_id")
    assert np.isfinite(vectors).all()


def test_shard_map_on_dask_equals_single_process(tmp_path):
    base = {"dataset": "demo", **TINY, "epochs": 1}
    one = flows.PipelineConfig(home=str(tmp_path / "one"), **base)
    many = flows.PipelineConfig(home=str(tmp_path / "many"), shards=2, task_runner="dask", **base)
    for cfg in (one, many):
        flows.with_runner(flows.ingest_flow, cfg)(**dataclasses.asdict(cfg))
        flows.with_runner(flows.features_flow, cfg)(**dataclasses.asdict(cfg))
    a, b = one.paths, many.paths
    audit_a, audit_b = read_table(a.image_audit), read_table(b.image_audit)
    assert audit_a.column("status").to_pylist() == audit_b.column("status").to_pylist()
    for name in ("text-minilm", "image-effnet"):
        fa, fb = read_features(a.feature(name)), read_features(b.feature(name))
        assert fa.asins == fb.asins
        np.testing.assert_allclose(fa.vectors, fb.vectors, atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_schedule_served_against_local_server_runs_once(tmp_path):
    """`prefect server start` on 127.0.0.1, `anchorrec serve --cron`, trigger one run, see it finish."""
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    served = None
    try:
        _wait_for(lambda: _healthy(port), 120, "the Prefect server", server)
        params = {"dataset": "demo", "home": str(tmp_path / "home"), **TINY, "epochs": 2, "patience": 2}
        served = subprocess.Popen(
            _cli("serve", "--cron", "0 3 * * *", "--name", "nightly", *_options(params)),
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        inspect = [sys.executable, "-m", "prefect", "deployment", "inspect", "pipeline/nightly"]
        _wait_for(
            lambda: subprocess.run(inspect, env=env, capture_output=True).returncode == 0,
            120,
            "the deployment to register",
            served,
        )
        shown = subprocess.run(inspect, env=env, capture_output=True, text=True).stdout
        assert "0 3 * * *" in shown
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "prefect",
                "deployment",
                "run",
                "pipeline/nightly",
                "--watch",
                "--watch-timeout",
                "400",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=450,
        )
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        assert "Completed" in run.stdout + run.stderr
        assert dataset_paths("demo", tmp_path / "home").index_root.is_dir()
    finally:
        for proc in (served, server):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _healthy(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_stage_lines_are_one_short_human_line_per_stage():
    tokens = {
        "name": "text-minilm-tok",
        "n_with_tokens": 7000,
        "n_items": 7580,
        "mean_tokens": 23.51,
        "bytes_per_item": 17033,
        "encoded": 12,
        "seconds": 3.2,
        "token_meta": {"vocab_size": 30522},
    }
    assert flows.stage_line("tokens text", tokens) == (
        "text-minilm-tok: tokens for 7000 of 7580 items, 23.5 per item, 16.6 KB/item (12 encoded) (3.2 s)"
    )
    applied = {"name": "ica-1-from-apparel", "run": "/h/apparel/runs/ica-1", "path": "/x", "seconds": 1.5}
    assert flows.stage_line("apply ica", applied) == "ica-1-from-apparel: mm encoded by /h/apparel/runs/ica-1 (1.5 s)"
    assert flows.stage_line("images", {"line": "images: 5 ok"}) == "5 ok"
