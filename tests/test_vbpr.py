"""VBPR: parity with MMRec's class on a tiny fixed input, content handling, and learning."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from models_fixtures import planted

from models.losses import emb_norm_loss
from models.training.data import build_graph_data
from models.training.trainer import TrainConfig, fit
from models.vbpr import VBPR, VBPRConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks.*
from benchmarks.parity import tiny  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# printed by benchmarks/parity/mmrec_parity.py (MMRec's VBPR, reg_weight 0.1): loss, and
# fingerprints (norm, probe sum) of each gradient and of the user × item score matrix
MMREC = {
    "vbpr": {
        "loss": 0.85007048,
        "scores": (3.0286846, -0.35014657),
        "grads": {
            "user_emb": (0.46536549, 0.43892988),
            "item_emb": (0.12555476, -0.20362047),
            "item_linear.weight": (0.45081114, 0.10488943),
            "item_linear.bias": (0.019910616, -0.0052475461),
        },
    },
    "vbpr_same": {
        "loss": 0.89243126,
        "scores": (3.2622546, -4.8376217),
        "grads": {
            "user_emb": (0.57233731, 0.63807427),
            "item_emb": (0.1491242, -0.16937194),
            "item_linear.weight": (0.45532791, -0.6376049),
            "item_linear.bias": (0.048497654, 0.011146621),
        },
    },
}


def tiny_model(same: bool) -> VBPR:
    return VBPR(tiny.graph(same), VBPRConfig(embedding_dim=tiny.DIM, reg_weight=0.1))


def test_loss_gradients_and_scores_equal_mmrec():
    tiny.compare(tiny_model(False), tiny.vbpr_weights(), MMREC["vbpr"])


def test_text_only_setup_t_equals_v_equals_mmrec_with_one_table_twice():
    model = tiny_model(True)
    assert model.tables == ("t",)  # the shared table is stored and multiplied once
    tiny.compare(model, tiny.vbpr_weights(tiny.T_DIM, tiny.T_DIM), MMREC["vbpr_same"])


def test_batch_loss_is_the_formula_on_concatenated_features():
    g = tiny.graph()
    torch.manual_seed(0)
    model = VBPR(g, VBPRConfig(embedding_dim=3, reg_weight=0.5))
    f = torch.cat([g.features["t"], g.features["v"]], 1)
    items = torch.cat([model.item_emb, model.item_linear(f)], 1)
    u, p, n = model.user_emb[tiny.USERS], items[tiny.POS], items[tiny.NEG]
    bpr = -torch.log(torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()
    reg = 0.5 * (u.norm() + p.norm() + n.norm()) / len(u)
    out = model.batch_loss(*(torch.as_tensor(x) for x in (tiny.USERS, tiny.POS, tiny.NEG)))
    assert float(out["bpr"]) == pytest.approx(float(bpr), rel=1e-6)
    assert float(out["reg"]) == pytest.approx(float(reg), rel=1e-6)
    assert float(out["loss"]) == pytest.approx(float(bpr + reg), rel=1e-6)
    ue, ie = model.final_embeddings()
    assert ue.shape == (tiny.N_USERS, 6) and ie.shape == (tiny.N_ITEMS, 6)
    torch.testing.assert_close(ie, items.detach())


def test_emb_norm_loss_is_mmrecs_unsquared_norm():
    a, b = torch.full((2, 2), 3.0), torch.zeros(2, 1)
    assert float(emb_norm_loss(a, b)) == pytest.approx(6.0 / 2)


def test_one_modality_works_and_none_is_a_clear_error():
    data = planted(n_users=20, n_items=15, n_groups=3, per_user=5)
    rng = np.random.default_rng(0)
    g = build_graph_data(data, {"v": rng.standard_normal((15, 7)).astype(np.float32)}, knn_k=3, device="cpu")
    model = VBPR(g, VBPRConfig(embedding_dim=4))
    assert model.item_linear.in_features == 7
    with pytest.raises(ValueError, match="needs feature 't' or 'v'.*anchorrec features"):
        VBPR(build_graph_data(data, {}, device="cpu"), VBPRConfig())
    with pytest.raises(ValueError, match="reg_weight"):
        VBPRConfig(reg_weight=-1)


def test_trains_through_the_trainer_and_learns_the_planted_preference(tmp_path):
    data = planted(n_users=120, n_items=60, n_groups=3, per_user=10)
    rng = np.random.default_rng(1)
    f = rng.standard_normal((60, 8)).astype(np.float32)
    graph = build_graph_data(data, {"t": f, "v": f}, knn_k=4, device="cpu")
    cfg = TrainConfig(model="vbpr", model_args={"embedding_dim": 16}, epochs=30, batch_size=256, lr=0.01, patience=30)
    m = fit(data, graph, cfg, tmp_path / "run", progress=False)
    losses = [h["loss"] for h in m["history"]]
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]
    # in-group items: 20 per group − 8 in train; random ranking gives about 20 / 52 ≈ 0.38 at most
    assert m["test"]["recall@20"] > 0.8
