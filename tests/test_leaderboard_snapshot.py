"""benchmarks/accuracy/leaderboard_run.py keeps studies in a snapshot folder that a wiped home restarts from."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from models_fixtures import planted
from test_models_train import write_tiny_dataset

from models.evaluation.leaderboard import best_config, run_leaderboard
from models.training import tune as tune_mod
from models.training.trainer import TrainConfig
from store.tables import read_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks.*
from benchmarks.accuracy import leaderboard_run  # noqa: E402


@pytest.mark.usefixtures("one_torch_thread")
def test_a_snapshot_brings_back_a_lost_study_with_its_trials(tmp_path):
    paths, _, _ = write_tiny_dataset(
        tmp_path / "home", planted(n_users=40, n_items=30, n_groups=2, per_user=8), with_feature=False
    )
    base = TrainConfig(model="lightgcn", model_args={"dim": 8}, epochs=2, patience=2, batch_size=64)
    space = {"lr": (1e-2, 5e-3, 1e-3)}
    first = tune_mod.tune(paths, base, 2, space=space, pruner="none")
    chosen, _ = best_config(paths, "lightgcn")  # from the best trial's own config.json
    tuning, snapshot = paths.root / "tuning", tmp_path / "snapshot"
    leaderboard_run.save_studies(tuning, snapshot, ["lightgcn", "alignrec"])  # alignrec has no study: skipped
    assert sorted(p.name for p in (snapshot / "studies" / "lightgcn").iterdir()) == ["best.json", "study.db"]
    assert not (snapshot / "studies" / "alignrec").exists()

    shutil.rmtree(tuning)  # the machine lost its disk (the runs too)
    shutil.rmtree(paths.runs_dir)
    leaderboard_run.restore_studies(tuning, snapshot, ["lightgcn"])
    shutil.copyfile(snapshot / "studies" / "lightgcn" / "best.json", tuning / "lightgcn" / "best.json")
    rebuilt, _ = best_config(paths, "lightgcn")  # no run left: from the study's budget and the trial's params
    assert rebuilt.to_json() == chosen.to_json()
    out = tune_mod.tune(paths, base, 3, space=space, pruner="none")
    assert (
        out["done"] == 3 and out["ran_now"] == 1 + out["duplicates"]
    )  # the two snapshot trials count; one more trained
    assert out["best_value"] >= first["best_value"]


@pytest.mark.usefixtures("one_torch_thread")
def test_finished_leaderboard_runs_outlive_the_disk_as_summaries(tmp_path):
    """Seed runs kept as small files are reported on a new machine without training again."""
    paths, _, _ = write_tiny_dataset(tmp_path / "home", planted(n_users=40, n_items=30, n_groups=2, per_user=8))
    feats = {"t": "text-tiny", "v": "text-tiny", "mm": "text-tiny"}
    base = TrainConfig(
        model="anchorrec",
        model_args={"embedding_dim": 8},
        features=feats,
        epochs=2,
        patience=2,
        batch_size=64,
        knn_k=4,
        seed=7,
    )  # tuned on seed 7: seeds 0 and 1 confirm it
    tune_mod.tune(paths, base, 2, space={"lr": (1e-2, 5e-3)}, pruner="none")
    quiet = dict(seeds=(0, 1), progress=False, log=lambda _: None, projection_sample=40)
    first = read_json(run_leaderboard(paths, **quiet).with_suffix(".json"))
    (paths.runs_dir / "lb-anchorrec-s1" / "per_user.npz").rename(tmp_path / "later")  # as if still finishing
    snapshot = tmp_path / "snapshot"
    assert leaderboard_run.save_runs(paths.runs_dir, snapshot, "lb-") == ["lb-anchorrec-s0"]
    (tmp_path / "later").rename(paths.runs_dir / "lb-anchorrec-s1" / "per_user.npz")
    assert leaderboard_run.save_runs(paths.runs_dir, snapshot, "lb-") == ["lb-anchorrec-s1"]  # each run once
    assert leaderboard_run.save_runs(paths.runs_dir, snapshot, "lb-") == []
    assert leaderboard_run.save_runs(paths.runs_dir, snapshot, "abl-") == []  # another script's prefix
    kept = sorted(p.name for p in (snapshot / "runs" / "lb-anchorrec-s0").iterdir())
    assert kept == sorted(leaderboard_run.KEPT)  # no vectors, no checkpoint

    shutil.rmtree(paths.runs_dir)  # a new machine: the studies' trial runs are gone too
    assert leaderboard_run.restore_runs(paths.runs_dir, snapshot) == ["lb-anchorrec-s0", "lb-anchorrec-s1"]
    again = read_json(run_leaderboard(paths, **quiet).with_suffix(".json"))
    assert again["models"] == first["models"] and again["verdict"] == first["verdict"]
    assert not list(paths.runs_dir.glob("*/checkpoint.pt"))  # nothing was trained
    assert (paths.root / "reports" / "leaderboard" / "projection-anchorrec.png").exists()

    # the study's choice changed since the kept runs ran: refused, not mixed into one row
    stored = read_json(paths.run("lb-anchorrec-s0") / "config.json")
    best = read_json(tune_mod.study_dir(paths, "anchorrec") / "best.json")
    best["best_params"]["lr"] = 0.5
    (tune_mod.study_dir(paths, "anchorrec") / "best.json").write_text(json.dumps(best))
    with pytest.raises(ValueError, match="lb-anchorrec-s0: a kept run of another configuration .*'lr'"):
        run_leaderboard(paths, **quiet)
    assert stored["lr"] != 0.5


@pytest.mark.usefixtures("one_torch_thread")
def test_a_run_in_flight_continues_from_its_copy_on_a_new_machine(tmp_path):
    from test_models_train import assert_same_run, kill_after, small_lightgcn_run

    from models.training.trainer import fit

    data, graph, cfg = small_lightgcn_run()
    runs, snapshot = tmp_path / "runs", tmp_path / "snapshot"
    full = fit(data, graph, cfg, tmp_path / "full", progress=False)
    kill_after(data, graph, cfg, runs / "lb-lightgcn-s0", epoch=2)  # in flight when the machine went
    fit(data, graph, cfg, runs / "lb-lightgcn-s1", progress=False)  # finished: not a flight copy
    assert leaderboard_run.save_inflight(runs, snapshot) == ["lb-lightgcn-s0"]
    assert sorted(p.name for p in (snapshot / "inflight" / "lb-lightgcn-s0").iterdir()) == [
        "checkpoint.pt",
        "config.json",
    ]

    shutil.rmtree(runs)
    assert leaderboard_run.restore_inflight(runs, snapshot) == ["lb-lightgcn-s0"]
    resumed = fit(data, graph, cfg, runs / "lb-lightgcn-s0", progress=False)
    assert resumed["resumed_from_epoch"] == 3
    assert_same_run(resumed, full, runs / "lb-lightgcn-s0", tmp_path / "full")
    assert leaderboard_run.save_inflight(runs, snapshot) == [] and not list((snapshot / "inflight").iterdir())
    assert leaderboard_run.restore_inflight(runs, snapshot) == []

    # two scripts keep one snapshot (a leaderboard, an ablation): each copies and drops only its own runs
    kill_after(data, graph, cfg, runs / "abl-x-s0", epoch=1)
    assert leaderboard_run.save_inflight(runs, snapshot, ("abl-",)) == ["abl-x-s0"]
    shutil.rmtree(runs / "abl-x-s0")  # gone from the home, but it is not the leaderboard's to drop
    assert leaderboard_run.save_inflight(runs, snapshot, ("lb-", "tune-")) == []
    assert [p.name for p in (snapshot / "inflight").iterdir()] == ["abl-x-s0"]
    assert not (snapshot / ".partial").exists() or not list((snapshot / ".partial").iterdir())  # no half-made copy left
