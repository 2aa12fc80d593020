"""AnchorRec: every loss term against a direct formula, switches, gradient routes, learning."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.anchorrec import AnchorRec, AnchorRecConfig, _GatedIds
from models.backbone import bipartite_lightgcn, lightgcn_mean
from models.evaluation.metrics import ranking_metrics
from models.losses import similarity_gap, smoothing_loss, uia_margin_loss
from models.training.data import build_graph_data, interactions_from_arrays
from models.training.sparse import FixedSparse, csr_mm

N_USERS, N_ITEMS = 30, 24


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(0)
    pairs = np.unique(np.stack([rng.integers(0, N_USERS, 400), rng.integers(0, N_ITEMS, 400)], 1), axis=0)
    pairs = pairs[rng.permutation(len(pairs))]
    data = interactions_from_arrays(N_USERS, N_ITEMS, pairs[:200], pairs[200:240], pairs[240:280])
    feats = {
        "mm": rng.standard_normal((N_ITEMS, 12)),
        "t": rng.standard_normal((N_ITEMS, 8)),
        "v": rng.standard_normal((N_ITEMS, 10)),
    }
    graph = build_graph_data(data, {k: v.astype(np.float32) for k, v in feats.items()}, knn_k=4, device="cpu")
    users = torch.as_tensor(data.train[:16, 0])
    pos = torch.as_tensor(data.train[:16, 1])
    neg = torch.as_tensor(rng.integers(0, N_ITEMS, 16))
    return data, graph, (users, pos, neg)


def make(graph, **kw) -> AnchorRec:
    torch.manual_seed(0)
    model = AnchorRec(graph, AnchorRecConfig(**kw))
    with torch.no_grad():  # make the terms non-trivial: embeddings of a trained-model scale
        model.user_emb.mul_(3.0)
        model.item_emb.mul_(3.0)
    return model


def direct(model: AnchorRec, graph, users, pos, neg) -> dict[str, torch.Tensor]:
    """The whole model written out with dense matrices, the reference's way (all users, all items)."""
    cfg = model.cfg
    adj = graph.adj.to_dense()
    ego = torch.cat([model.user_emb, model.item_emb])
    layers = [ego]
    for _ in range(cfg.n_ui_layers):
        layers.append(adj @ layers[-1])
    lg = sum(layers) / len(layers)
    lg_u, lg_i = lg[:N_USERS], lg[N_USERS:]
    r = adj[:N_USERS, N_USERS:]
    z = {}
    for m in ("mm", "t", "v"):
        e = model.item_emb * torch.sigmoid(model.gate[m](model.trs[m](graph.features[m])))
        for _ in range(cfg.n_layers):
            e = graph.knn[m].to_dense() @ e
        z[m] = e
    z_sum = z["mm"] + z["t"] if cfg.t_branch else z["mm"]
    user = lg_u + r @ z_sum
    item = lg_i + z_sum + cfg.recover_lambda * model.recover(model.proj["mm"](z["mm"]))
    u, p, n = user[users], item[pos], item[neg]
    b = len(users)
    out = {"bpr": -torch.log(torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()}
    out["reg"] = cfg.lambda_weight * 0.5 * ((u**2).sum() + (p**2).sum() + (n**2).sum()) / b

    def cos(a, c):
        return (a * c).sum(1) / (a.norm(dim=1) * c.norm(dim=1))

    ud = u.detach() if cfg.uia_detach else u
    out["uia"] = cfg.uia_weight * torch.clamp(cfg.uia_margin + (1 - cos(ud, p)) - (1 - cos(ud, n)), min=0).mean()

    def nce(a, c, tau):
        a, c = a / a.norm(dim=1, keepdim=True), c / c.norm(dim=1, keepdim=True)
        return -torch.log(torch.exp((a * c).sum(1) / tau) / torch.exp(a @ c.T / tau).sum(1)).mean()

    h_mm = model.proj["mm"](z["mm"])[pos]
    mix = 0.25 * model.proj["v"](graph.features["v"])[pos] + 0.75 * model.proj["t"](graph.features["t"])[pos]
    out["aal"] = cfg.aal_loss * (nce(h_mm, model.proj["id"](lg_i)[pos], cfg.tau) + nce(h_mm.detach(), mix, cfg.tau))

    amp = 0.0
    for m, w in zip(("mm", "t", "v"), cfg.amp_modality_weights):
        f = graph.features[m][pos]
        s = (f @ f.T) / (f.norm(dim=1, keepdim=True) * f.norm(dim=1)[None, :])
        e = z[m][pos]
        amp = amp + w * torch.sqrt(((e @ e.T - s) ** 2).sum()) / b
    out["amp"] = cfg.amp_loss * amp

    row, col, w = graph.knn_edges["mm"]
    out["smooth"] = cfg.smooth_weight * (w * ((z["mm"][row] - z["mm"][col]) ** 2).sum(1)).mean()
    out["loss"] = sum(out.values())
    return out


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="tau"):
        AnchorRecConfig(tau=0)
    with pytest.raises(ValueError, match="aal_loss"):
        AnchorRecConfig(aal_loss=-1)
    with pytest.raises(ValueError, match="amp_modality_weights"):
        AnchorRecConfig(amp_modality_weights=(1.0, 0.1))
    with pytest.raises(ValueError, match="user_lift"):
        AnchorRecConfig(user_lift="max")


