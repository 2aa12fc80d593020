"""LightGCN: the loss equals its formula on a dense computation; it learns a planted preference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from models_fixtures import planted

from models.evaluation.metrics import ranking_metrics
from models.lightgcn import LightGCN, LightGCNConfig
from models.registry import make_model
from models.training.data import build_graph_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_batch_loss_matches_dense_formula():
    data = planted(n_users=30, n_items=20, n_groups=2, per_user=6)
    graph = build_graph_data(data, {}, device="cpu")
    torch.manual_seed(0)
    model = LightGCN(graph, LightGCNConfig(dim=8, n_layers=2, reg_weight=0.3))
    users, pos, neg = torch.tensor([0, 1, 5]), torch.tensor([2, 3, 4]), torch.tensor([7, 8, 9])
    terms = model.batch_loss(users, pos, neg)

    a = graph.adj.to_dense()
    e0 = torch.cat([model.user_emb.weight, model.item_emb.weight]).detach()
    e = (e0 + a @ e0 + a @ a @ e0) / 3
    u, i = e[:30], e[30:]
    bpr = -F.logsigmoid((u[users] * i[pos]).sum(1) - (u[users] * i[neg]).sum(1)).mean()
    reg = 0.3 * 0.5 * (e0[users].pow(2).sum() + e0[30 + pos].pow(2).sum() + e0[30 + neg].pow(2).sum()) / 3
    assert terms["bpr"].item() == pytest.approx(bpr.item(), rel=1e-5)
    assert terms["reg"].item() == pytest.approx(reg.item(), rel=1e-5)
    assert terms["loss"].item() == pytest.approx((bpr + reg).item(), rel=1e-5)
    fu, fi = model.final_embeddings()
    torch.testing.assert_close(fu, u, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fi, i, rtol=1e-5, atol=1e-6)


def test_learns_planted_preference():
    data = planted()
    graph = build_graph_data(data, {}, device="cpu")
    torch.manual_seed(0)
    model = make_model("lightgcn", graph, dim=32)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    before = ranking_metrics(*model.final_embeddings(), data.train_csr, data.test_csr, device="cpu")
    rng = np.random.default_rng(0)
    for _ in range(15):
        for idx in np.array_split(rng.permutation(len(data.train)), 8):
            u, p = torch.as_tensor(data.train[idx, 0]), torch.as_tensor(data.train[idx, 1])
            n = torch.as_tensor(rng.integers(0, data.n_items, len(idx)))
            loss = model.batch_loss(u, p, n)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    after = ranking_metrics(*model.final_embeddings(), data.train_csr, data.test_csr, device="cpu")
    assert before["recall@20"] < 0.2
    assert after["recall@20"] > 0.45, after


def test_make_model_rejects_unknown_argument():
    graph = build_graph_data(planted(n_users=10, n_items=10, n_groups=2, per_user=4), {}, device="cpu")
    with pytest.raises(ValueError, match="reg_weight"):  # the message lists valid keys
        make_model("lightgcn", graph, regweight=1.0)
    with pytest.raises(ValueError, match="known models"):
        make_model("nope", graph)
    with pytest.raises(ValueError, match="n_layers"):
        LightGCNConfig(n_layers=-1)
