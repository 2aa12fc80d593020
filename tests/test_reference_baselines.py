"""The speed benchmark's MMRec-structured FREEDOM and LATTICE compute our models' math.

benchmarks/speed/bench_baseline_speed.py times ours against benchmarks/common/reference_baselines.py; the
ratio means something only if both give the same loss and gradients on the same weights and
batch, which these tests check on tiny inputs (values, not fingerprints: both run here).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from models_fixtures import planted

from models.freedom import FREEDOM, FREEDOMConfig
from models.lattice import LATTICE, LATTICEConfig
from models.training.data import build_graph_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks.*
from benchmarks.common.reference_baselines import (  # noqa: E402
    ReferenceFREEDOM,
    ReferenceLATTICE,
    dense_normalized,
    self_loop_adjacency,
)
from benchmarks.parity import tiny  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BATCH = tuple(torch.as_tensor(x) for x in (tiny.USERS, tiny.POS, tiny.NEG))


def loss_and_grads(model: torch.nn.Module, batch=BATCH) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    for p in model.parameters():
        p.grad = None
    terms = model.batch_loss(*batch)
    terms["loss"].backward()
    grads = {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    return {k: float(v.detach()) for k, v in terms.items()}, grads


def assert_same(ours: torch.nn.Module, ref: torch.nn.Module, batch=BATCH) -> dict[str, float]:
    """Same loss terms, gradients and final embeddings; returns our terms (to check they are not trivial)."""
    terms, grads = loss_and_grads(ours, batch)
    ref_terms, ref_grads = loss_and_grads(ref, batch)
    assert terms.keys() == ref_terms.keys()
    for key in terms:
        np.testing.assert_allclose(ref_terms[key], terms[key], rtol=1e-5, err_msg=key)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(ref_grads[name], grads[name], rtol=1e-4, atol=1e-7, msg=name)
    for a, b in zip(ours.final_embeddings(), ref.final_embeddings()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    return terms


def pair(cls, ref_cls, graph, cfg, **ref_kwargs):
    torch.manual_seed(0)
    ours = cls(graph, cfg)
    ref = ref_cls(graph, cfg, **ref_kwargs)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def freedom_cfg(dropout: float) -> FREEDOMConfig:
    return FREEDOMConfig(
        embedding_dim=tiny.DIM, feat_embed_dim=tiny.DIM, reg_weight=0.1, mm_image_weight=0.3, dropout=dropout
    )


@pytest.mark.parametrize("same", [False, True], ids=["t_v", "t_equals_v"])
def test_freedom_full_graph_same_loss_and_gradients(same):
    ours, ref = pair(FREEDOM, ReferenceFREEDOM, tiny.graph(same), freedom_cfg(0.0))
    assert ref.masked_adj is None  # dropout 0: the full graph, as MMRec's norm_adj
    terms = assert_same(ours, ref)
    assert terms["bpr"] > 0.5 and terms["feat_bpr"] > 0  # a real loss, both terms present


def test_freedom_pruned_graph_same_for_the_same_draw():
    """Both prune by drawing from the same probabilities in the same order: same seed, same edges."""
    ours, ref = pair(FREEDOM, ReferenceFREEDOM, tiny.graph(), freedom_cfg(tiny.DROPOUT))
    torch.manual_seed(5)
    ours.resample_edges()
    torch.manual_seed(5)
    ref.resample_edges()
    assert ref.masked_adj.shape == (tiny.N_USERS + tiny.N_ITEMS,) * 2
    assert ref.masked_adj._nnz() == 2 * ours.train_r.nnz  # both directions, uncoalesced
    assert_same(ours, ref)
    # and for an explicit edge set (the parity tests' kept edges): renormalized on those edges
    users, items = (torch.as_tensor(tiny.TRAIN[tiny.KEPT_EDGES, c]) for c in (0, 1))
    ours.use_edges(users, items)
    ref.use_edges(users, items)
    dense = ref.masked_adj.to_dense()[: tiny.N_USERS, tiny.N_USERS :]
    du = torch.bincount(users, minlength=tiny.N_USERS).float()
    di = torch.bincount(items, minlength=tiny.N_ITEMS).float()
    np.testing.assert_allclose(dense[users, items].numpy(), (du[users] * di[items]).rsqrt().numpy(), rtol=1e-6)
    assert_same(ours, ref)


def lattice_cfg() -> LATTICEConfig:
    return LATTICEConfig(
        embedding_dim=tiny.DIM, feat_embed_dim=tiny.DIM, n_layers=1, n_ui_layers=2, lambda_coeff=0.5, reg_weight=0.1
    )


@pytest.mark.parametrize("laplacian", ["diagflat", "scale"])
@pytest.mark.parametrize("same", [False, True], ids=["t_v", "t_equals_v"])
def test_lattice_build_batch_and_cached_batch_same(laplacian, same):
    ours, ref = pair(LATTICE, ReferenceLATTICE, tiny.graph(same), lattice_cfg(), laplacian=laplacian)
    with torch.no_grad():  # off the symmetric start, so that the mix weights get a gradient to compare
        ours.modal_weight.copy_(torch.tensor([0.3, -0.2]))
        ref.modal_weight.copy_(torch.tensor([0.3, -0.2]))
    terms = assert_same(ours, ref)  # the epoch's first batch: the learned graph, with gradients
    assert terms["bpr"] > 0.3 and terms["reg"] > 0
    assert ref.dense_adj.shape == (tiny.N_ITEMS, tiny.N_ITEMS) and ref.dense_adj.layout == torch.strided
    for model in (ours, ref):  # one identical SGD step, then the epoch's next batch: the graph detached
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= 0.5 * p.grad
    _, grads = loss_and_grads(ref)
    assert float(grads["trs.t.weight"].abs().sum()) == 0.0  # no gradient into the graph's inputs
    assert_same(ours, ref)
    ours.on_epoch_end(0)
    ref.on_epoch_end(0)
    assert_same(ours, ref)  # a new epoch rebuilds from the stepped parameters in both


def test_lattice_same_on_a_larger_graph_with_one_modality():
    """60 items, k 5: the dense topk picks the neighbours the kNN search picks."""
    data = planted(n_users=80, n_items=60, n_groups=3, per_user=8)
    f = np.random.default_rng(3).standard_normal((60, 12)).astype(np.float32)
    graph = build_graph_data(data, {"t": f}, knn_k=5, device="cpu")
    cfg = LATTICEConfig(embedding_dim=8, feat_embed_dim=8, reg_weight=1e-3)
    ours, ref = pair(LATTICE, ReferenceLATTICE, graph, cfg, laplacian="scale")
    users, items = graph.ui.coalesce().indices()[:, :32]
    batch = (users, items, torch.randint(0, 60, (32,), generator=torch.Generator().manual_seed(0)))
    assert_same(ours, ref, batch)
    assert not hasattr(ours, "modal_weight")  # one modality: no mix weights in either


def test_dense_normalization_diagflat_equals_scaling_and_zero_rows_stay_zero():
    a = torch.rand(6, 6)
    a[2] = 0.0
    torch.testing.assert_close(dense_normalized(a, "diagflat"), dense_normalized(a, "scale"))
    d = a.sum(1).pow(-0.5)
    torch.testing.assert_close(dense_normalized(a, "scale")[0, 1], a[0, 1] * d[0] * d[1])
    assert float(dense_normalized(a, "scale")[2].abs().sum()) == 0.0


def test_self_loop_adjacency_is_row_normalized_a_plus_i():
    g = tiny.graph()
    adj = self_loop_adjacency(g).to_dense()
    n = tiny.N_USERS + tiny.N_ITEMS
    a = torch.eye(n)
    a[tiny.TRAIN[:, 0], tiny.N_USERS + tiny.TRAIN[:, 1]] = 1.0
    a[tiny.N_USERS + tiny.TRAIN[:, 1], tiny.TRAIN[:, 0]] = 1.0
    torch.testing.assert_close(adj, a / a.sum(1, keepdim=True))


def test_reference_lattice_refuses_a_graph_without_self_neighbours():
    data = planted(n_users=40, n_items=30, n_groups=3, per_user=6)
    f = np.random.default_rng(0).standard_normal((30, 6)).astype(np.float32)
    graph = build_graph_data(data, {"t": f}, knn_k=4, device="cpu", knn_self=False)
    with pytest.raises(ValueError, match="knn_self=True"):
        ReferenceLATTICE(graph, LATTICEConfig(embedding_dim=4, feat_embed_dim=4))
