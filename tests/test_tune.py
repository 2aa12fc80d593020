"""Tuning: a tiny study runs, prunes, resumes after SIGKILL and chooses on validation only."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest
from models_fixtures import planted
from optuna.trial import TrialState
from test_models_train import write_tiny_dataset

from models.registry import MODELS, make_config
from models.training import progress as progress_mod
from models.training import tune as tune_mod
from models.training.data import interactions_from_arrays
from models.training.trainer import TrainConfig, load_checkpoint
from store.inventory import list_runs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
SPACE = {"lr": (5e-2, 2e-2, 1e-2, 5e-3, 1e-3), "n_layers": (1, 2, 3), "reg_weight": (1e-4, 1e-3, 1e-2)}
BASE = TrainConfig(model="lightgcn", model_args={"dim": 8}, epochs=3, patience=3, batch_size=64, knn_k=4)


def tiny_paths(home: Path, data=None):
    data = data or planted(n_users=40, n_items=30, n_groups=2, per_user=8)
    paths, _, _ = write_tiny_dataset(home, data, with_feature=False)
    return paths


def study_of(paths, name="lightgcn") -> optuna.Study:
    storage = f"sqlite:///{tune_mod.study_dir(paths, name) / 'study.db'}"
    return optuna.load_study(study_name=name, storage=storage)


class PruneAfterFirstTrial(optuna.pruners.BasePruner):
    """Trial 0 runs to its end; every later trial is pruned at its first report."""

    def prune(self, study, trial) -> bool:
        return trial.number >= 1


# ------------------------------------------------------------------ a study runs, records, continues


def test_tiny_study_runs_records_trials_and_tops_up(tmp_path):
    paths = tiny_paths(tmp_path)
    out = tune_mod.tune(paths, BASE, 3, space=SPACE, pruner="none")
    study = study_of(paths)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert out["complete"] == 3 and out["done"] == 3 and out["pruned"] == out["failed"] == 0 and out["ran_now"] == 3
    best = max(trials, key=lambda t: t.value)
    assert out["best_value"] == best.value and out["best_params"] == best.params and out["best_trial"] == best.number
    # each trial is an ordinary run; its value is that run's best validation Recall@20
    for t in trials:
        metrics = json.loads(paths.metrics(t.user_attrs["run_id"]).read_text())
        assert t.user_attrs["run_id"] == f"tune-lightgcn-t{t.number:03d}" and "duplicate_of" not in t.user_attrs
        assert metrics["valid"]["recall@20"] == t.value
        assert metrics["epochs_run"] <= 3 and metrics["model"] == "lightgcn"
        assert t.user_attrs["test"]["recall@20"] == metrics["test"]["recall@20"]
        cfg = json.loads((paths.run(t.user_attrs["run_id"]) / "config.json").read_text())
        assert cfg["lr"] == t.params["lr"] and cfg["model_args"] == {
            "dim": 8,
            "n_layers": t.params["n_layers"],
            "reg_weight": t.params["reg_weight"],
        }
    listed = {r["run_id"]: r for r in list_runs(paths)}
    assert all(listed[t.user_attrs["run_id"]]["status"] == "finished" for t in trials)
    on_disk = json.loads((tune_mod.study_dir(paths, "lightgcn") / "best.json").read_text())
    assert on_disk["best_params"] == out["best_params"] and on_disk["budget"]["epochs"] == 3
    assert on_disk["wall_s_total"] > 0

    best_path = tune_mod.study_dir(paths, "lightgcn") / "best.json"
    written = best_path.read_bytes()
    again = tune_mod.tune(paths, BASE, 3, space=SPACE, pruner="none")  # done: nothing reruns
    assert again["ran_now"] == 0 and again["best_value"] == out["best_value"]
    assert best_path.read_bytes() == written  # nor is best.json rewritten with this call's wall time
    more = tune_mod.tune(paths, BASE, 4, space=SPACE, pruner="none")  # the total grows by one distinct setting
    assert more["done"] == 4 and more["ran_now"] == 1 + more["duplicates"]  # a repeat costs a proposal, not a trial
    assert [t.value for t in study_of(paths).get_trials()][:3] == [t.value for t in trials]


def test_pruned_trial_leaves_a_finished_run_at_its_best_epoch(tmp_path):
    paths = tiny_paths(tmp_path)
    out = tune_mod.tune(paths, BASE, 3, space=SPACE, pruner=PruneAfterFirstTrial())
    states = [t.state for t in study_of(paths).get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    assert out["complete"] == 1 and out["pruned"] == 2 and out["best_trial"] == 0
    for number in (1, 2):
        run = f"tune-lightgcn-t{number:03d}"
        metrics = json.loads(paths.metrics(run).read_text())
        assert metrics["epochs_run"] == 1 and metrics["best_epoch"] == 0 and metrics["stopped_by_hand"] is True
        assert load_checkpoint(paths.run(run) / "checkpoint.pt")["epoch"] == 1
        assert paths.item_vectors(run).exists()
    assert {r["run_id"]: r["status"] for r in list_runs(paths)}["tune-lightgcn-t001"] == "stopped"


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def tune_lines():
    """The study's progress lines, read at the logger itself (the CLI's 'anchorrec' logger does
    not propagate to the root, where caplog listens)."""
    logger, handler = logging.getLogger("anchorrec.progress"), Lines()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lambda: handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_a_study_says_what_each_trial_does(tmp_path, tune_lines):
    paths = tiny_paths(tmp_path)
    tune_mod.tune(paths, BASE, 2, space=SPACE, pruner=PruneAfterFirstTrial())
    lines = tune_lines()
    value = study_of(paths).trials[0].value
    assert lines[0].startswith("tune lightgcn trial 0 (tune-lightgcn-t000): 1/3 epochs, valid recall@20 ")
    done = [line for line in lines if "trial 0" in line and "done" in line]
    assert len(done) == 1 and done[0].endswith(
        f"valid recall@20 {value:.4f} (best_epoch {study_of(paths).trials[0].user_attrs['best_epoch']})"
    )
    assert any(line.startswith("tune lightgcn trial 1 (tune-lightgcn-t001): pruned (epoch 0:") for line in lines)


def test_trial_progress_is_a_line_a_minute_with_the_best_so_far(tune_lines, monkeypatch):
    clock = iter([0.0, 10.0, 61.0])
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: next(clock))
    progress = progress_mod.EpochProgress("tune alignrec trial 4 (tune-alignrec-t004)", 100, "recall@20")
    progress.replay([{"epoch": 0, "valid": {"recall@20": 0.06}}])  # a continued run: epoch 0 was done before
    for epoch, value in enumerate((0.05, 0.07, 0.06), start=1):
        progress(epoch, {"train_s": 40.0, "eval_s": 9.4, "valid": {"recall@20": value}})
    assert tune_lines() == [
        "tune alignrec trial 4 (tune-alignrec-t004): 2/100 epochs, valid recall@20 0.0500, best 0.0600 (best_epoch 0) (49 s/epoch)",
        "tune alignrec trial 4 (tune-alignrec-t004): 4/100 epochs, valid recall@20 0.0600, best 0.0700 (best_epoch 2) (49 s/epoch)",
    ]


# ------------------------------------------------------------------ resume after a kill

KILLER = """
import os, signal, sys
from models.training import progress as progress_mod
from models.training import tune as tune_mod
from models.training.trainer import TrainConfig
from store.layout import dataset_paths
import test_tune

