"""SMORE: parity with MMRec's class on a tiny fixed input, its sparse fusion graph, and learning."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from models_fixtures import planted

from models import smore as smore_mod
from models.smore import SMORE, SMOREConfig, max_fusion
from models.training.data import build_graph_data, interactions_from_arrays
from models.training.trainer import TrainConfig, fit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks.*
from benchmarks.parity import (
    bm3_parity,  # noqa: E402
    smore_parity,  # noqa: E402
    tiny,  # noqa: E402
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# printed by benchmarks/parity/smore_parity.py (MMRec's SMORE: embedding 6, cl_loss 0.5, knn_k 3,
# the layers / reg_weight / dropout of smore_parity.CASES, dropout as the fixed column mask
# bm3_parity.column_dropout; "smore_row_dropout": smore_parity.ROW_CASE with a mask per row,
# smore_parity.RowMasks): loss, and fingerprints (norm, probe sum) of each gradient and of the
# user × item score matrix (eval mode).
MMREC = {
    "smore": {
        "loss": 1.5137446,
        "scores": (0.41463019, 0.21018429),
        "grads": {
            "user_emb.weight": (0.95529977, -0.40282383),
            "item_emb.weight": (1.1385506, 0.41117792),
            "feat.t": (0.035718178, -0.00069763793),
            "feat.v": (0.039332141, -0.017693642),
            "trs.t.weight": (0.088780968, 0.14682398),
            "trs.t.bias": (0.040928551, 0.030815628),
            "trs.v.weight": (0.10361396, -0.099725214),
            "trs.v.bias": (0.034121823, 0.022343006),
            "query.v.0.weight": (0.0036553419, 0.0033002856),
            "query.v.0.bias": (0.027849725, -0.044696781),
            "query.v.2.weight": (0.0041639131, -0.0030263339),
            "query.t.0.weight": (0.0023358094, 0.00069039045),
            "query.t.0.bias": (0.0130692, -0.0025752235),
            "query.t.2.weight": (0.0040293491, 0.0037933009),
            "gate.v.0.weight": (0.021758344, 0.0034862071),
            "prefer.v.0.weight": (0.00437313, -0.0058773801),
            "gate.v.0.bias": (0.021130687, 0.0024545538),
            "prefer.v.0.bias": (0.020503655, -0.00094312664),
            "spectrum.v": (0.014301538, -0.0048677853),
            "gate.t.0.weight": (0.0085860252, -0.002503332),
            "prefer.t.0.weight": (0.0028221194, -0.0029116808),
            "gate.t.0.bias": (0.012450367, 0.017432133),
            "prefer.t.0.bias": (0.011775765, 0.016416813),
            "spectrum.t": (0.0038914291, -0.0025779657),
            "gate.f.0.weight": (0.083718644, -0.044297873),
            "prefer.f.0.weight": (0.029745495, -0.044208063),
            "gate.f.0.bias": (0.14423982, 0.089627534),
            "prefer.f.0.bias": (0.13162725, 0.11690402),
            "spectrum.f": (0.048778899, -0.0082533777),
        },
    },
    "smore_dropout": {
        "loss": 2.0346997,
        "scores": (0.52781524, 0.32547475),
        "grads": {
            "user_emb.weight": (1.2656579, 0.40920043),
            "item_emb.weight": (2.5730547, -1.1844645),
            "feat.t": (0.084214847, -0.061772802),
            "feat.v": (0.056502233, 0.00069075989),
            "trs.t.weight": (0.24115175, 0.14878031),
            "trs.t.bias": (0.14567549, 0.028843665),
            "trs.v.weight": (0.17018622, -0.22505441),
            "trs.v.bias": (0.088384693, 0.013053228),
            "query.v.0.weight": (0.010461907, 0.0073058215),
            "query.v.0.bias": (0.060681833, -0.08939001),
            "query.v.2.weight": (0.011944027, -0.0024660683),
            "query.t.0.weight": (0.0023755127, -0.0024822107),
            "query.t.0.bias": (0.012183395, 0.0083973663),
            "query.t.2.weight": (0.0050523567, 0.0043363681),
            "gate.v.0.weight": (0.064071102, -0.026044195),
            "prefer.v.0.weight": (0.012633057, -0.0098821706),
            "gate.v.0.bias": (0.049026475, -0.029497639),
            "prefer.v.0.bias": (0.055563152, -0.036933413),
            "spectrum.v": (0.030193775, 0.0060368601),
            "gate.t.0.weight": (0.024031391, 0.014440883),
            "prefer.t.0.weight": (0.0067787807, -0.0026603283),
            "gate.t.0.bias": (0.015922043, 0.025012612),
            "prefer.t.0.bias": (0.0158771, 0.02660548),
            "spectrum.t": (0.011155731, -0.011840115),
            "gate.f.0.weight": (0.22866558, -0.2102627),
            "prefer.f.0.weight": (0.059506607, -0.068366464),
            "gate.f.0.bias": (0.17564065, 0.057027014),
            "prefer.f.0.bias": (0.15318263, 0.086319945),
            "spectrum.f": (0.041199933, 0.0033254089),
        },
    },
    "smore_same": {
        "loss": 1.9323573,
        "scores": (0.40014346, 0.2330106),
        "grads": {
            "user_emb.weight": (0.91291366, 0.14808392),
            "item_emb.weight": (2.0213967, -0.97192546),
            "feat.t": (0.054686949, 0.0048787377),
            "feat.v": (0.029184813, 0.010864942),
            "trs.t.weight": (0.17159669, 0.075701578),
            "trs.t.bias": (0.047408167, 0.055899724),
            "trs.v.weight": (0.15752416, 0.086584216),
            "trs.v.bias": (0.027801324, -0.018833843),
            "query.v.0.weight": (0.0051005493, 0.0041213288),
            "query.v.0.bias": (0.024070115, -0.0021962313),
            "query.v.2.weight": (0.0067053784, 0.0068981351),
            "query.t.0.weight": (0.0037741633, 0.00014383383),
            "query.t.0.bias": (0.017542498, -0.012369631),
            "query.t.2.weight": (0.0055339504, -0.0028952819),
            "gate.v.0.weight": (0.028297525, 0.011793986),
            "prefer.v.0.weight": (0.0064496351, -0.008101751),
            "gate.v.0.bias": (0.014148079, 0.014253559),
            "prefer.v.0.bias": (0.020662936, 0.014325601),
            "spectrum.v": (0.013268001, 0.021137096),
            "gate.t.0.weight": (0.025635694, -0.0012855528),
            "prefer.t.0.weight": (0.0055117009, -0.0057029612),
            "gate.t.0.bias": (0.015141235, 0.018080328),
            "prefer.t.0.bias": (0.01627089, 0.016950241),
            "spectrum.t": (0.013673442, -0.0032881644),
            "gate.f.0.weight": (0.17952171, -0.07353025),
            "prefer.f.0.weight": (0.029519206, -0.038746599),
            "gate.f.0.bias": (0.090222676, 0.094364853),
            "prefer.f.0.bias": (0.084451177, 0.12078469),
            "spectrum.f": (0.070893438, -0.090204985),
        },
    },
    "smore_row_dropout": {
        "loss": 2.3473918,
        "scores": (0.52781524, 0.32547475),
        "grads": {
            "user_emb.weight": (1.0983351, -0.323451),
            "item_emb.weight": (2.5008806, -1.5557803),
            "feat.t": (0.063456463, -0.036412672),
            "feat.v": (0.050384237, 0.027986825),
            "trs.t.weight": (0.17972028, 0.18750248),
            "trs.t.bias": (0.094382337, 0.04106207),
            "trs.v.weight": (0.15011603, -0.17424748),
            "trs.v.bias": (0.082522423, 0.041735306),
            "query.v.0.weight": (0.010980472, 0.0056382891),
            "query.v.0.bias": (0.049958128, -0.078951831),
            "query.v.2.weight": (0.0089531387, -0.00043187906),
            "query.t.0.weight": (0.0092304186, 0.006152388),
            "query.t.0.bias": (0.048297883, 0.022420087),
            "query.t.2.weight": (0.0087609591, 0.0075080423),
            "gate.v.0.weight": (0.04027586, 0.047743759),
            "prefer.v.0.weight": (0.009492347, -0.0042365017),
            "gate.v.0.bias": (0.036854408, 0.010855031),
            "prefer.v.0.bias": (0.036101365, 0.0053394391),
            "spectrum.v": (0.018052224, -0.0032531285),
            "gate.t.0.weight": (0.032537357, -0.02709083),
            "prefer.t.0.weight": (0.0051331103, -0.0060789571),
            "gate.t.0.bias": (0.023410369, 0.033220944),
            "prefer.t.0.bias": (0.022102821, 0.031826131),
            "spectrum.t": (0.010820978, 0.0030205609),
            "gate.f.0.weight": (0.15995909, -0.12380324),
            "prefer.f.0.weight": (0.051261427, -0.034463821),
            "gate.f.0.bias": (0.14566554, 0.10721071),
            "prefer.f.0.bias": (0.1216851, 0.10896009),
            "spectrum.f": (0.038140435, -0.015864253),
        },
    },
}


def config(n_ui_layers: int, n_layers: int, reg_weight: float, dropout: float) -> SMOREConfig:
    return SMOREConfig(
        embedding_dim=smore_parity.DIM,
        n_ui_layers=n_ui_layers,
        n_layers=n_layers,
        reg_weight=reg_weight,
        cl_weight=smore_parity.CL_WEIGHT,
        dropout=dropout,
    )


@pytest.mark.parametrize("case", smore_parity.CASES, ids=[c[0] for c in smore_parity.CASES])
def test_loss_gradients_and_scores_equal_mmrec(case, monkeypatch):
    name, same, *args = case
    model = SMORE(tiny.graph(same), config(*args))
    monkeypatch.setattr(torch.nn.functional, "dropout", bm3_parity.column_dropout)  # MMRec's run had the same mask
    tiny.compare(model, smore_parity.smore_weights(same), MMREC[name])


def test_a_mask_per_row_equals_mmrec(monkeypatch):
    """Each user's and item's own mask: MMRec drops its whole table, ours the batch's rows by id."""
    name, same, *args = smore_parity.ROW_CASE
    model = SMORE(tiny.graph(same), config(*args))
    masks = smore_parity.RowMasks(smore_parity.DROPOUT)
    monkeypatch.setattr(smore_mod, "row_dropout", masks.rows)
    tiny.compare(model, smore_parity.smore_weights(same), MMREC[name])
    assert masks.calls == 6  # users' v, t, f and items' v, t, f in training; none in scoring
    assert abs(MMREC[name]["loss"] - MMREC["smore_dropout"]["loss"]) > 1e-2  # not the column mask's value


