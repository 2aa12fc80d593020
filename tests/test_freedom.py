"""FREEDOM: parity with MMRec's class on a tiny fixed input, its two graphs, and learning."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from models_fixtures import planted

from models.freedom import FREEDOM, FREEDOMConfig
from models.training.data import build_graph_data
from models.training.trainer import TrainConfig, fit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks.*
from benchmarks.parity import tiny  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# printed by benchmarks/parity/mmrec_parity.py (MMRec's FREEDOM: knn_k 3, n_mm_layers 1,
# n_ui_layers 2, reg_weight 0.1, mm_image_weight 0.3): loss, and fingerprints (norm, probe sum)
# of each gradient and of the user × item score matrix. "pruned" trains on tiny.KEPT_EDGES.
MMREC = {
    "freedom_full": {
        "loss": 0.82393658,
        "scores": (0.77143912, 0.34102547),
        "grads": {
            "user_emb.weight": (0.050076497, -0.078046654),
            "item_emb.weight": (0.062475317, 0.070156599),
            "trs.t.weight": (0.018662798, 0.0032247883),
            "trs.t.bias": (2.6031257e-10, 4.2303965e-11),
            "trs.v.weight": (0.021850205, 0.037270717),
            "trs.v.bias": (3.5406338e-10, -6.675781e-12),
            "feat.t": (0.0049826482, 0.0028590024),
            "feat.v": (0.0043325908, -0.00071979776),
        },
    },
    "freedom_pruned": {
        "loss": 0.82096338,
        "scores": (0.77143912, 0.34102547),
        "grads": {
            "user_emb.weight": (0.072249854, -0.090865109),
            "item_emb.weight": (0.085577611, 0.12185429),
            "trs.t.weight": (0.022689843, 0.0030847276),
            "trs.t.bias": (3.2927225e-10, -7.4457473e-12),
            "trs.v.weight": (0.026465906, 0.05463658),
            "trs.v.bias": (6.6111194e-10, -2.1993422e-11),
            "feat.t": (0.0057850232, 0.0058103148),
            "feat.v": (0.0053555973, -0.0046353699),
        },
    },
    "freedom_same": {
        "loss": 0.81262225,
        "scores": (0.80578159, 0.41567765),
        "grads": {
            "user_emb.weight": (0.067642017, -0.095351502),
            "item_emb.weight": (0.094469325, 0.13124458),
            "trs.t.weight": (0.022689843, 0.0030847276),
            "trs.t.bias": (3.2927225e-10, -7.4457473e-12),
            "trs.v.weight": (0.023098181, 0.0087783941),
            "trs.v.bias": (4.0745363e-10, -3.7218291e-11),
            "feat.t": (0.0057850232, 0.0058103148),
            "feat.v": (0.0094964118, 0.0068161218),
        },
    },
}


def tiny_model(same: bool = False, dropout: float = 0.0) -> FREEDOM:
    cfg = FREEDOMConfig(
        embedding_dim=tiny.DIM, feat_embed_dim=tiny.DIM, reg_weight=0.1, mm_image_weight=0.3, dropout=dropout
    )
    return FREEDOM(tiny.graph(same), cfg)


def kept_edges(model: FREEDOM) -> None:
    model.use_edges(torch.as_tensor(tiny.TRAIN[tiny.KEPT_EDGES, 0]), torch.as_tensor(tiny.TRAIN[tiny.KEPT_EDGES, 1]))


def test_full_graph_loss_gradients_and_scores_equal_mmrec():
    tiny.compare(tiny_model(dropout=0.0), tiny.freedom_weights(), MMREC["freedom_full"])


def test_pruned_graph_equals_mmrec_given_the_same_sampled_edges():
    model = tiny_model(dropout=tiny.DROPOUT)
    kept_edges(model)
    tiny.compare(model, tiny.freedom_weights(), MMREC["freedom_pruned"])


def test_text_only_setup_t_equals_v_equals_mmrec():
    model = tiny_model(same=True, dropout=tiny.DROPOUT)
    kept_edges(model)
    tiny.compare(model, tiny.freedom_weights(tiny.T_DIM, tiny.T_DIM), MMREC["freedom_same"])


# printed by benchmarks/parity/mmrec_parity.py ("freedom_draws"): the (user, item) edges MMRec's own
# pre_epoch_processing keeps on the tiny input (dropout tiny.DROPOUT) after torch.manual_seed(seed)
MMREC_DRAWS = {
    0: [[0, 3], [2, 0], [2, 4], [3, 2], [3, 3], [3, 4], [3, 6], [4, 5], [4, 6]],
    1: [[0, 0], [0, 1], [0, 3], [1, 1], [1, 5], [3, 4], [4, 1], [4, 5], [4, 6]],
    2: [[0, 1], [0, 3], [1, 1], [1, 5], [2, 0], [2, 4], [3, 2], [3, 3], [4, 6]],
    3: [[0, 0], [0, 1], [1, 1], [2, 0], [2, 4], [2, 6], [3, 3], [4, 1], [4, 6]],
}


def test_the_sampler_draws_mmrecs_edges_from_the_same_random_stream(monkeypatch):
    """Not hand-picked edges: our degree-sensitive draw itself, seeded as MMRec's was, keeps its edges."""
    model = tiny_model(dropout=tiny.DROPOUT)
    drawn = []
    real = model.use_edges
    monkeypatch.setattr(
        model, "use_edges", lambda u, i: (drawn.append(sorted(zip(u.tolist(), i.tolist()))), real(u, i))
    )
    for seed, edges in MMREC_DRAWS.items():
        torch.manual_seed(seed)
        model.resample_edges()
        assert [list(e) for e in drawn[-1]] == edges, seed
    assert len({tuple(map(tuple, e)) for e in MMREC_DRAWS.values()}) == len(MMREC_DRAWS)  # four different draws