real_fit = tune_mod.fit
def fit(data, graph, cfg, run_dir, progress=True, callback=None):
    def cb(epoch, record):
        callback(epoch, record)
        if cfg.run_id.endswith("-t001") and epoch == 1:  # trial 1, after its second checkpoint
            os.kill(os.getpid(), signal.SIGKILL)
    return real_fit(data, graph, cfg, run_dir, progress=progress, callback=cb)
tune_mod.fit = fit
tune_mod.tune(dataset_paths("tiny", sys.argv[1]), test_tune.BASE, 3, space=test_tune.SPACE, pruner="none")
"""


def test_study_killed_mid_trial_resumes_and_reaches_the_total(tmp_path):
    paths = tiny_paths(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLER), str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    before = study_of(paths).get_trials()
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING]
    done_metrics = paths.metrics("tune-lightgcn-t000")
    stamp = done_metrics.stat().st_mtime_ns
    assert load_checkpoint(paths.run("tune-lightgcn-t001") / "checkpoint.pt")["epoch"] == 2

    out = tune_mod.tune(paths, BASE, 3, space=SPACE, pruner="none")
    after = study_of(paths).get_trials()
    assert after[0].value == before[0].value and done_metrics.stat().st_mtime_ns == stamp  # not rerun
    assert after[1].state == TrialState.FAIL  # the dead trial: marked failed, its params re-enqueued …
    revived = [t for t in after if t.user_attrs.get("resumes_run") == "tune-lightgcn-t001"]
    assert len(revived) == 1 and revived[0].state == TrialState.COMPLETE and revived[0].params == before[1].params
    metrics = json.loads(paths.metrics("tune-lightgcn-t001").read_text())
    assert metrics["resumed_from_epoch"] == 2 and revived[0].value == metrics["valid"]["recall@20"]  # … and continued
    assert out["done"] == 3 and out["complete"] == 3 and out["failed"] == 0 and out["rerun_after_crash"] == 1
    assert (
        out["revived"] == [1] and len(after) == 4 + out["duplicates"]
    )  # repeats proposed after the restart cost no trial


def test_interrupted_trial_is_continued_too(tmp_path, monkeypatch):
    """Ctrl-C inside Python: Optuna marks the trial FAIL; the next tune continues it like a dead one."""
    paths = tiny_paths(tmp_path)
    real_fit = tune_mod.fit

    def fit(data, graph, cfg, run_dir, progress=True, callback=None):
        def cb(epoch, record):
            callback(epoch, record)
            if cfg.run_id.endswith("-t000") and epoch == 0:
                raise KeyboardInterrupt

        return real_fit(data, graph, cfg, run_dir, progress=progress, callback=cb)

    monkeypatch.setattr(tune_mod, "fit", fit)
    with pytest.raises(KeyboardInterrupt):
        tune_mod.tune(paths, BASE, 2, space=SPACE, pruner="none")
    monkeypatch.setattr(tune_mod, "fit", real_fit)
    out = tune_mod.tune(paths, BASE, 2, space=SPACE, pruner="none")
    assert out["done"] == 2 and out["complete"] == 2 and out["revived"] == [0]
    assert json.loads(paths.metrics("tune-lightgcn-t000").read_text())["resumed_from_epoch"] == 1


# ------------------------------------------------------------------ validation only


def with_other_test_items(data, seed: int = 1):
    """The same train and valid interactions; every test item replaced by another unseen item."""
    rng = np.random.default_rng(seed)
    seen = (data.train_csr + data.valid_csr + data.test_csr).tolil()
    test = data.test_csr.tocoo()
    new = []
    for u in test.row:
        free = np.setdiff1d(np.arange(data.n_items), seen.rows[u])
        new.append((u, rng.choice(free)))
    valid = data.valid_csr.tocoo()
    return interactions_from_arrays(
        data.n_users, data.n_items, data.train, np.stack([valid.row, valid.col], 1), np.array(new, dtype=np.int64)
    )


def test_changing_test_labels_cannot_change_the_choice(tmp_path):
    data = planted(n_users=40, n_items=30, n_groups=2, per_user=8)
    other = with_other_test_items(data)
    assert (other.test_csr != data.test_csr).nnz > 0 and (other.valid_csr != data.valid_csr).nnz == 0
    a = tune_mod.tune(tiny_paths(tmp_path / "a", data), BASE, 3, space=SPACE, pruner="none", seed=3)
    b = tune_mod.tune(tiny_paths(tmp_path / "b", other), BASE, 3, space=SPACE, pruner="none", seed=3)
    assert a["best_params"] == b["best_params"] and a["best_value"] == b["best_value"]
    ta = study_of(_paths(tmp_path / "a")).get_trials()
    tb = study_of(_paths(tmp_path / "b")).get_trials()
    assert [(t.params, t.value) for t in ta] == [(t.params, t.value) for t in tb]
    assert a["best_test"] != b["best_test"]  # the test split did change what was measured on it


def _paths(home: Path):
    from store.layout import dataset_paths

    return dataset_paths("tiny", home)


# ------------------------------------------------------------------ grids and errors


@pytest.mark.parametrize("model", sorted(set(MODELS) - {"pop", "content_knn"}))  # fixed baselines: no grid
def test_every_model_has_a_valid_grid(model):
    space = tune_mod.search_space(model)
    assert "lr" in space and len(space) >= 2
    for i in range(max(len(v) for v in space.values())):  # every value builds a valid config
        make_config(model, **{k: v[i % len(v)] for k, v in space.items() if k != "lr"})
        TrainConfig(model=model, lr=space["lr"][i % len(space["lr"])])


def test_user_errors_are_one_line_with_the_fix(tmp_path, monkeypatch):
    paths = tiny_paths(tmp_path)
    with pytest.raises(ValueError, match="unknown model 'nope'.*--model"):
        tune_mod.search_space("nope")
    with pytest.raises(ValueError, match="trials must be ≥ 1.*--trials"):
        tune_mod.tune(paths, BASE, 0)
    with pytest.raises(ValueError, match="pruner must be one of median, halving, none"):
        tune_mod.tune(paths, BASE, 1, pruner="sometimes")
    with pytest.raises(ValueError, match="'dimension' is neither 'lr' nor a field"):
        tune_mod.tune(paths, BASE, 1, space={"dimension": (8,)})
    import models.lightgcn

    monkeypatch.delattr(models.lightgcn, "SEARCH_SPACE")
    with pytest.raises(ValueError, match="no SEARCH_SPACE in models.lightgcn; add the grid beside its config"):
        tune_mod.tune(paths, BASE, 1)


def test_a_study_keeps_its_budget_and_one_process(tmp_path):
    paths = tiny_paths(tmp_path)
    tune_mod.tune(paths, BASE, 1, space=SPACE, pruner="none")
    import dataclasses

    with pytest.raises(ValueError, match=r"other settings \(epochs=3\).*delete .*tuning/lightgcn"):
        tune_mod.tune(paths, dataclasses.replace(BASE, epochs=5), 2, space=SPACE)
    with tune_mod.study_lock(tune_mod.study_dir(paths, "lightgcn")):
        # flock is per open file: a second open in this process stands in for a second process
        with pytest.raises(ValueError, match="another process is running this study"):
            tune_mod.tune(paths, BASE, 2, space=SPACE)


def test_cli_tune_has_its_options_with_help_and_checks_them():
    import typer

    import cli
    import pipeline_config

    assert pipeline_config.PRUNERS == tune_mod.PRUNERS
    command = typer.main.get_command(cli.app).commands["tune"]
    options = {p.name: p for p in command.params}
    assert {"dataset", "model", "trials", "jobs", "pruner", "epochs", "patience"} <= set(options)
    assert "release" not in options and all((p.help or "").strip() for p in options.values())
    with pytest.raises(ValueError, match="--trials must be ≥ 1, got 0"):
        pipeline_config.PipelineConfig(trials=0)
    with pytest.raises(ValueError, match="--jobs must be ≥ 1"):
        pipeline_config.PipelineConfig(jobs=0)


def test_a_repeated_setting_is_not_trained_again_nor_counted(tmp_path):
    """Equal search, not equal proposals: a repeat takes the earlier run and does not use the budget."""
    paths = tiny_paths(tmp_path)
    space = {"lr": (1e-2, 5e-3), "n_layers": (1,), "reg_weight": (1e-4,)}
    tune_mod.tune(paths, BASE, 1, space=space, pruner="none")
    first = study_of(paths).get_trials()[0]
    study_of(paths).enqueue_trial(first.params)  # the next proposal repeats trial 0
    out = tune_mod.tune(paths, BASE, 2, space=space, pruner="none")
    trials = study_of(paths).get_trials()
    repeat = trials[1]
    assert repeat.user_attrs["duplicate_of"] == 0 and repeat.value == first.value
    assert repeat.user_attrs["run_id"] == "tune-lightgcn-t000" and not paths.run("tune-lightgcn-t001").exists()
    own = [t for t in trials if "duplicate_of" not in t.user_attrs]
    assert len(own) == 2 and {t.params["lr"] for t in own} == {1e-2, 5e-3}  # both settings trained
    assert out["done"] == 2 and out["complete"] == 2 and out["duplicates"] == len(trials) - 2 >= 1
    assert out["epochs_trained"] == sum(
        json.loads(paths.metrics(t.user_attrs["run_id"]).read_text())["epochs_run"] for t in own
    )
    assert "2 of 2 distinct settings" in out["line"]


def test_a_budget_beyond_the_grid_stops_at_the_grid(tmp_path):
    paths = tiny_paths(tmp_path)
    space = {"lr": (1e-2, 5e-3), "n_layers": (1,), "reg_weight": (1e-4,)}
    out = tune_mod.tune(paths, BASE, 5, space=space, pruner="none")
    own = [t for t in study_of(paths).get_trials() if "duplicate_of" not in t.user_attrs]
    assert out["grid_size"] == 2 and out["done"] == 2 and len({t.params["lr"] for t in own}) == 2


def test_a_diverging_trial_is_counted_and_reported_not_fatal(tmp_path, monkeypatch):
    paths = tiny_paths(tmp_path)
    real_fit = tune_mod.fit

    def fit(data, graph, cfg, run_dir, progress=True, callback=None):
        if cfg.run_id.endswith("-t001"):
            raise FloatingPointError(f"{cfg.run_id}: loss is nan at epoch 0; lower lr or check features")
        return real_fit(data, graph, cfg, run_dir, progress=progress, callback=callback)

    monkeypatch.setattr(tune_mod, "fit", fit)
    out = tune_mod.tune(paths, BASE, 3, space=SPACE, pruner="none")
    assert out["done"] == 3 and out["complete"] == 2 and out["failed"] == 1
    assert out["failures"][0]["trial"] == 1 and "loss is nan" in out["failures"][0]["error"]
    assert tune_mod.tune(paths, BASE, 3, space=SPACE)["ran_now"] == 0  # a failed trial used its share of the budget


def test_threads_never_take_the_same_continued_trial(tmp_path):
    """Continued trials are enqueued (WAITING); on SQLite two threads could both take one of them
    and train one run twice into one checkpoint while the other waited (seen with --jobs 2)."""
    import threading

    for rep in range(5):
        directory = tmp_path / f"study{rep}"
        directory.mkdir()
        study = tune_mod.open_study(directory, "lightgcn", BASE, 0, tune_mod.make_pruner("none", 3))
        for lr in (5e-2, 2e-2, 1e-2, 5e-3):
            study.enqueue_trial({"lr": lr})
        taken, start = [], threading.Barrier(4)

        def take():
            start.wait()
            taken.append(study.ask().number)

        workers = [threading.Thread(target=take) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert sorted(taken) == [0, 1, 2, 3]
