"""A run's status is written by its trainer (runs/<id>/status.json), and `anchorrec runs` shows it:
finished / stopped / diverged / failed / interrupted, never guessed from a checkpoint's age."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from models_fixtures import planted
from store_testdata import make_dataset

from models.training.data import build_graph_data
from models.training.trainer import TrainConfig, fit, resume_run, stop_run, train
from store.index import publish
from store.run_status import read_status

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")
CFG = TrainConfig(model="lightgcn", epochs=6, patience=6, run_id="r")


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


@pytest.fixture(scope="module")
def tiny():
    data = planted(n_users=60, n_items=40, n_groups=2, per_user=8)
    return data, build_graph_data(data, {}, device="cpu")


def interrupt_after(epoch: int):
    def crash(e, _record):
        if e == epoch:
            raise KeyboardInterrupt("simulated Ctrl-C")

    return crash


def test_finished_stopped_and_resumed_runs_record_it(tiny, tmp_path):
    data, graph = tiny
    done = fit(data, graph, CFG, tmp_path / "done", progress=False)
    assert status(tmp_path / "done")["status"] == "finished"
    assert (
        status(tmp_path / "done")["epoch"] == done["epochs_run"] == 6
        and status(tmp_path / "done")["pid"] == os.getpid()
    )

    with pytest.raises(KeyboardInterrupt):
        fit(data, graph, CFG, tmp_path / "stop", progress=False, callback=interrupt_after(1))
    assert status(tmp_path / "stop")["status"] == "interrupted"
    assert stop_run(tmp_path / "stop") == 2
    assert (status(tmp_path / "stop")["status"], status(tmp_path / "stop")["epoch"]) == ("stopped", 2)
    m = fit(data, graph, CFG, tmp_path / "stop", progress=False)  # tests the best epoch so far
    assert m["stopped_by_hand"]
    assert (status(tmp_path / "stop")["status"], status(tmp_path / "stop")["epoch"]) == ("stopped", 2)

    assert resume_run(tmp_path / "stop") == 2
    assert status(tmp_path / "stop")["status"] == "interrupted" and not (tmp_path / "stop" / "metrics.json").exists()
    assert fit(data, graph, CFG, tmp_path / "stop", progress=False)["epochs_run"] == 6
    assert status(tmp_path / "stop")["status"] == "finished"


def test_a_refused_call_leaves_the_run_status_alone(tiny, tmp_path):
    data, graph = tiny
    fit(data, graph, CFG, tmp_path / "r", progress=False)
    before = status(tmp_path / "r")
    with pytest.raises(ValueError, match="different configuration"):
        fit(data, graph, dataclasses.replace(CFG, lr=5e-3), tmp_path / "r", progress=False)
    assert status(tmp_path / "r") == before


def test_a_too_large_lr_diverges_or_fails_and_says_so(tiny, tmp_path):
    """lr 1e20: with one batch per epoch the loss is finite at epoch 0 and NaN at epoch 1 (diverged:
    tested at epoch 0); with 64-pair batches it is NaN within epoch 0 (failed: nothing to test)."""
    data, graph = tiny
    big = dataclasses.replace(CFG, lr=1e20, batch_size=2048)
    m = fit(data, graph, big, tmp_path / "div", progress=False)
    assert m["diverged_at_epoch"] == 1
    assert (status(tmp_path / "div")["status"], status(tmp_path / "div")["epoch"]) == ("diverged", 1)
    with pytest.raises(FloatingPointError):
        fit(data, graph, dataclasses.replace(big, batch_size=64), tmp_path / "nan", progress=False)
    s = status(tmp_path / "nan")
    assert (
        s["status"] == "failed"
        and s["note"].startswith("FloatingPointError: ")
        and "loss is nan at epoch 0" in s["note"]
    )


# ---------------------------------------------------------------- `anchorrec runs`, as a user runs it
def runs_table(home: Path) -> dict[str, list[str]]:
    env = {**os.environ, "COLUMNS": "250"}
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "runs", "--dataset", "toys", "--home", str(home)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [[c.strip() for c in line.split("│")[1:-1]] for line in proc.stdout.splitlines() if "│" in line]
    header = lines[0]
    return {row[0]: dict(zip(header, row)) for row in lines[1:] if row and row[0] not in ("varchar", "")}


HOLD = """
import pathlib, sys, time, torch
from models.training.trainer import TrainConfig, fit, prepare
from store.layout import DatasetPaths
torch.set_num_threads(1)
def wait_forever(epoch, record):
    if epoch == 1:
        print("epoch 1 done", flush=True)
        time.sleep(3600)
paths = DatasetPaths(pathlib.Path(sys.argv[1]))
cfg = TrainConfig(model="lightgcn", epochs=50, patience=50, run_id="killed")
fit(*prepare(paths, cfg), cfg, paths.run("killed"), progress=False, callback=wait_forever)
"""


def test_runs_shows_what_the_trainer_wrote_not_file_ages(tmp_path):
    data = make_dataset(tmp_path, n_users=40, n_items=60)
    paths = data.paths
    train(paths, dataclasses.replace(CFG, run_id="done", epochs=3, patience=3), progress=False)
    publish(paths, "done")
    paths.metrics("done").unlink()  # a finished, published run whose metrics.json is gone
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(paths.root)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "epoch 1 done"
        assert read_status(paths.run("killed"))["status"] == "running"
        rows = runs_table(tmp_path)
        done = (rows["done"]["status"], rows["done"]["published"], rows["done"]["valid_recall@20"])
        assert done == ("finished", "true", "NULL")
        assert rows["done"]["note"].startswith("metrics.json missing")
        assert (rows["killed"]["status"], rows["killed"]["note"]) == ("running", "NULL")
        assert rows["run-a"]["status"] == "failed"  # written before status files: the legacy guess (old files)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        assert status(paths.run("killed"))["status"] == "running"  # the record is as the dead trainer left it
        rows = runs_table(tmp_path)
        assert rows["killed"]["status"] == "interrupted" and f"pid {holder.pid}" in rows["killed"]["note"]
    finally:
        holder.kill()
        holder.wait()
