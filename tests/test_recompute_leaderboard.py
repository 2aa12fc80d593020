"""A leaderboard table recomputes from its snapshot alone: same numbers, nothing trained."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from models_fixtures import planted
from test_leaderboard import BASES, SPACES
from test_models_train import write_tiny_dataset

from models.evaluation.leaderboard import run_leaderboard
from models.training import tune as tune_mod

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks.*
from benchmarks.accuracy import recompute_leaderboard as rl  # noqa: E402
from benchmarks.common import run_snapshot  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_home(root: Path):
    paths, _, _ = write_tiny_dataset(root, planted(n_users=40, n_items=30, n_groups=2, per_user=8))
    return paths


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    """A tiny two-model leaderboard, kept the way leaderboard_run.py --snapshot keeps it."""
    paths = tiny_home(tmp_path_factory.mktemp("made"))
    for model, base in BASES.items():
        tune_mod.tune(paths, base, 2, space=SPACES[model], pruner="none")
    out = run_leaderboard(paths, seeds=(1, 2), progress=False, log=lambda _: None, projection_sample=40)
    snap = tmp_path_factory.mktemp("snapshot")
    run_snapshot.save_studies(paths.root / "tuning", snap, list(BASES))
    run_snapshot.save_runs(paths.runs_dir, snap, "lb-")
    shutil.copytree(out.parent, snap / "report")
    return snap


def test_the_kept_table_is_recomputed_exactly_without_training(snapshot, tmp_path, capsys):
    paths = tiny_home(tmp_path / "home")  # a new machine: the dataset rebuilt, no study, no run
    assert rl.main(["--dataset", paths.name, "--snapshot", str(snapshot), "--home", str(tmp_path / "home")]) == 0
    out = capsys.readouterr().out
    assert "0 difference(s): the kept table is recomputed exactly" in out
    assert not list(paths.runs_dir.glob("*/checkpoint.pt"))  # every number came from the kept summaries
    kept = json.loads((snapshot / "report" / "leaderboard.json").read_text())
    r20 = kept["models"]["lightgcn"]["test_mean"]["recall@20"]
    assert f"| lightgcn | {r20:.4f}" in out


def test_a_changed_kept_figure_is_caught(snapshot, tmp_path, capsys):
    changed = tmp_path / "snapshot"
    shutil.copytree(snapshot, changed)
    metrics = changed / "runs" / "lb-lightgcn-s1" / "metrics.json"
    m = json.loads(metrics.read_text())
    m["test"]["recall@20"] += 0.01  # a kept run says something other than the table built from it
    metrics.write_text(json.dumps(m))
    paths = tiny_home(tmp_path / "home")
    assert rl.main(["--dataset", paths.name, "--snapshot", str(changed), "--home", str(tmp_path / "home")]) == 1
    assert "models/lightgcn/test_mean/recall@20: kept" in capsys.readouterr().out


def test_differences_reads_floats_to_the_last_bits_and_structure():
    assert rl.differences({"a": [1.0, 2.0]}, {"a": [1.0, 2.0 + 1e-15]}) == []
    assert rl.differences({"a": 1.0}, {"a": 1.0 + 1e-9}) == ["/a: kept 1.0, recomputed 1.000000001"]
    assert rl.differences({"a": [1]}, {"a": [1, 2]}) == ["/a: 1 entries kept, 2 recomputed"]
    assert rl.differences({"a": 1}, {"b": 1}) == ["/a: only in kept", "/b: only in recomputed"]
    assert rl.differences(float("nan"), float("nan")) == []