def test_column_dropout_really_changes_the_loss(monkeypatch):
    """The dropout case would not see a mask applied to the wrong tensor if the mask did nothing."""
    _, same, *args = smore_parity.CASES[1]
    model = SMORE(tiny.graph(same), config(*args[:-1], 0.0))
    with torch.no_grad():
        for k, v in smore_parity.smore_weights(same).items():
            dict(model.named_parameters())[k].copy_(torch.as_tensor(v))
    plain = float(model.batch_loss(*(torch.as_tensor(x) for x in (tiny.USERS, tiny.POS, tiny.NEG)))["loss"].detach())
    assert abs(plain - MMREC["smore_dropout"]["loss"]) > 1e-3


def test_max_fusion_takes_the_larger_weight_on_the_union():
    a = (torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]), torch.tensor([0.5, 0.2, 0.7]))
    b = (torch.tensor([0, 1, 2]), torch.tensor([1, 1, 0]), torch.tensor([0.4, 0.1, 0.3]))
    dense = max_fusion(a, b, 3).to_dense()
    expected = torch.tensor([[0.5, 0.4, 0.0], [0.0, 0.7, 0.0], [0.3, 0.0, 0.0]])
    torch.testing.assert_close(dense, expected)


def test_needs_both_modalities_and_t_equal_v_shares_one_graph():
    none = tiny.TRAIN[:0]
    data = interactions_from_arrays(tiny.N_USERS, tiny.N_ITEMS, tiny.TRAIN, none, none)
    text_only = build_graph_data(data, {"t": tiny.features()["t"]}, knn_k=tiny.KNN_K, device="cpu")
    with pytest.raises(ValueError, match="needs both"):
        SMORE(text_only, SMOREConfig(embedding_dim=4))
    model = SMORE(tiny.graph(same=True), SMOREConfig(embedding_dim=4))
    eye = torch.eye(tiny.N_ITEMS)
    s_t, s_v, s_f = (model.item_graphs[m](eye) for m in ("t", "v", "f"))
    torch.testing.assert_close(s_t, s_v)
    torch.testing.assert_close(s_f, s_t)
    assert model.feat["t"].data_ptr() != model.feat["v"].data_ptr()  # two trained copies, as in MMRec


