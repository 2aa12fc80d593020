"""Trainer: sampling, selection on validation only, resume = uninterrupted, outputs on disk."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pyarrow as pa
import pytest
import torch
from models_fixtures import planted

from models import registry
from models.training import trainer as trainer_mod
from models.training.data import build_graph_data, load_interactions, load_modalities
from models.training.trainer import (
    BPRSampler,
    TrainConfig,
    fit,
    fit_runs,
    resume_run,
    start_from_shorter_run,
    stop_run,
    summarize_seeds,
    train,
    train_seeds,
)
from store import StoreError, schemas
from store.layout import dataset_paths
from store.tables import write_table
from store.vectors import read_vectors, write_features

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------ a scripted model for selection


@dataclasses.dataclass
class ScriptedConfig:
    schedule: str = "rrvrtrrrrrrr"  # per epoch: r random, v ranks VALID items first, t TEST items first
    nan_from_batch: int = 10**9  # the loss is NaN from this batch on (one batch per epoch here)


class Scripted(torch.nn.Module):
    """Embeddings chosen per epoch by a script, so the right epoch to keep is known in advance."""

    def __init__(self, graph, cfg: ScriptedConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))
        self.valid = torch.as_tensor(graph_split["valid"].toarray())
        self.test = torch.as_tensor(graph_split["test"].toarray())
        self.noise = torch.as_tensor(np.random.default_rng(0).random(self.valid.shape), dtype=torch.float32)

    def batch_loss(self, users, pos, neg):
        self.batches = getattr(self, "batches", 0) + 1
        loss = (self.w * 0).sum() + (1.0 if self.batches < self.cfg.nan_from_batch else float("nan"))
        return {"loss": loss, "const": loss}

    def on_epoch_end(self, epoch: int) -> None:
        self.epoch.fill_(epoch)

    def final_embeddings(self):
        kind = self.cfg.schedule[int(self.epoch)]
        scores = self.noise + {"r": 0, "v": 10 * self.valid, "t": 10 * self.test}[kind]
        return scores, torch.eye(scores.shape[1])


graph_split: dict = {}


@pytest.fixture()
def scripted(monkeypatch):
    monkeypatch.setitem(registry.MODELS, "scripted", (__name__, "Scripted", "ScriptedConfig"))
    data = planted(n_users=60, n_items=40, n_groups=2, per_user=8)
    graph_split.update(valid=data.valid_csr, test=data.test_csr)
    return data


def test_selection_uses_validation_only_and_stops_on_patience(scripted, tmp_path):
    data = scripted
    graph = build_graph_data(data, {}, device="cpu")
    cfg = TrainConfig(model="scripted", epochs=12, patience=3, run_id="sel")
    m = fit(data, graph, cfg, tmp_path / "sel", progress=False)
    assert m["best_epoch"] == 2  # the 'v' epoch, not the 't' epoch 4 whose test recall is higher
    assert m["valid"]["recall@20"] == 1.0
    assert m["epochs_run"] == 6  # epochs 3, 4, 5 without improvement → stop after epoch 5
    test_recalls = [h["valid"]["recall@20"] for h in m["history"]]
    assert max(test_recalls) == m["valid"]["recall@20"]
    # the reported test metrics are those of epoch 2's embeddings, not the best test epoch's
    assert m["test"]["recall@20"] < 1.0


def test_diverged_run_stops_and_tests_its_best_epoch_so_far(scripted, tmp_path):
    """As MMRec's trainer: a NaN loss ends the run at its best validation epoch, and says where."""
    data = scripted
    graph = build_graph_data(data, {}, device="cpu")
    cfg = TrainConfig(model="scripted", epochs=12, patience=8, run_id="nan", model_args={"nan_from_batch": 6})
    m = fit(data, graph, cfg, tmp_path / "nan", progress=False)
    assert m["diverged_at_epoch"] == 5 and m["epochs_run"] == 5
    assert m["best_epoch"] == 2 and m["valid"]["recall@20"] == 1.0
    again = fit(data, graph, cfg, tmp_path / "nan", progress=False)  # finished: nothing is trained again
    assert again["diverged_at_epoch"] == 5 and again["test"] == m["test"]
    assert (
        fit(data, graph, dataclasses.replace(cfg, model_args={}), tmp_path / "ok", progress=False)["diverged_at_epoch"]
        is None
    )
    with pytest.raises(FloatingPointError, match="loss is nan at epoch 0; lower lr"):
        fit(data, graph, dataclasses.replace(cfg, model_args={"nan_from_batch": 1}), tmp_path / "nan0", progress=False)


