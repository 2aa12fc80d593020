"""AlignRec stage 2: each loss term against a direct formula, switches, and learning."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models.alignrec import AlignRec, AlignRecConfig
from models.training.data import build_graph_data, interactions_from_arrays

N_USERS, N_ITEMS = 30, 24


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(3)
    pairs = np.unique(np.stack([rng.integers(0, N_USERS, 400), rng.integers(0, N_ITEMS, 400)], 1), axis=0)
    pairs = pairs[rng.permutation(len(pairs))]
    data = interactions_from_arrays(N_USERS, N_ITEMS, pairs[:200], pairs[200:240], pairs[240:280])
    graph = build_graph_data(data, {"mm": rng.standard_normal((N_ITEMS, 12)).astype(np.float32)}, knn_k=4, device="cpu")
    batch = tuple(torch.as_tensor(x) for x in (data.train[:16, 0], data.train[:16, 1], rng.integers(0, N_ITEMS, 16)))
    return data, graph, batch


def make(graph, **kw) -> AlignRec:
    torch.manual_seed(0)
    model = AlignRec(graph, AlignRecConfig(**kw))
    with torch.no_grad():
        model.user_emb.mul_(3.0)
        model.item_emb.mul_(3.0)
    return model


def direct(model: AlignRec, graph, users, pos, neg) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    adj = graph.adj.to_dense()
    layers = [torch.cat([model.user_emb, model.item_emb])]
    for _ in range(cfg.n_ui_layers):
        layers.append(adj @ layers[-1])
    lg = sum(layers) / len(layers)
    e = model.item_emb * torch.sigmoid(model.gate(model.trs(graph.features["mm"])))
    for _ in range(cfg.n_layers):
        e = graph.knn["mm"].to_dense() @ e
    z_u = adj[:N_USERS, N_USERS:] @ e
    user, item = lg[:N_USERS] + z_u, lg[N_USERS:] + e
    u, p, n = user[users], item[pos], item[neg]
    b = len(users)

    def nce(a, c, tau):
        a, c = a / a.norm(dim=1, keepdim=True), c / c.norm(dim=1, keepdim=True)
        return -torch.log(torch.exp((a * c).sum(1) / tau) / torch.exp(a @ c.T / tau).sum(1)).mean()

    f = graph.features["mm"][pos]
    s = (f @ f.T) / (f.norm(dim=1, keepdim=True) * f.norm(dim=1)[None, :])
    out = {
        "bpr": -torch.log(torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean(),
        "reg": cfg.reg_weight * 0.5 * ((u**2).sum() + (p**2).sum() + (n**2).sum()) / b,
        "cca": cfg.cca_weight * (nce(e[pos], lg[N_USERS:][pos], 0.2) + nce(z_u[users], lg[:N_USERS][users], 0.2)),
        "uia": cfg.uia_weight * (1 - ((u * p).sum(1) / (u.norm(dim=1) * p.norm(dim=1))).mean()),
        "sim": cfg.sim_weight * torch.sqrt(((e[pos] @ e[pos].T - s) ** 2).sum()) / b,
    }
    out["loss"] = sum(out.values())
    return out


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="cca_tau"):
        AlignRecConfig(cca_tau=0.0)
    with pytest.raises(ValueError, match="sim_weight"):
        AlignRecConfig(sim_weight=-0.1)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_every_term_matches_the_direct_formula(toy, n_layers):
    _, graph, batch = toy
    model = make(graph, n_layers=n_layers, cca_weight=0.3, sim_weight=0.2, reg_weight=0.01)
    got, want = model.batch_loss(*batch), direct(model, graph, *batch)
    assert set(got) == set(want)
    for key in want:
        assert want[key].item() != 0.0, key
        torch.testing.assert_close(got[key], want[key], rtol=2e-5, atol=1e-7, msg=key)


@pytest.mark.parametrize(
    "field,key", [("reg_weight", "reg"), ("cca_weight", "cca"), ("uia_weight", "uia"), ("sim_weight", "sim")]
)
def test_zero_weight_removes_exactly_that_term(toy, field, key):
    _, graph, batch = toy
    on = make(graph, cca_weight=0.3)
    off = AlignRec(graph, dataclasses.replace(on.cfg, **{field: 0.0}))
    off.load_state_dict(on.state_dict())
    full, without = on.batch_loss(*batch), off.batch_loss(*batch)
    assert key not in without
    torch.testing.assert_close(without["loss"], full["loss"] - full[key], rtol=1e-5, atol=1e-6)


def test_final_embeddings_match_the_batch_scores(toy):
    _, graph, (users, pos, neg) = toy
    model = make(graph)
    user, item = model.final_embeddings()
    assert user.shape == (N_USERS, 64) and item.shape == (N_ITEMS, 64)
    bpr = -torch.nn.functional.logsigmoid((user[users] * item[pos]).sum(1) - (user[users] * item[neg]).sum(1)).mean()
    torch.testing.assert_close(model.batch_loss(users, pos, neg)["bpr"], bpr, rtol=1e-5, atol=1e-6)


def test_finetuned_features_move_and_raw_ones_do_not(toy):
    _, graph, batch = toy
    model = make(graph, finetune_features=True)
    model.batch_loss(*batch)["loss"].backward()
    assert model.feat.grad is not None and model.feat.grad.abs().sum() > 0
    frozen = make(graph)
    assert not any(p is frozen.feat for p in frozen.parameters())


def test_learns_a_planted_preference(tmp_path):
    from models.training.trainer import TrainConfig, fit

    rng = np.random.default_rng(0)
    n_users, n_items, groups = 160, 96, 4
    item_group = np.arange(n_items) % groups
    pairs = np.array(
        [
            (u, i)
            for u in range(n_users)
            for i in rng.choice(np.flatnonzero(item_group == u % groups), 10, replace=False)
        ]
    )
    split = np.tile(np.array([0] * 7 + [1, 2, 2]), n_users)
    data = interactions_from_arrays(n_users, n_items, pairs[split == 0], pairs[split == 1], pairs[split == 2])
    feats = (rng.standard_normal((groups, 16))[item_group] + 0.3 * rng.standard_normal((n_items, 16))).astype(
        np.float32
    )
    graph = build_graph_data(data, {"mm": feats}, knn_k=5, device="cpu")
    cfg = TrainConfig(model="alignrec", lr=0.01, epochs=25, batch_size=256, patience=25, seed=0)
    metrics = fit(data, graph, cfg, tmp_path / "run", progress=False)
    assert metrics["test"]["recall@20"] > 2.5 * 20 / (n_items - 7), metrics["test"]