def test_shapes_and_batch_rows_equal_the_full_forward():
    torch.manual_seed(0)
    model = SMORE(tiny.graph(), SMOREConfig(embedding_dim=8, n_ui_layers=2, cl_weight=0.0, reg_weight=0.0))
    u, i = model.final_embeddings()
    assert u.shape == (tiny.N_USERS, 8) and i.shape == (tiny.N_ITEMS, 8)
    users, pos, neg = (torch.as_tensor(x) for x in (tiny.USERS, tiny.POS, tiny.NEG))
    out = model.batch_loss(users, pos, neg)
    ref = -torch.nn.functional.logsigmoid((u[users] * i[pos]).sum(1) - (u[users] * i[neg]).sum(1)).mean()
    torch.testing.assert_close(out["loss"].detach(), ref)  # batch-only rows = the full forward's rows


def test_config_validation():
    with pytest.raises(ValueError, match="dropout"):
        SMOREConfig(dropout=1.0)
    with pytest.raises(ValueError, match="n_ui_layers"):
        SMOREConfig(n_ui_layers=-1)
    with pytest.raises(ValueError, match="temperature"):
        SMOREConfig(temperature=0.0)


def test_trains_through_the_trainer_and_learns_the_planted_preference(tmp_path):
    data = planted(n_users=120, n_items=60, n_groups=3, per_user=10)
    f = np.random.default_rng(1).standard_normal((60, 8)).astype(np.float32)
    graph = build_graph_data(data, {"t": f, "v": f}, knn_k=4, device="cpu")
    cfg = TrainConfig(model="smore", model_args={"embedding_dim": 16}, epochs=30, batch_size=256, lr=0.01, patience=30)
    m = fit(data, graph, cfg, tmp_path / "run", progress=False)
    losses = [h["loss"] for h in m["history"]]
    assert all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0]
    assert m["test"]["recall@20"] > 0.8  # random ranking: about 0.38