def test_stopped_run_tests_the_best_epoch_so_far_and_says_so(scripted, tmp_path):
    """stop_run after a crash at epoch 4: no more training, best epoch by validation, flagged."""
    data = scripted
    graph = build_graph_data(data, {}, device="cpu")
    cfg = TrainConfig(model="scripted", epochs=12, patience=8, run_id="stop")
    kill_after(data, graph, cfg, tmp_path / "stop", epoch=4)
    assert stop_run(tmp_path / "stop") == 5
    m = fit(data, graph, cfg, tmp_path / "stop", progress=False)
    assert m["epochs_run"] == 5 and m["best_epoch"] == 2 and m["valid"]["recall@20"] == 1.0
    assert m["stopped_by_hand"] is True
    assert fit(data, graph, cfg, tmp_path / "full", progress=False)["stopped_by_hand"] is False
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        stop_run(tmp_path / "never-started")


def test_sampler_covers_each_pair_once_and_negatives_are_negative():
    data = planted(n_users=50, n_items=30, n_groups=2, per_user=10)
    s = BPRSampler(data)
    t = s.epoch(seed=0, epoch=0)
    assert len(t) == len(data.train)
    got = np.sort(t[:, 0] * data.n_items + t[:, 1])
    np.testing.assert_array_equal(got, np.sort(data.train[:, 0] * data.n_items + data.train[:, 1]))
    train = data.train_csr.toarray()
    assert not train[t[:, 0], t[:, 2]].any()  # no negative is a training positive
    np.testing.assert_array_equal(t, s.epoch(seed=0, epoch=0))  # deterministic
    assert not np.array_equal(t, s.epoch(seed=0, epoch=1))


def small_lightgcn_run():
    data = planted(n_users=80, n_items=50, n_groups=4, per_user=8)
    graph = build_graph_data(data, {}, device="cpu")
    cfg = TrainConfig(model="lightgcn", model_args={"dim": 16}, epochs=6, batch_size=128, patience=10, lr=5e-3)
    return data, graph, cfg


def kill_after(data, graph, cfg, run_dir, epoch: int) -> None:
    """Train `run_dir` until the end of `epoch`, then die as a killed process would."""

    def crash(e, record):
        if e == epoch:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        fit(data, graph, cfg, run_dir, progress=False, callback=crash)


def assert_same_run(got: dict, want: dict, got_dir, want_dir) -> None:
    assert [h["loss"] for h in got["history"]] == [h["loss"] for h in want["history"]]
    assert got["test"] == want["test"] and got["best_epoch"] == want["best_epoch"]
    _, a, _ = read_vectors(want_dir / "item_vectors.parquet", "item_id")
    _, b, _ = read_vectors(got_dir / "item_vectors.parquet", "item_id")
    np.testing.assert_array_equal(a, b)


def test_resume_after_crash_equals_uninterrupted_run(tmp_path):
    data, graph, cfg = small_lightgcn_run()
    full = fit(data, graph, cfg, tmp_path / "full", progress=False)
    kill_after(data, graph, cfg, tmp_path / "resumed", epoch=2)
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["epoch"] == 3
    resumed = fit(data, graph, cfg, tmp_path / "resumed", progress=False)
    assert_same_run(resumed, full, tmp_path / "resumed", tmp_path / "full")
    # a finished run reruns as a no-op with the same result
    again = fit(data, graph, cfg, tmp_path / "resumed", progress=False)
    assert again["test"] == full["test"]
    with pytest.raises(ValueError, match="lr"):
        fit(data, graph, dataclasses.replace(cfg, lr=1e-2), tmp_path / "resumed", progress=False)