def test_missing_modality_is_a_clear_error(toy):
    _, graph, _ = toy
    partial = dataclasses.replace(graph, features={"mm": graph.features["mm"]}, knn={"mm": graph.knn["mm"]})
    with pytest.raises(ValueError, match="'t'"):
        AnchorRec(partial, AnchorRecConfig())


@pytest.mark.parametrize("n_layers", [1, 3])
def test_every_term_matches_the_direct_formula(toy, n_layers):
    _, graph, batch = toy
    model = make(graph, n_layers=n_layers, aal_loss=0.5, amp_loss=0.3, smooth_weight=0.7, uia_weight=0.4, tau=0.3)
    got, want = model.batch_loss(*batch), direct(model, graph, *batch)
    assert set(got) == set(want)
    for key in want:
        assert want[key].item() != 0.0, key
        torch.testing.assert_close(got[key], want[key], rtol=2e-5, atol=1e-7, msg=key)


def test_similarity_gap_and_smoothing_identities_on_random_inputs():
    g = torch.Generator().manual_seed(1)
    e, f = torch.randn(40, 6, generator=g, dtype=torch.float64), torch.randn(40, 9, generator=g, dtype=torch.float64)
    fu = F.normalize(f, dim=1)
    direct_gap = torch.linalg.norm(e @ e.T - fu @ fu.T) / 40
    torch.testing.assert_close(similarity_gap(e, fu), direct_gap)
    # wide features (D > B) take the other Gram matrix
    fw = F.normalize(torch.randn(5, 50, generator=g, dtype=torch.float64), dim=1)
    torch.testing.assert_close(similarity_gap(e[:5], fw), torch.linalg.norm(e[:5] @ e[:5].T - fw @ fw.T) / 5)

    idx = torch.tensor([[0, 0, 1, 2, 3, 3], [1, 2, 2, 0, 3, 1]])
    w = torch.tensor([0.5, 0.2, 0.9, 0.3, 1.0, 0.4])
    k = FixedSparse(torch.sparse_coo_tensor(idx, w, (4, 4)).coalesce())
    z = torch.randn(4, 3, generator=g)
    want = (w * ((z[idx[0]] - z[idx[1]]) ** 2).sum(1)).mean()
    torch.testing.assert_close(smoothing_loss(z, k, k.row_sums() + k.col_sums()), want)


def test_fixed_sparse_rows_and_backward_match_dense():
    g = torch.Generator().manual_seed(2)
    dense = torch.randn(7, 5, generator=g) * (torch.rand(7, 5, generator=g) < 0.4)
    a = FixedSparse(dense.to_sparse())
    x = torch.randn(5, 3, generator=g, requires_grad=True)
    idx = torch.tensor([4, 0, 4])
    (a(x) ** 2).sum().backward()
    grad = x.grad.clone()
    x.grad = None
    ((dense @ x) ** 2).sum().backward()
    torch.testing.assert_close(grad, x.grad)
    wide = FixedSparse(torch.eye(40).to_sparse())  # few rows of a big matrix: the gather path
    y = torch.randn(40, 3, generator=g)
    torch.testing.assert_close(wide.rows(torch.tensor([3, 7]), y), y[[3, 7]])
    torch.testing.assert_close(a.rows(idx, x), (dense @ x)[idx])


