"""LGMRec: parity with MMRec's class on a tiny fixed input, its exact shortcuts, and learning."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from models_fixtures import planted

from models import lgmrec
from models.lgmrec import LGMRec, LGMRecConfig, hyper_nce
from models.training.data import build_graph_data, interactions_from_arrays
from models.training.trainer import TrainConfig, fit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks.*
from benchmarks.parity import (
    lgmrec_parity,  # noqa: E402
    tiny,  # noqa: E402
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# printed by benchmarks/parity/lgmrec_parity.py (MMRec's LGMRec on tiny.py's input, keep_rate 1 but
# in "lgmrec_dropout" (0.5), cl_weight 0.05, reg_weight 0.1, the fixed Gumbel noise and dropout masks
# of lgmrec_parity.FixedGumbel / FixedDropout, the configs of lgmrec_parity.CASES): loss, and fingerprints (norm, probe sum) of each gradient
# and of the user × item score matrix.
MMREC = {
    "lgmrec": {
        "loss": 1.4689258,
        "scores": (4.3001783, 2.8962155),
        "grads": {
            "user_emb.weight": (0.27673166, -0.069341391),
            "item_emb.weight": (0.61302672, -0.0045358927),
            "trs.t": (0.26009465, 0.43352824),
            "hyper.t": (0.11551725, -0.009609772),
            "trs.v": (0.29197593, -0.24078304),
            "hyper.v": (0.31084253, 0.30227722),
        },
    },
    "lgmrec_same": {
        "loss": 1.7597876,
        "scores": (13.492211, 13.045036),
        "grads": {
            "user_emb.weight": (0.16195277, -0.10060252),
            "item_emb.weight": (0.36218, -0.015743232),
            "trs.t": (0.35428585, -0.22395957),
            "hyper.t": (0.060352021, -0.0012583791),
            "trs.v": (0.22134284, -0.019200652),
            "hyper.v": (0.1412395, 0.083820778),
        },
    },
    "lgmrec_deep": {
        "loss": 1.5431825,
        "scores": (7.9781666, 6.5738893),
        "grads": {
            "user_emb.weight": (0.38846939, 0.39693813),
            "item_emb.weight": (0.53347908, 0.10523071),
            "trs.t": (0.27870415, -0.0058326116),
            "hyper.t": (0.87614614, 0.12826546),
            "trs.v": (0.33045732, -0.015453282),
            "hyper.v": (1.0062724, 0.35881622),
        },
    },
    "lgmrec_dropout": {
        "loss": 2.081902265548706,
        "scores": (4.300178261988217, 2.8962155424942457),
        "grads": {
            "user_emb.weight": (0.4463118441911792, -0.0022651560356697735),
            "item_emb.weight": (1.1255662255626422, 1.4780554353686932),
            "trs.t": (0.27140720723101136, 0.44984507289245934),
            "hyper.t": (0.40522555473898514, 0.1333437786778914),
            "trs.v": (0.2918591782411164, -0.236779665525493),
            "hyper.v": (2.7391174189706464, 2.1759595510943828),
        },
    },
}


@pytest.fixture
def fixed_dropout(monkeypatch):
    """The parity script's fixed dropout masks, k-th training call = MMRec's k-th (nn.Dropout calls F.dropout)."""
    fake = lgmrec_parity.FixedDropout()
    monkeypatch.setattr(torch.nn.functional, "dropout", fake)
    return fake


@pytest.fixture
def fixed_gumbel(monkeypatch):
    """The parity script's fixed Gumbel noise, k-th draw of a forward pass = MMRec's k-th."""
    fake = lgmrec_parity.FixedGumbel()
    monkeypatch.setattr(torch.nn.functional, "gumbel_softmax", fake)
    return fake


def case_model(name: str) -> LGMRec:
    case = dict(lgmrec_parity.CASES[name])
    same = case.pop("same")
    case.setdefault("keep_rate", 1.0)
    cfg = LGMRecConfig(
        embedding_dim=tiny.DIM,
        feat_embed_dim=tiny.DIM,
        cl_weight=lgmrec_parity.CL_WEIGHT,
        reg_weight=lgmrec_parity.REG_WEIGHT,
        **case,
    )
    return LGMRec(tiny.graph(same), cfg)


@pytest.mark.parametrize("name", sorted(MMREC))
def test_loss_gradients_and_scores_equal_mmrec(name, fixed_gumbel, fixed_dropout):
    case = lgmrec_parity.CASES[name]
    weights = lgmrec_parity.lgmrec_weights(case["same"], case["hyper_num"])
    tiny.compare(case_model(name), weights, MMREC[name])
    assert fixed_gumbel.calls == 8  # 4 draws (v items, v users, t items, t users) per forward, as MMRec
    # dropout on: 4 masks in the training forward (the same items/users order as MMRec's), none in scoring
    assert fixed_dropout.calls == (4 if case.get("keep_rate", 1.0) < 1 else 0)


def test_text_only_setup_stores_the_one_table_once():
    model = case_model("lgmrec_same")
    assert list(model.tables) == ["v"] and model.tables["v"] == ("v", "t")
    assert {n for n, _ in model.named_buffers() if n.startswith("feat_")} == {"feat_v"}
    assert model.trs["t"] is not model.trs["v"]  # own projections, as MMRec's


@pytest.mark.parametrize("k", [3, 8])  # rank-k denominators (k < d) and the plain form (k ≥ d)
@pytest.mark.parametrize("block_elements", [2**18, 6 * 7])  # one block; blocks of 7 rows (the last short)
def test_contrastive_loss_and_gradients_equal_the_direct_formula(k, block_elements, monkeypatch):
    monkeypatch.setitem(lgmrec.BLOCK_ELEMENTS, True, block_elements)
    g = torch.Generator().manual_seed(0)
    leaves = [
        torch.randn(6, 5, generator=g),
        torch.randn(6, 5, generator=g),
        torch.rand(40, k, generator=g),
        torch.randn(k, 5, generator=g),
    ]
    leaves[2][3] = 0  # a row dropped out entirely: F.normalize leaves it zero
    tau = 0.2

    def mmrec_ssl_triple_loss(anchor, positive, assign, lat):
        a, o = F.normalize(anchor), F.normalize(assign @ lat)
        pos = torch.exp((a * F.normalize(positive)).sum(1) / tau)
        return -torch.log(pos / torch.exp(a @ o.T / tau).sum(1)).sum()

    ours, ref = [[x.clone().requires_grad_() for x in leaves] for _ in range(2)]
    loss, ref_loss = hyper_nce(*ours, tau), mmrec_ssl_triple_loss(*ref)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    loss.backward()
    ref_loss.backward()
    for x, y in zip(ours, ref):
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-4, atol=1e-5)


def test_batch_rows_equal_the_full_computation(fixed_gumbel):
    torch.manual_seed(0)
    model = case_model("lgmrec")
    users, items = torch.tensor([4, 0, 2, 0]), torch.tensor([6, 1, 1, 3, 0])
    u, i, _ = model.embed(users, items, training=False)
    full_u, full_i, _ = model.embed(None, None, training=False)
    torch.testing.assert_close(u, full_u[users], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(i, full_i[items], rtol=1e-5, atol=1e-6)


def test_hyperedge_dropout_in_training_only(fixed_gumbel):
    model = LGMRec(tiny.graph(), LGMRecConfig(embedding_dim=tiny.DIM, feat_embed_dim=tiny.DIM, keep_rate=0.5))
    args = [torch.as_tensor(x) for x in (tiny.USERS, tiny.POS, tiny.NEG)]
    torch.manual_seed(0)
    first = model.batch_loss(*args)["loss"]
    second = model.batch_loss(*args)["loss"]
    assert not torch.equal(first, second)  # fresh dropout masks (the Gumbel noise is fixed here)
    (u1, i1), (u2, i2) = model.final_embeddings(), model.final_embeddings()
    torch.testing.assert_close(u1 @ i1.T, u2 @ i2.T)  # no dropout when scoring


def test_needs_both_modalities_and_no_dense_item_matrix():
    f, none = tiny.features(), tiny.TRAIN[:0]
    data = interactions_from_arrays(tiny.N_USERS, tiny.N_ITEMS, tiny.TRAIN, none, none)
    with pytest.raises(ValueError, match="needs features 't' and 'v'.*anchorrec features"):
        LGMRec(build_graph_data(data, {"t": f["t"]}, knn_k=3, device="cpu"), LGMRecConfig())
    model = case_model("lgmrec")
    square = [
        n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.shape[:2] == (tiny.N_ITEMS, tiny.N_ITEMS)
    ]
    assert square == []  # no item–item matrix, dense or sparse: LGMRec has no item graph


def test_config_validation():
    with pytest.raises(ValueError, match="feat_embed_dim"):
        LGMRecConfig(embedding_dim=64, feat_embed_dim=32)
    with pytest.raises(ValueError, match="keep_rate"):
        LGMRecConfig(keep_rate=0.0)
    with pytest.raises(ValueError, match="hyper_num must be ≥ 1, got 0"):
        LGMRecConfig(hyper_num=0)
    with pytest.raises(ValueError, match="tau must be ≥ 0.025"):
        LGMRecConfig(tau=0.01)


def test_trains_through_the_trainer_and_learns_the_planted_preference(tmp_path):
    data = planted(n_users=120, n_items=60, n_groups=3, per_user=10)
    f = np.random.default_rng(1).standard_normal((60, 8)).astype(np.float32)
    graph = build_graph_data(data, {"t": f, "v": f}, knn_k=4, device="cpu")
    cfg = TrainConfig(
        model="lgmrec",
        model_args={"embedding_dim": 16, "feat_embed_dim": 16},
        epochs=30,
        batch_size=256,
        lr=0.01,
        patience=30,
    )
    m = fit(data, graph, cfg, tmp_path / "run", progress=False)
    bpr = [h["bpr"] for h in m["history"]]
    assert all(np.isfinite([h["loss"] for h in m["history"]])) and bpr[-1] < 0.6 * bpr[0]
    # random ranking: about 0.38. The untrained model is already near 1 here: its modality
    # branch propagates over the training graph, which alone separates the planted groups
    assert m["test"]["recall@20"] > 0.8