def test_run_stopped_for_time_then_resumed_equals_uninterrupted_run(tmp_path):
    """stop_run (a session ends), resume_run (the next one): same history, test and vectors."""
    data, graph, cfg = small_lightgcn_run()
    full = fit(data, graph, cfg, tmp_path / "full", progress=False)
    kill_after(data, graph, cfg, tmp_path / "r", epoch=1)
    stop_run(tmp_path / "r")
    stopped = fit(data, graph, cfg, tmp_path / "r", progress=False)
    assert stopped["epochs_run"] == 2 and stopped["stopped_by_hand"] is True
    assert resume_run(tmp_path / "r") == 2
    assert not (tmp_path / "r" / "metrics.json").exists()  # the stopped result is no longer the run's
    resumed = fit(data, graph, cfg, tmp_path / "r", progress=False)
    assert resumed["stopped_by_hand"] is False and resumed["epochs_run"] == full["epochs_run"] == 6
    assert_same_run(resumed, full, tmp_path / "r", tmp_path / "full")
    assert resume_run(tmp_path / "full") is None  # ended at its cap: left as it is
    assert (tmp_path / "full" / "metrics.json").exists()
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        resume_run(tmp_path / "never-started")


def test_longer_run_started_from_a_shorter_one_equals_the_longer_run(tmp_path):
    """A higher epoch cap continues the capped run's checkpoint: only the new epochs are trained."""
    data, graph, cfg = small_lightgcn_run()
    short, long_ = dataclasses.replace(cfg, epochs=3, run_id="short"), dataclasses.replace(cfg, epochs=6, run_id="long")
    full = fit(data, graph, long_, tmp_path / "full", progress=False)
    fit(data, graph, short, tmp_path / "short", progress=False)
    assert start_from_shorter_run(tmp_path / "short", tmp_path / "long", long_) == 3
    longer = fit(data, graph, long_, tmp_path / "long", progress=False)
    assert longer["resumed_from_epoch"] == 3 and longer["epochs_run"] == full["epochs_run"] == 6
    assert_same_run(longer, full, tmp_path / "long", tmp_path / "full")
    assert start_from_shorter_run(tmp_path / "short", tmp_path / "long", long_) is None  # has its own checkpoint
    assert start_from_shorter_run(tmp_path / "never", tmp_path / "x", long_) is None
    with pytest.raises(ValueError, match="fields \\['lr'\\]"):
        start_from_shorter_run(tmp_path / "short", tmp_path / "y", dataclasses.replace(long_, lr=1e-2))
    with pytest.raises(ValueError, match="fields \\['epochs'\\]"):
        start_from_shorter_run(tmp_path / "long", tmp_path / "z", short)
    odd = dataclasses.replace(short, eval_every=2, run_id="odd")  # its last validation (epoch 2) is off the grid
    fit(data, graph, odd, tmp_path / "odd", progress=False)
    with pytest.raises(ValueError, match="cap 3 is not a multiple of eval_every 2"):
        start_from_shorter_run(tmp_path / "odd", tmp_path / "w", dataclasses.replace(long_, eval_every=2))


def test_shorter_run_ended_by_early_stopping_is_taken_as_ended(scripted, tmp_path):
    """Early stopping ended it before its cap: the longer run would have ended there too."""
    data = scripted
    graph = build_graph_data(data, {}, device="cpu")
    cfg = TrainConfig(model="scripted", epochs=12, patience=3, run_id="a")
    short = fit(data, graph, cfg, tmp_path / "a", progress=False)
    longer_cfg = dataclasses.replace(cfg, epochs=30, run_id="b")
    assert start_from_shorter_run(tmp_path / "a", tmp_path / "b", longer_cfg) == 6
    longer = fit(data, graph, longer_cfg, tmp_path / "b", progress=False)
    assert longer["epochs_run"] == short["epochs_run"] == 6 and longer["best_epoch"] == 2
    assert longer["test"] == short["test"]


