"""BM3: parity with MMRec's class on a tiny fixed input, its target dropout, and learning."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from models_fixtures import planted

from models.blocks import row_dropout
from models.bm3 import BM3, BM3Config
from models.training.data import build_graph_data
from models.training.trainer import TrainConfig, fit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks.*
from benchmarks.parity import (
    bm3_parity,  # noqa: E402
    tiny,  # noqa: E402
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# printed by benchmarks/parity/bm3_parity.py (MMRec's BM3: cl_weight 2, dropout 0.5 as the fixed
# column mask bm3_parity.column_dropout; n_layers / reg_weight per case as in bm3_parity.CASES):
# loss, and fingerprints (norm, probe sum) of each gradient and of the user × item score matrix.
MMREC = {
    "bm3": {
        "loss": 9.4628735,
        "scores": (0.61753698, 0.23450729),
        "grads": {
            "user_emb.weight": (0.62821371, 0.23785887),
            "item_emb.weight": (0.53904358, -0.228199),
            "predictor.weight": (3.5771616, -1.8297107),
            "predictor.bias": (9.0995642, 0.80216412),
            "trs.t.weight": (1.5240769, 0.6851394),
            "trs.t.bias": (0.80584404, -0.10300294),
            "trs.v.weight": (2.4382121, 0.26964722),
            "trs.v.bias": (1.6272353, 0.5084867),
            "feat.t": (0.73699456, 0.20946517),
            "feat.v": (1.1706123, 1.1481887),
        },
    },
    "bm3_same": {
        "loss": 11.28203,
        "scores": (0.61753698, 0.23450729),
        "grads": {
            "user_emb.weight": (0.62821371, 0.23785887),
            "item_emb.weight": (0.53904358, -0.228199),
            "predictor.weight": (4.0333471, -0.88437526),
            "predictor.bias": (9.7461756, -0.49167115),
            "trs.t.weight": (1.5240769, 0.6851394),
            "trs.t.bias": (0.80584404, -0.10300294),
            "trs.v.weight": (4.8735394, 1.4403917),
            "trs.v.bias": (1.4794753, -0.72352874),
            "feat.t": (0.73699456, 0.20946517),
            "feat.v": (1.1794869, 0.98824013),
        },
    },
    "bm3_text_noreg": {
        "loss": 5.7430067,
        "scores": (0.81875844, 0.14560835),
        "grads": {
            "user_emb.weight": (0.33954188, -0.025702540),
            "item_emb.weight": (0.50981089, -0.23146801),
            "predictor.weight": (2.7646135, -0.74853391),
            "predictor.bias": (6.5026073, -0.57766039),
            "trs.t.weight": (1.5689872, 0.80362662),
            "trs.t.bias": (0.85722277, -0.12409772),
            "feat.t": (0.7207743, 0.26822017),
        },
    },
}


def text_only_graph():
    from models.training.data import interactions_from_arrays

    none = tiny.TRAIN[:0]
    data = interactions_from_arrays(tiny.N_USERS, tiny.N_ITEMS, tiny.TRAIN, none, none)
    return build_graph_data(data, {"t": tiny.features()["t"]}, knn_k=tiny.KNN_K, device="cpu")


@pytest.mark.parametrize("case", bm3_parity.CASES, ids=[c[0] for c in bm3_parity.CASES])
def test_loss_gradients_and_scores_equal_mmrec(case, monkeypatch):
    name, modalities, same, n_layers, reg_weight = case
    graph = tiny.graph(same) if "v" in modalities else text_only_graph()
    cfg = BM3Config(
        embedding_dim=tiny.DIM,
        n_layers=n_layers,
        reg_weight=reg_weight,
        cl_weight=bm3_parity.CL_WEIGHT,
        dropout=bm3_parity.DROPOUT,
    )
    model = BM3(graph, cfg)
    assert model.modalities == modalities
    monkeypatch.setattr(torch.nn.functional, "dropout", bm3_parity.column_dropout)  # MMRec's run had the same mask
    tiny.compare(model, bm3_parity.bm3_weights(modalities, same), MMREC[name])


def test_column_dropout_really_changes_the_loss(monkeypatch):
    """The parity cases would not see a target dropout applied to the wrong tensor if the mask did nothing."""
    cfg = BM3Config(embedding_dim=tiny.DIM, n_layers=2, reg_weight=0.1, dropout=0.0)
    model = BM3(tiny.graph(), cfg)  # the "bm3" case's weights, dropout off
    with torch.no_grad():
        for k, v in bm3_parity.bm3_weights().items():
            dict(model.named_parameters())[k].copy_(torch.as_tensor(v))
    batch = [torch.as_tensor(x) for x in (tiny.USERS, tiny.POS, tiny.NEG)]
    plain = float(model.batch_loss(*batch)["loss"].detach())
    assert abs(plain - MMREC["bm3"]["loss"]) > 0.05


def test_row_dropout_one_mask_per_distinct_row_scaled_and_detached():
    torch.manual_seed(0)
    ids = torch.tensor([3, 1, 3, 0, 1, 3])
    x = (ids[:, None].float() + 1).expand(-1, 400).clone()  # rows of one id are equal, as gathered rows are
    y = row_dropout(x, ids, 0.5)
    for i in (0, 1, 3):
        rows = y[ids == i]
        assert torch.equal(rows, rows[:1].expand_as(rows))  # one mask per id, as on the full table
    assert not torch.equal(y[1], y[3] * 2)  # distinct ids get distinct masks
    kept = y != 0
    assert 0.4 < kept.float().mean() < 0.6
    torch.testing.assert_close(y[kept], (x * 2)[kept])  # survivors scaled by 1/(1 − p)


def test_targets_are_detached_and_negatives_ignored():
    torch.manual_seed(0)
    model = BM3(tiny.graph(), BM3Config(embedding_dim=tiny.DIM, n_layers=0, reg_weight=0.0, cl_weight=0.0, dropout=0.0))
    users, pos = torch.as_tensor(tiny.USERS), torch.as_tensor(tiny.POS)
    out = model.batch_loss(users, pos, torch.as_tensor(tiny.NEG))
    torch.testing.assert_close(out["loss"], model.batch_loss(users, pos, torch.zeros_like(pos))["loss"])
    out["loss"].backward()
    got = [p.grad.clone() for p in (model.user_emb.weight, model.item_emb.weight)]
    # with 0 layers, u = user row, i = 2 · item row (layer 0 plus the ID embedding once more);
    # each term pulls its online side towards the other's detached target
    model.zero_grad()
    u, i = model.user_emb(users), 2 * model.item_emb(pos)
    cos = torch.nn.functional.cosine_similarity
    ref = 2 - cos(model.predictor(u), i.detach()).mean() - cos(model.predictor(i), u.detach()).mean()
    torch.testing.assert_close(out["loss"], ref)
    ref.backward()
    for g, p in zip(got, (model.user_emb.weight, model.item_emb.weight)):
        torch.testing.assert_close(g, p.grad)


def test_scores_are_predictor_outputs_on_the_full_graph():
    torch.manual_seed(0)
    model = BM3(tiny.graph(), BM3Config(embedding_dim=tiny.DIM, n_layers=2))
    u, i = model.final_embeddings()
    assert u.shape == (tiny.N_USERS, tiny.DIM) and i.shape == (tiny.N_ITEMS, tiny.DIM)
    dense = model.r(torch.eye(tiny.N_ITEMS))  # R (users × items)
    a = torch.zeros(tiny.N_USERS + tiny.N_ITEMS, tiny.N_USERS + tiny.N_ITEMS)
    a[: tiny.N_USERS, tiny.N_USERS :], a[tiny.N_USERS :, : tiny.N_USERS] = dense, dense.T
    e0 = torch.cat([model.user_emb.weight, model.item_emb.weight]).detach()
    e = (e0 + a @ e0 + a @ a @ e0) / 3
    torch.testing.assert_close(u, model.predictor(e[: tiny.N_USERS]))
    torch.testing.assert_close(i, model.predictor(e[tiny.N_USERS :] + model.item_emb.weight))


def test_config_validation():
    with pytest.raises(ValueError, match="dropout"):
        BM3Config(dropout=1.0)
    with pytest.raises(ValueError, match="n_layers"):
        BM3Config(n_layers=-1)
    with pytest.raises(ValueError, match="cl_weight"):
        BM3Config(cl_weight=-1.0)


def test_trains_through_the_trainer_and_learns_the_planted_preference(tmp_path):
    data = planted(n_users=120, n_items=60, n_groups=3, per_user=10)
    f = np.random.default_rng(1).standard_normal((60, 8)).astype(np.float32)
    graph = build_graph_data(data, {"t": f, "v": f}, knn_k=4, device="cpu")
    cfg = TrainConfig(model="bm3", model_args={"embedding_dim": 16}, epochs=30, batch_size=256, lr=0.01, patience=30)
    m = fit(data, graph, cfg, tmp_path / "run", progress=False)
    losses = [h["loss"] for h in m["history"]]
    assert all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0]
    assert m["test"]["recall@20"] > 0.8  # random ranking: about 0.38