def test_csr_mm_writes_every_row_of_its_uninitialized_buffer(monkeypatch):
    """Rows without nonzeros come out 0, whatever the buffer held (NaN here), for 1 and 70 columns."""
    dense = torch.tensor([[0.0, 0, 0], [1, 0, 2], [0, 0, 0], [0, 3, 0]])
    nan_empty = lambda *shape, **kw: torch.full(shape, float("nan"))  # noqa: E731
    for width in (1, 70):
        x = torch.randn(3, width)
        monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *shape, **kw: nan_empty(*shape))
        y = csr_mm(dense.to_sparse_csr(), x)
        monkeypatch.undo()
        torch.testing.assert_close(y, dense @ x)


@pytest.mark.parametrize(
    "field,key",
    [
        ("lambda_weight", "reg"),
        ("uia_weight", "uia"),
        ("aal_loss", "aal"),
        ("amp_loss", "amp"),
        ("smooth_weight", "smooth"),
    ],
)
def test_zero_weight_removes_exactly_that_term(toy, field, key):
    _, graph, batch = toy
    on = make(graph, aal_loss=0.5, amp_loss=0.3)
    off = AnchorRec(graph, dataclasses.replace(on.cfg, **{field: 0.0}))
    off.load_state_dict(on.state_dict())
    full, without = on.batch_loss(*batch), off.batch_loss(*batch)
    assert key not in without
    torch.testing.assert_close(without["loss"], full["loss"] - full[key], rtol=1e-5, atol=1e-6)


def test_v_branch_only_through_amp(toy):
    _, graph, batch = toy
    model = make(graph, amp_modality_weights=(1.0, 0.03, 0.0))
    model.batch_loss(*batch)["loss"].backward()
    assert model.trs["v"].weight.grad is None and model.gate["v"].weight.grad is None
    model = make(graph)
    model.batch_loss(*batch)["loss"].backward()
    assert model.gate["v"].weight.grad.abs().sum() > 0


def test_anchor_is_stopped_in_the_second_alignment_term(toy):
    _, graph, (users, pos, neg) = toy
    model = make(graph, aal_loss=1.0, tau=0.2)
    params = list(model.proj["mm"].parameters())
    aal = model.batch_loss(users, pos, neg)["aal"]
    g_all = torch.autograd.grad(aal, params)
    z_mm = model.branch("mm")
    lg_p = model.lightgcn()[N_USERS + pos]
    h_mm, h_id = model.proj["mm"](z_mm[pos]), model.proj["id"](lg_p)
    first = F.cross_entropy(F.normalize(h_mm, dim=1) @ F.normalize(h_id, dim=1).T / 0.2, torch.arange(len(pos)))
    g_first = torch.autograd.grad(first, params)
    for a, b in zip(g_all, g_first):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    # the mixture heads do learn from it
    g_t = torch.autograd.grad(model.batch_loss(users, pos, neg)["aal"], list(model.proj["t"].parameters()))
    assert sum(g.abs().sum() for g in g_t) > 0


def test_uia_anchor_gets_no_gradient():
    u = torch.randn(5, 4, requires_grad=True)
    p, n = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    loss = uia_margin_loss(u, p, n, 0.2) + 1.0  # + 1 keeps it differentiable when relu is flat
    g_u, g_p = torch.autograd.grad(loss, [u, p], allow_unused=True)
    assert g_u is None and g_p is not None


def test_projection_heads_never_reach_the_score(toy):
    _, graph, _ = toy
    for recover, changed in ((0.0, set()), (0.5, {"mm"})):
        model = make(graph, recover_lambda=recover)
        before = model.final_embeddings()
        for head in ("id", "t", "v", "mm"):
            saved = {k: v.clone() for k, v in model.proj[head].state_dict().items()}
            with torch.no_grad():
                for p in model.proj[head].parameters():
                    p.add_(torch.randn_like(p))
            after = model.final_embeddings()
            same = all(torch.equal(a, b) for a, b in zip(before, after))
            assert same == (head not in changed), (recover, head)
            model.proj[head].load_state_dict(saved)