def write_tiny_dataset(home, data, with_feature: bool = True):
    paths = dataset_paths("tiny", home)
    asins = [f"A{i:04d}" for i in range(data.n_items)]
    n = data.n_items
    write_table(
        pa.table(
            {
                "item_id": pa.array(np.arange(n, dtype=np.int32)),
                "asin": asins,
                "title": pa.nulls(n, pa.string()),
                "description": pa.nulls(n, pa.string()),
                "brand": pa.nulls(n, pa.string()),
                "categories": pa.array([[]] * n, pa.list_(pa.string())),
                "image_url": pa.nulls(n, pa.string()),
                "text": pa.nulls(n, pa.string()),
            }
        ),
        paths.items,
        schemas.ITEMS,
    )
    rows = []
    for split in schemas.SPLITS:
        coo = data.split(split).tocoo()
        rows += [(u, i, split) for u, i in zip(coo.row.tolist(), coo.col.tolist())]
    write_table(
        pa.table(
            {
                "user_id": pa.array([r[0] for r in rows], pa.int32()),
                "item_id": pa.array([r[1] for r in rows], pa.int32()),
                "rating": pa.nulls(len(rows), pa.float32()),
                "timestamp": pa.array(np.zeros(len(rows), np.int64)),
                "split": [r[2] for r in rows],
            }
        ),
        paths.interactions,
        schemas.INTERACTIONS,
    )
    if with_feature:
        vec = np.random.default_rng(0).standard_normal((n, 6)).astype(np.float32)
        valid = np.ones(n, bool)
        valid[[1, 5]] = False  # two items without this modality
        write_features(
            paths.feature("text-tiny"),
            asins[::-1],
            np.arange(n)[::-1],
            vec[::-1],
            encoder="test",
            model="random",
            weights="none",
            modality="text",
            input_hash="x",
            valid=valid[::-1],
        )
    return paths, vec if with_feature else None, valid if with_feature else None


def test_train_from_store_writes_outputs(home):
    data = planted(n_users=40, n_items=30, n_groups=2, per_user=8)
    paths, vec, valid = write_tiny_dataset(home, data)

    loaded = load_interactions(paths)
    assert (loaded.train_csr != data.train_csr).nnz == 0 and (loaded.test_csr != data.test_csr).nnz == 0
    feats = load_modalities(paths, {"t": "text-tiny"})
    np.testing.assert_allclose(feats["t"][valid], vec[valid])  # aligned by asin despite the reversed table
    np.testing.assert_allclose(feats["t"][1], vec[valid].mean(0), rtol=1e-5)  # missing → mean

    cfg = TrainConfig(
        model="lightgcn",
        model_args={"dim": 8},
        features={"t": "text-tiny"},
        epochs=3,
        batch_size=64,
        run_id="lgcn-test",
        knn_k=4,
    )
    m = train(paths, cfg, progress=False)
    run = paths.run("lgcn-test")
    for name in ("config.json", "metrics.json", "checkpoint.pt", "user_vectors.parquet", "item_vectors.parquet"):
        assert (run / name).exists(), name
    uid, u, _ = read_vectors(run / "user_vectors.parquet", "user_id")
    iid, i, meta = read_vectors(run / "item_vectors.parquet", "item_id")
    assert u.shape == (40, 8) and i.shape == (30, 8) and meta["run_id"] == "lgcn-test"
    np.testing.assert_array_equal(iid, np.arange(30))
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["test"] == m["test"] and set(m["test"]) >= {"recall@20", "ndcg@20", "precision@10", "map@50"}
    assert len(on_disk["history"]) == 3 and on_disk["timings"]["train_s_per_epoch"] > 0
    assert json.loads((run / "config.json").read_text())["features"] == {}  # LightGCN reads no feature table
    assert not list(paths.cache_dir.glob("knn-*.npz"))  # so none was loaded and no kNN graph built

    summary = train_seeds(paths, dataclasses.replace(cfg, run_id="multi", epochs=2), seeds=[0, 1], progress=False)
    assert summary["runs"] == ["multi-s0", "multi-s1"] and summary["n"] == 2
    r = [json.loads(paths.metrics(x).read_text())["test"]["recall@20"] for x in summary["runs"]]
    assert summary["test_mean"]["recall@20"] == pytest.approx(np.mean(r))
    assert summary["test_std"]["recall@20"] == pytest.approx(np.std(r, ddof=1))
    assert (paths.runs_dir / "multi-seeds.json").exists()