def test_item_graph_is_unweighted_knn_mixed_by_image_weight():
    g = tiny.graph()
    model = FREEDOM(g, FREEDOMConfig(embedding_dim=4, feat_embed_dim=4, mm_image_weight=0.3))
    dense = torch.zeros(tiny.N_ITEMS, tiny.N_ITEMS)
    for m, w in (("t", 0.7), ("v", 0.3)):
        rows, cols, _ = g.knn_edges[m]
        assert torch.equal(torch.bincount(rows, minlength=tiny.N_ITEMS), torch.full((tiny.N_ITEMS,), tiny.KNN_K))
        dense[rows, cols] += w / tiny.KNN_K  # every item has k neighbours: 1/sqrt(k·k)
    x = torch.randn(tiny.N_ITEMS, 2)
    torch.testing.assert_close(model.mm(x), dense @ x)
    assert model.mm.nnz <= 2 * tiny.N_ITEMS * tiny.KNN_K  # sparse: at most k per row per modality


def test_pruning_keeps_a_renormalized_share_of_training_edges_and_prefers_low_degree():
    data = planted(n_users=200, n_items=100, n_groups=4, per_user=10)
    f = np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32)
    g = build_graph_data(data, {"t": f}, knn_k=5, device="cpu")
    torch.manual_seed(0)
    model = FREEDOM(g, FREEDOMConfig(embedding_dim=8, feat_embed_dim=8, dropout=0.8))
    n_edges = data.train_csr.nnz
    r = model.train_r
    assert r.nnz == int(n_edges * (1 - 0.8))  # MMRec's count, float rounding included (319 of 1600)
    rows = torch.repeat_interleave(torch.arange(r.shape[0]), torch.diff(r.crow))
    assert np.asarray(data.train_csr[rows.numpy().copy(), r.col.numpy().copy()]).all()  # only training edges
    du = torch.bincount(rows, minlength=r.shape[0]).float()
    di = torch.bincount(r.col, minlength=r.shape[1]).float()
    torch.testing.assert_close(r.val, (du[rows] * di[r.col]).rsqrt(), rtol=1e-6, atol=0)
    first = set(zip(rows.tolist(), r.col.tolist()))
    model.on_epoch_end(0)
    r2 = model.train_r
    second = set(zip(torch.repeat_interleave(torch.arange(r2.shape[0]), torch.diff(r2.crow)).tolist(), r2.col.tolist()))
    assert first != second and len(second) == len(first)  # a fresh draw each epoch
    # degree-sensitive: over many draws, edges of popular items are kept less often
    item_pop = np.asarray(data.train_csr.sum(0)).ravel()
    counts = np.zeros(100)
    for _ in range(30):
        model.resample_edges()
        counts += np.bincount(model.train_r.col.numpy(), minlength=100)
    keep_rate = counts / (30 * item_pop)
    assert (
        keep_rate[item_pop <= np.quantile(item_pop, 0.25)].mean()
        > keep_rate[item_pop >= np.quantile(item_pop, 0.75)].mean()
    )


def test_scores_use_the_full_graph_whatever_was_sampled():
    model = tiny_model(dropout=tiny.DROPOUT)
    before = [x.clone() for x in model.final_embeddings()]
    kept_edges(model)
    for a, b in zip(before, model.final_embeddings()):
        torch.testing.assert_close(a, b)


def test_config_validation():
    with pytest.raises(ValueError, match="feat_embed_dim"):
        FREEDOMConfig(embedding_dim=64, feat_embed_dim=32)
    with pytest.raises(ValueError, match="dropout"):
        FREEDOMConfig(dropout=1.0)
    with pytest.raises(ValueError, match="mm_image_weight"):
        FREEDOMConfig(mm_image_weight=1.5)


def test_trains_through_the_trainer_and_learns_the_planted_preference(tmp_path):
    data = planted(n_users=120, n_items=60, n_groups=3, per_user=10)
    f = np.random.default_rng(1).standard_normal((60, 8)).astype(np.float32)
    graph = build_graph_data(data, {"t": f, "v": f}, knn_k=4, device="cpu")
    cfg = TrainConfig(
        model="freedom",
        model_args={"embedding_dim": 16, "feat_embed_dim": 16},
        epochs=30,
        batch_size=256,
        lr=0.01,
        patience=30,
    )
    m = fit(data, graph, cfg, tmp_path / "run", progress=False)
    losses = [h["loss"] for h in m["history"]]
    assert all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0]
    assert m["test"]["recall@20"] > 0.8  # random ranking: about 0.38
