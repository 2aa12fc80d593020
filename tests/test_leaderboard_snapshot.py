"""benchmarks/leaderboard_run.py keeps studies in a snapshot folder that a wiped home restarts from."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from models_fixtures import planted
from test_models_train import write_tiny_dataset

from models.evaluation.leaderboard import best_config
from models.training import tune as tune_mod
from models.training.trainer import TrainConfig

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("leaderboard_run", REPO / "benchmarks" / "leaderboard_run.py")
leaderboard_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(leaderboard_run)


@pytest.mark.usefixtures("one_torch_thread")
def test_a_snapshot_brings_back_a_lost_study_with_its_trials(tmp_path):
    paths, _, _ = write_tiny_dataset(tmp_path / "home", planted(n_users=40, n_items=30, n_groups=2, per_user=8),
                                     with_feature=False)
    base = TrainConfig(model="lightgcn", model_args={"dim": 8}, epochs=2, patience=2, batch_size=64)
    space = {"lr": (1e-2, 5e-3, 1e-3)}
    first = tune_mod.tune(paths, base, 2, space=space, pruner="none")
    chosen, _ = best_config(paths, "lightgcn")  # from the best trial's own config.json
    tuning, snapshot = paths.root / "tuning", tmp_path / "snapshot"
    leaderboard_run.save_studies(tuning, snapshot, ["lightgcn", "alignrec"])  # alignrec has no study: skipped
    assert sorted(p.name for p in (snapshot / "lightgcn").iterdir()) == ["best.json", "study.db"]
    assert not (snapshot / "alignrec").exists()

    shutil.rmtree(tuning)  # the machine lost its disk (the runs too)
    shutil.rmtree(paths.runs_dir)
    leaderboard_run.restore_studies(tuning, snapshot, ["lightgcn"])
    shutil.copyfile(snapshot / "lightgcn" / "best.json", tuning / "lightgcn" / "best.json")
    rebuilt, _ = best_config(paths, "lightgcn")  # no run left: from the study's budget and the trial's params
    assert rebuilt.to_json() == chosen.to_json()
    out = tune_mod.tune(paths, base, 3, space=space, pruner="none")
    assert out["done"] == 3 and out["ran_now"] == 1  # the two snapshot trials count; one more ran
    assert out["best_value"] >= first["best_value"]