def test_final_embeddings_are_what_the_batch_scores_and_the_evaluator_ranks(toy):
    data, graph, (users, pos, neg) = toy
    model = make(graph)
    user, item = model.final_embeddings()
    assert user.shape == (N_USERS, 64) and item.shape == (N_ITEMS, 64)
    bpr = -F.logsigmoid((user[users] * item[pos]).sum(1) - (user[users] * item[neg]).sum(1)).mean()
    torch.testing.assert_close(model.batch_loss(users, pos, neg)["bpr"], bpr, rtol=1e-5, atol=1e-6)
    # recall@5 by hand from score = user @ item.T with training items excluded
    scores = (user @ item.T).numpy()
    scores[data.train_csr.nonzero()] = -np.inf
    recalls = []
    for u in range(N_USERS):
        held = set(data.test_csr[u].indices)
        if held:
            recalls.append(len(held & set(np.argsort(-scores[u])[:5])) / len(held))
    got = ranking_metrics(user, item, data.train_csr, data.test_csr, ks=(5,), device="cpu")
    assert got["recall@5"] == pytest.approx(np.mean(recalls), abs=1e-6)


def planted(seed: int = 0):
    """4 taste groups: each user's items come from their group; features reveal the group."""
    rng = np.random.default_rng(seed)
    n_users, n_items, groups = 160, 96, 4
    item_group = np.arange(n_items) % groups
    pairs = []
    for u in range(n_users):
        own = np.flatnonzero(item_group == u % groups)
        pairs += [(u, i) for i in rng.choice(own, 10, replace=False)]
    pairs = np.array(pairs)
    split = np.tile(np.array([0] * 7 + [1, 2, 2]), n_users)
    data = interactions_from_arrays(n_users, n_items, pairs[split == 0], pairs[split == 1], pairs[split == 2])
    centers = rng.standard_normal((groups, 16))
    feats = (centers[item_group] + 0.3 * rng.standard_normal((n_items, 16))).astype(np.float32)
    graph = build_graph_data(
        data, {"mm": feats, "t": feats[:, :12].copy(), "v": feats[:, 4:].copy()}, knn_k=5, device="cpu"
    )
    return data, graph


def test_learns_a_planted_preference(tmp_path):
    from models.training.trainer import TrainConfig, fit

    data, graph = planted()
    cfg = TrainConfig(
        model="anchorrec",
        model_args={"n_layers": 1, "tau": 0.2},
        lr=0.01,
        epochs=25,
        batch_size=256,
        patience=25,
        seed=0,
    )
    metrics = fit(data, graph, cfg, tmp_path / "run", progress=False)
    random_recall = 20 / (96 - 7)  # ≈ what ranking 20 of the unseen items at random gets
    assert metrics["test"]["recall@20"] > 2.5 * random_recall, metrics["test"]


@pytest.mark.parametrize("n_layers", [0, 1, 2])
def test_branch_rows_equals_the_full_branch(n_layers):
    _, graph = planted()
    torch.manual_seed(0)
    model = AnchorRec(graph, AnchorRecConfig(n_layers=n_layers))
    rows = torch.tensor([5, 2, 5, 40])
    torch.testing.assert_close(model.branch_rows("v", rows), model.branch("v")[rows])
    z = model.branch_rows("v", rows)
    z.sum().backward()
    assert model.gate["v"].weight.grad.abs().sum() > 0