def test_seeds_in_worker_processes_give_the_runs_of_one_process(tmp_path):
    """BM3 draws dropout masks from torch's global generator every batch: threads would share it,
    worker processes keep each seed's stream its own, so --jobs cannot change a run."""
    paths, _, _ = write_tiny_dataset(tmp_path, planted(n_users=40, n_items=30, n_groups=2, per_user=8))
    cfg = TrainConfig(
        model="bm3",
        model_args={"embedding_dim": 8},
        features={"t": "text-tiny", "v": "text-tiny"},
        epochs=2,
        batch_size=64,
        knn_k=4,
    )
    one = train_seeds(paths, dataclasses.replace(cfg, run_id="one"), seeds=[0, 1, 2], progress=False)
    two = train_seeds(paths, dataclasses.replace(cfg, run_id="two"), seeds=[0, 1, 2], progress=False, jobs=2)
    assert two["runs"] == ["two-s0", "two-s1", "two-s2"]
    for a, b in zip(one["runs"], two["runs"]):
        ma, mb = (json.loads(paths.metrics(r).read_text()) for r in (a, b))
        assert [h["loss"] for h in ma["history"]] == [h["loss"] for h in mb["history"]]
        assert ma["test"] == mb["test"] and ma["seed"] == mb["seed"]
        _, va, _ = read_vectors(paths.item_vectors(a), "item_id")
        _, vb, _ = read_vectors(paths.item_vectors(b), "item_id")
        np.testing.assert_array_equal(va, vb)
    assert len({json.dumps(json.loads(paths.metrics(r).read_text())["history"][0]["loss"]) for r in two["runs"]}) == 3
    assert two["test_mean"] == one["test_mean"]
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        train_seeds(paths, cfg, seeds=[0], jobs=0)
    # a run that fails in a worker fails the call, with its own error
    bad = dataclasses.replace(cfg, features={"t": "no-such-table", "v": "text-tiny"}, run_id="bad")
    with pytest.raises(StoreError, match="no-such-table.parquet: does not exist"):
        fit_runs(paths, [dataclasses.replace(cfg, run_id="ok", epochs=1), bad], progress=False, jobs=2)


def test_one_process_prepares_again_only_when_a_config_reads_other_data(tmp_path, monkeypatch):
    """Ablation rows of one model read other tables or graphs: each must get its own."""
    paths, _, _ = write_tiny_dataset(tmp_path, planted(n_users=40, n_items=30, n_groups=2, per_user=8))
    cfg = TrainConfig(
        model="bm3",
        model_args={"embedding_dim": 8},
        features={"t": "text-tiny", "v": "text-tiny"},
        epochs=1,
        batch_size=64,
        knn_k=4,
    )
    prepared, real = [], trainer_mod.prepare
    monkeypatch.setattr(trainer_mod, "prepare", lambda p, c: prepared.append(c.knn_k) or real(p, c))
    runs = [
        dataclasses.replace(cfg, run_id="a-s0"),
        dataclasses.replace(cfg, run_id="a-s1", seed=1),
        dataclasses.replace(cfg, run_id="b-s0", knn_k=3),
        dataclasses.replace(cfg, run_id="c-s0"),
    ]
    fit_runs(paths, runs, progress=False)
    assert prepared == [4, 3, 4]  # the two seeds of a share one preparation; b and then c get their own


def test_config_validation():
    with pytest.raises(ValueError, match="model"):
        TrainConfig(model="nope")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="features"):
        TrainConfig(features={"image": "x"})
    with pytest.raises(ValueError, match="run"):
        TrainConfig(run_id="../escape")


def test_summarize_seeds_single_run_has_zero_std():
    s = summarize_seeds([{"run_id": "a", "valid": {"recall@20": 0.1}, "test": {"recall@20": 0.2}, "best_epoch": 3}])
    assert s["test_mean"]["recall@20"] == 0.2 and s["test_std"]["recall@20"] == 0.0


def test_missing_rows_are_filled_with_the_mean_and_reported_once_per_table(caplog):
    from models.training.data import fill_missing_rows

    vectors = np.array([[1.0, 0.0], [0.0, 0.0], [3.0, 2.0]], dtype=np.float32)
    valid = np.array([True, False, True])
    with caplog.at_level(logging.DEBUG, logger="models.training.data"):
        for _ in range(3):  # a leaderboard loads the same table for every run
            filled = fill_missing_rows("image-once-test", vectors, valid)
    assert filled[1].tolist() == [2.0, 1.0] and vectors[1].tolist() == [0.0, 0.0]
    levels = [r.levelno for r in caplog.records if "image-once-test: 1 of 3 items missing" in r.getMessage()]
    assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    with pytest.raises(ValueError, match="no item has a valid vector"):
        fill_missing_rows("image-once-test", vectors, np.zeros(3, bool))
