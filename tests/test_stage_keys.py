"""Stage cache keys hash the code a stage runs, not whole rooms; models keep only the tables they read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from models_fixtures import planted
from test_models_train import write_tiny_dataset

import stage_keys
from models.registry import MODELS, READS, model_module, read_features
from models.training import tune as tune_mod
from models.training.trainer import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def fake_project(tmp_path, monkeypatch):
    """A tiny project: models.a imports b and d (inside a function), .c (relatively) and e (in
    parentheses); f is imported by nobody."""
    pkg = tmp_path / "models"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(
        "from .c import X\nfrom models import (\n    e,  # a module, in parentheses\n)\n\n"
        "def f():\n    from models import b\n    import numpy as np, models.d as _  # noqa\n    return b\n"
    )
    (pkg / "b.py").write_text("Y = 1\n")
    (pkg / "c.py").write_text("X = 2\n")
    (pkg / "d.py").write_text("Z = 3\n")
    (pkg / "e.py").write_text("W = 0\n")
    (pkg / "f.py").write_text("V = 0\n")
    monkeypatch.setattr(stage_keys, "REPO", tmp_path)
    stage_keys.closure.cache_clear()
    stage_keys.code_version.cache_clear()
    yield pkg
    stage_keys.closure.cache_clear()
    stage_keys.code_version.cache_clear()


def version(entry: str) -> str:
    stage_keys.closure.cache_clear()
    stage_keys.code_version.cache_clear()
    return stage_keys.code_version(entry)


def test_closure_follows_function_level_and_relative_imports_only_into_the_project(fake_project):
    names = [p.name for p in stage_keys.closure("models.a")]
    assert names == ["__init__.py", "a.py", "b.py", "c.py", "d.py", "e.py"]  # not f.py, not numpy


def test_editing_an_imported_module_changes_the_key_and_an_unrelated_one_does_not(fake_project):
    before = version("models.a")
    (fake_project / "f.py").write_text("V = 4\n")
    assert version("models.a") == before
    (fake_project / "b.py").write_text("Y = 2\n")
    after_b = version("models.a")
    assert after_b != before
    (fake_project / "c.py").write_text("X = 5\n")
    assert version("models.a") != after_b


def test_an_entry_that_is_not_ours_is_an_error(fake_project):
    with pytest.raises(ValueError, match="'models.nothere' is not a module of this project"):
        stage_keys.closure("models.nothere")


def test_pretraining_key_ignores_the_recommender_trainer_and_other_models():
    files = {str(p.relative_to(REPO)) for p in stage_keys.closure("models.pretraining.pretrain")}
    assert {"models/pretraining/ica.py", "models/pretraining/inputs.py", "store/tables.py"} <= files
    assert "models/training/trainer.py" not in files and "models/lattice.py" not in files
    train = {str(p.relative_to(REPO)) for p in stage_keys.closure("models.training.trainer", model_module("lightgcn"))}
    assert {"models/training/trainer.py", "models/lightgcn.py", "models/evaluation/metrics.py"} <= train
    assert "models/anchorrec.py" not in train and "models/pretraining/pretrain.py" not in train


def test_every_model_declares_what_it_reads_and_the_config_keeps_only_that():
    assert set(READS) == set(MODELS)
    tables = {"v": "image-effnet", "t": "text-minilm", "mm": "ica-0123456789"}
    assert TrainConfig(model="lightgcn", features=tables).features == {}
    assert TrainConfig(model="alignrec", features=tables).features == {"mm": "ica-0123456789"}
    assert TrainConfig(model="anchorrec", features=tables).features == tables
    assert TrainConfig(model="freedom", features=tables).features == {"v": "image-effnet", "t": "text-minilm"}
    assert read_features("smore", {"t": "x"}) == {"t": "x"}


@pytest.mark.usefixtures("one_torch_thread")
def test_a_run_written_with_tables_its_model_never_read_still_resumes(tmp_path):
    paths, _, _ = write_tiny_dataset(
        tmp_path, planted(n_users=40, n_items=30, n_groups=2, per_user=8), with_feature=False
    )
    cfg = TrainConfig(model="lightgcn", model_args={"dim": 8}, epochs=2, patience=2, batch_size=64, run_id="old")
    first = train(paths, cfg, progress=False)
    config = paths.run("old") / "config.json"
    stored = json.loads(config.read_text())
    config.write_text(json.dumps({**stored, "features": {"mm": "ica-gone", "t": "text-minilm"}}))  # as before READS
    again = train(paths, cfg, progress=False)
    assert again["valid"] == first["valid"] and again["epochs_run"] == first["epochs_run"] == 2


@pytest.mark.usefixtures("one_torch_thread")
def test_a_study_stored_with_unread_tables_continues_and_a_read_table_change_is_refused(tmp_path):
    paths, _, _ = write_tiny_dataset(
        tmp_path, planted(n_users=40, n_items=30, n_groups=2, per_user=8), with_feature=False
    )
    base = TrainConfig(model="lightgcn", model_args={"dim": 8}, epochs=2, patience=2, batch_size=64)
    space = {"lr": (1e-2, 5e-3)}
    tune_mod.tune(paths, base, 1, space=space, pruner="none")
    study = tune_mod.open_study(
        tune_mod.study_dir(paths, "lightgcn"), "lightgcn", base, 0, tune_mod.make_pruner("none", 2)
    )
    budget = study.user_attrs["budget"]
    study.set_user_attr("budget", {**budget, "features": {"mm": "ica-old", "v": "image-effnet"}})
    out = tune_mod.tune(paths, base, 2, space=space, pruner="none")
    assert out["done"] == 2 and out["ran_now"] == 1 + out["duplicates"]  # one new setting (repeats cost no trial)
    study.set_user_attr("budget", {**budget, "epochs": 3})
    with pytest.raises(ValueError, match="other settings.*epochs=3"):
        tune_mod.tune(paths, base, 3, space=space, pruner="none")


def test_a_train_key_ignores_tables_its_model_never_reads(tmp_path, monkeypatch):
    import flows
    from pipeline_config import PipelineConfig

    keys = []
    monkeypatch.setattr(flows, "run_stage", lambda name, fn, key, *a, **k: keys.append((key, a[-2])) or {})
    cfg = {
        "lightgcn": PipelineConfig(dataset="tiny", home=str(tmp_path), model="lightgcn"),
        "alignrec": PipelineConfig(dataset="tiny", home=str(tmp_path), model="alignrec"),
    }
    for mm in ("ica-aaaaaaaaaa", "ica-bbbbbbbbbb"):
        for model in cfg:
            flows.stage_train(cfg[model], {"v": "image-effnet", "t": "text-minilm", "mm": mm})
    (lg_a, feats), (al_a, _), (lg_b, _), (al_b, _) = keys
    assert lg_a == lg_b and feats == {}  # LightGCN: same key, same run, and no table handed to training
    assert al_a != al_b  # AlignRec reads mm