def test_without_mm_branch_mm_gets_no_gradient_and_the_score_ignores_mm(toy):
    _, graph, (users, pos, neg) = toy
    model = make(graph, mm_branch=False, aal_loss=0.5, amp_loss=0.3, smooth_weight=0.7)
    out = model.batch_loss(users, pos, neg)
    assert set(out) == {"bpr", "reg", "uia", "amp", "loss"}  # no AAL, no smoothing
    out["loss"].backward()
    mm_params = {
        "trs.mm": model.trs["mm"],
        "gate.mm": model.gate["mm"],
        "proj.mm": model.proj["mm"],
        "recover": model.recover,
        "proj.id": model.proj["id"],
    }
    for name, module in mm_params.items():
        assert all(p.grad is None for p in module.parameters()), name
    assert model.gate["t"].weight.grad.abs().sum() > 0 and model.item_emb.grad.abs().sum() > 0

    # the score is LightGCN + z_t: written out directly, and unchanged by other mm features
    adj = graph.adj.to_dense()
    ego = torch.cat([model.user_emb, model.item_emb])
    lg = (ego + adj @ ego + adj @ (adj @ ego)) / 3
    z_t = model.item_emb * torch.sigmoid(model.gate["t"](model.trs["t"](graph.features["t"])))
    for _ in range(model.cfg.n_layers):
        z_t = graph.knn["t"].to_dense() @ z_t
    user, item = model.final_embeddings()
    torch.testing.assert_close(user, lg[:N_USERS] + adj[:N_USERS, N_USERS:] @ z_t, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(item, lg[N_USERS:] + z_t, rtol=1e-5, atol=1e-6)
    other_mm = dataclasses.replace(
        graph,
        features={**graph.features, "mm": torch.randn_like(graph.features["mm"])},
        knn={**graph.knn, "mm": graph.knn["t"]},
    )
    swapped = AnchorRec(other_mm, model.cfg)
    swapped.load_state_dict(model.state_dict())
    for a, b in zip(swapped.final_embeddings(), (user, item)):
        torch.testing.assert_close(a, b)
    for key, value in swapped.batch_loss(users, pos, neg).items():
        torch.testing.assert_close(value, out[key], msg=key)


def test_without_mm_branch_the_graph_needs_no_mm(toy):
    _, graph, batch = toy
    no_mm = dataclasses.replace(
        graph, features={m: graph.features[m] for m in ("t", "v")}, knn={m: graph.knn[m] for m in ("t", "v")}
    )
    with pytest.raises(ValueError, match="'mm'"):
        AnchorRec(no_mm, AnchorRecConfig())
    full = make(graph, mm_branch=False)
    torch.manual_seed(0)
    model = AnchorRec(no_mm, AnchorRecConfig(mm_branch=False))
    model.load_state_dict({k: v for k, v in full.state_dict().items() if k in model.state_dict()})
    assert "mm" not in model.trs
    for key, value in model.batch_loss(*batch).items():
        torch.testing.assert_close(value, full.batch_loss(*batch)[key], msg=key)


@pytest.mark.parametrize(
    "change", [{"t_branch": False}, {"uia_detach": False}, {"t_branch": False, "uia_detach": False}]
)
def test_ablation_switches_match_the_direct_formula(toy, change):
    _, graph, batch = toy
    model = make(graph, aal_loss=0.5, amp_loss=0.3, **change)
    got, want = model.batch_loss(*batch), direct(model, graph, *batch)
    assert set(got) == set(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-6, msg=key)
    g_got = torch.autograd.grad(got["loss"], [model.user_emb, model.item_emb, model.gate["t"].weight])
    g_want = torch.autograd.grad(want["loss"], [model.user_emb, model.item_emb, model.gate["t"].weight])
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_without_t_branch_the_score_ignores_t_and_t_learns_only_through_amp(toy):
    _, graph, batch = toy
    model = make(graph, t_branch=False, amp_modality_weights=(1.0, 0.0, 0.01))
    model.batch_loss(*batch)["loss"].backward()
    assert model.gate["t"].weight.grad is None and model.trs["t"].weight.grad is None
    assert model.gate["mm"].weight.grad.abs().sum() > 0
    before = model.final_embeddings()
    with torch.no_grad():
        model.gate["t"].weight.add_(1.0)
    for a, b in zip(model.final_embeddings(), before):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="at least one content branch"):
        AnchorRecConfig(mm_branch=False, t_branch=False)


def test_uia_without_detach_reaches_the_user_anchor():
    u = torch.randn(5, 4, requires_grad=True)
    p, n = torch.randn(5, 4), torch.randn(5, 4)
    (g_u,) = torch.autograd.grad(uia_margin_loss(u, p, n, 2.0, detach=False), [u])  # margin 2: relu never flat
    assert g_u.abs().sum() > 0


