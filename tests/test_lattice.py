"""LATTICE: parity with MMRec's class on a tiny fixed input, its graphs, and learning."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from models_fixtures import planted

from models.lattice import LATTICE, LATTICEConfig, knn_cosine
from models.training.data import build_graph_data
from models.training.trainer import TrainConfig, fit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks.*
from benchmarks.parity import tiny  # noqa: E402
from benchmarks.parity.lattice_parity import LAMBDA, REG_WEIGHT, STEP, lattice_weights  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# printed by benchmarks/parity/lattice_parity.py (MMRec's LATTICE, cf_model lightgcn: knn_k 3,
# n_layers 1, weight_size [4, 4], lambda_coeff 0.5, reg_weight 0.1, modal_weight [0.3, -0.2]):
# loss, and fingerprints (norm, probe sum) of each gradient and of the user × item score matrix.
# "lattice" is an epoch's first batch (graph built with gradients), "lattice_cached" the next
# batch after a gradient step of size STEP (graph of before the step, detached).
MMREC = {
    "lattice": {
        "loss": 0.84674114,
        "scores": (1.7242749, 0.27345529),
        "grads": {
            "user_emb.weight": (0.17505336, -0.27418715),
            "item_emb.weight": (0.16891414, 0.24238879),
            "trs.t.weight": (0.015749433, 0.0056464037),
            "trs.t.bias": (0.0055030063, -0.00039642782),
            "trs.v.weight": (0.027738547, -0.0066382504),
            "trs.v.bias": (0.011113615, -0.0047679493),
            "feat.t": (0.006918032, 0.0068799442),
            "feat.v": (0.0073937925, 0.0068994165),
            "modal_weight": (0.0028385863, 0.0010977543),
        },
    },
    "lattice_cached": {
        "loss": 0.63210559,
        "scores": (2.5116668, 0.71749067),
        "grads": {
            "user_emb.weight": (0.13182851, -0.064463936),
            "item_emb.weight": (0.13921333, -0.063190112),
            "trs.t.weight": (0.0, 0.0),
            "trs.t.bias": (0.0, 0.0),
            "trs.v.weight": (0.0, 0.0),
            "trs.v.bias": (0.0, 0.0),
            "feat.t": (0.0, 0.0),
            "feat.v": (0.0, 0.0),
            "modal_weight": (0.0, 0.0),
        },
    },
    "lattice_same": {
        "loss": 0.84203923,
        "scores": (1.6671784, 1.0600625),
        "grads": {
            "user_emb.weight": (0.11735946, -0.20619269),
            "item_emb.weight": (0.17903352, 0.34236949),
            "trs.t.weight": (0.019355825, 0.0014321632),
            "trs.t.bias": (0.0047797521, -0.00063571171),
            "trs.v.weight": (0.030320967, 0.0054586351),
            "trs.v.bias": (0.016875162, -0.0039718587),
            "feat.t": (0.0077159837, 0.003558817),
            "feat.v": (0.018254801, -0.016028163),
            "modal_weight": (0.00091756459, 0.00035484575),
        },
    },
}

BATCH = tuple(torch.as_tensor(x) for x in (tiny.USERS, tiny.POS, tiny.NEG))


def tiny_model(same: bool = False) -> LATTICE:
    cfg = LATTICEConfig(embedding_dim=tiny.DIM, feat_embed_dim=tiny.DIM, lambda_coeff=LAMBDA, reg_weight=REG_WEIGHT)
    return LATTICE(tiny.graph(same), cfg)


def stepped(model: LATTICE, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Load `weights`, run one batch (it builds the epoch's graph) and take lattice_parity's step."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(torch.as_tensor(value))
    model.batch_loss(*BATCH)["loss"].backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= STEP * p.grad
            p.grad = None
    return {name: p.detach().numpy().copy() for name, p in model.named_parameters()}


def test_first_batch_of_an_epoch_equals_mmrec():
    tiny.compare(tiny_model(), lattice_weights(), MMREC["lattice"])


def test_later_batch_uses_the_epochs_graph_detached_as_mmrec():
    model = tiny_model()
    tiny.compare(model, stepped(model, lattice_weights()), MMREC["lattice_cached"])


def test_a_new_epoch_rebuilds_the_graph_from_the_current_weights():
    model = tiny_model()
    weights = stepped(model, lattice_weights())
    cached = float(model.batch_loss(*BATCH)["loss"].detach())
    model.on_epoch_end(0)
    rebuilt = model.batch_loss(*BATCH)
    assert abs(float(rebuilt["loss"].detach()) - cached) > 1e-4  # the step moved the learned graph
    rebuilt["loss"].backward()
    assert model.trs["t"].weight.grad.abs().sum() > 0 and model.modal_weight.grad.abs().sum() > 0
    fresh = tiny_model()
    params = dict(fresh.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(torch.as_tensor(value))
    torch.testing.assert_close(fresh.batch_loss(*BATCH)["loss"], rebuilt["loss"])


def test_text_only_setup_t_equals_v_equals_mmrec():
    tiny.compare(tiny_model(same=True), lattice_weights(tiny.T_DIM, tiny.T_DIM), MMREC["lattice_same"])


def test_learned_graph_is_sparse_knn_of_the_projections_with_cosine_weights():
    x = torch.randn(50, 6, requires_grad=True)
    rows, cols, sim = knn_cosine(x, 4, include_self=True)
    assert torch.equal(torch.bincount(rows, minlength=50), torch.full((50,), 4)) and len(sim) == 200
    unit = torch.nn.functional.normalize(x.detach(), dim=1)
    dense = unit @ unit.T
    top = dense.topk(4, dim=1)
    torch.testing.assert_close(sim.detach().view(50, 4), top.values)  # the dense top-k, as MMRec's
    assert torch.equal(cols.view(50, 4).sort(1).values, top.indices.sort(1).values)
    sim.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # the cosines carry gradients to x


def test_only_one_modality_needs_no_mix_weight():
    data = planted(n_users=40, n_items=30, n_groups=3, per_user=6)
    f = np.random.default_rng(2).standard_normal((30, 5)).astype(np.float32)
    model = LATTICE(
        build_graph_data(data, {"t": f}, knn_k=4, device="cpu"), LATTICEConfig(embedding_dim=8, feat_embed_dim=8)
    )
    assert not hasattr(model, "modal_weight") and model.knn_k == 4
    out = model.batch_loss(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([2, 3]))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and model.trs["t"].weight.grad.abs().sum() > 0
    u, i = model.final_embeddings()
    assert u.shape == (40, 8) and i.shape == (30, 8)


def test_config_validation():
    with pytest.raises(ValueError, match="lambda_coeff"):
        LATTICEConfig(lambda_coeff=1.5)
    with pytest.raises(ValueError, match="n_layers"):
        LATTICEConfig(n_layers=-1)
    with pytest.raises(ValueError, match="feat_embed_dim"):
        LATTICEConfig(feat_embed_dim=0)


def test_trains_through_the_trainer_and_learns_the_planted_preference(tmp_path):
    data = planted(n_users=120, n_items=60, n_groups=3, per_user=10)
    f = np.random.default_rng(1).standard_normal((60, 8)).astype(np.float32)
    graph = build_graph_data(data, {"t": f, "v": f}, knn_k=4, device="cpu")
    cfg = TrainConfig(
        model="lattice",
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


@pytest.mark.parametrize("n_layers,n_ui_layers", [(2, 3), (0, 0), (1, 1)])
def test_batch_rows_equal_the_full_computation(n_layers, n_ui_layers):
    data = planted(n_users=50, n_items=40, n_groups=3, per_user=6)
    rng = np.random.default_rng(3)
    feats = {"t": rng.standard_normal((40, 6)).astype(np.float32), "v": rng.standard_normal((40, 5)).astype(np.float32)}
    torch.manual_seed(0)
    model = LATTICE(
        build_graph_data(data, feats, knn_k=5, device="cpu"),
        LATTICEConfig(embedding_dim=8, feat_embed_dim=8, n_layers=n_layers, n_ui_layers=n_ui_layers),
    )
    users, items = torch.tensor([3, 7, 7, 20]), torch.tensor([0, 5, 39, 5, 11, 2, 2, 30])
    first = model.item_side(items)  # builds the epoch's graph
    u_full, i_full = model.final_embeddings()
    for item_rows in (first, model.item_side(items)):  # built, then the kept graph's rows
        u, i = model.ui_side(users, items)
        torch.testing.assert_close(u, u_full[users])
        torch.testing.assert_close(i + item_rows, i_full[items])