@pytest.mark.parametrize("n_layers", [1, 2])
def test_modalities_sharing_features_and_graph_are_computed_together(toy, n_layers):
    """One table for mm, t and v (the reference run): fused gate + propagation, same numbers."""
    data, graph, batch = toy
    x = np.random.default_rng(1).standard_normal((N_ITEMS, 12)).astype(np.float32)
    shared = build_graph_data(data, {"mm": x, "t": x, "v": x}, knn_k=4, device="cpu")
    model = make(shared, n_layers=n_layers, aal_loss=0.5, amp_loss=0.3, smooth_weight=0.7, tau=0.3)
    assert model.fusable(("mm", "t")) == [("mm", "t")]
    assert make(graph).fusable(("mm", "t")) == [("mm",), ("t",)]
    fused = model.branches(("mm", "t"))
    for m in ("mm", "t"):
        torch.testing.assert_close(fused[m], model.branch(m), rtol=1e-5, atol=1e-6)
    got, want = model.batch_loss(*batch), direct(model, shared, *batch)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=2e-5, atol=1e-7, msg=key)
    got["loss"].backward()
    assert model.gate["mm"].weight.grad.abs().sum() > 0 and model.gate["t"].weight.grad.abs().sum() > 0


def test_fused_gating_value_and_gradients_match_autograd():
    """_GatedIds = ids ⊙ σ(f wᵀ + b) per gate, with the gradients autograd would give (float64)."""
    g = torch.Generator().manual_seed(3)
    f = torch.randn(40, 9, dtype=torch.float64, generator=g)
    w = torch.randn(3 * 5, 9, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(15, dtype=torch.float64, generator=g, requires_grad=True)
    ids = torch.randn(40, 5, dtype=torch.float64, generator=g, requires_grad=True)
    want = (ids[:, None, :] * torch.sigmoid(f @ w.T + b).view(40, 3, 5)).view(40, 15)
    got = _GatedIds.apply(f, w, b, ids)
    torch.testing.assert_close(got, want)
    upstream = torch.randn(40, 15, dtype=torch.float64, generator=g)
    grads_want = torch.autograd.grad(want, (w, b, ids), upstream)
    grads_got = torch.autograd.grad(got, (w, b, ids), upstream)
    for name, a, e in zip(("w", "b", "ids"), grads_got, grads_want):
        torch.testing.assert_close(a, e, msg=name)
    assert torch.autograd.gradcheck(lambda w, b, ids: _GatedIds.apply(f, w, b, ids), (w, b, ids))


def test_fused_branches_give_the_gradients_of_separate_branches(toy):
    """The fused gate + propagation sends every parameter the gradient of the branch-by-branch sum."""
    data, graph, batch = toy
    x = np.random.default_rng(2).standard_normal((N_ITEMS, 12)).astype(np.float32)
    shared = build_graph_data(data, {"mm": x, "t": x, "v": x}, knn_k=4, device="cpu")
    model = make(shared, n_layers=2)
    weights = {"mm": 0.7, "t": -1.3}
    fused = model.branches(("mm", "t"))
    sum(w * (fused[m] ** 2).sum() for m, w in weights.items()).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    sum(w * (model.branch(m) ** 2).sum() for m, w in weights.items()).backward()
    want = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert sorted(got) == sorted(want) and {"item_emb", "gate.mm.weight", "trs.t.weight"} <= set(got)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("n_layers", [0, 1, 3])
def test_bipartite_lightgcn_equals_the_layer_mean_on_the_whole_graph(toy, n_layers):

    _, graph, (users, pos, neg) = toy
    model = make(graph, n_ui_layers=n_layers)
    ego = torch.cat([model.user_emb, model.item_emb])
    whole = lightgcn_mean(FixedSparse(graph.adj), ego, n_layers)
    u, i = bipartite_lightgcn(model.r, model.rt, model.user_emb, model.item_emb, n_layers)
    torch.testing.assert_close(torch.cat([u, i]), whole, rtol=1e-5, atol=1e-6)
    items = torch.cat([pos, neg])
    u_b, i_b = bipartite_lightgcn(model.r, model.rt, model.user_emb, model.item_emb, n_layers, users, items)
    torch.testing.assert_close(u_b, whole[users], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(i_b, whole[N_USERS + items], rtol=1e-5, atol=1e-6)


def test_amp_with_only_the_switched_off_mm_term_is_a_zero_tensor(toy):
    """mm_branch off and AMP weighing mm alone: no term is on, and the loss entry is still a tensor
    (the trainer logs every entry with .detach(); a float 0.0 crashed it)."""
    _, graph, batch = toy
    model = make(graph, mm_branch=False, amp_modality_weights=(1.0, 0.0, 0.0))
    out = model.batch_loss(*batch)
    assert isinstance(out["amp"], torch.Tensor) and out["amp"].item() == 0.0
    out["loss"].backward()
