"""DA-MRS: parity with MMRec's class on a tiny fixed input, its sparse graphs, and learning."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from models_fixtures import planted

from models import damrs
from models.backbone import bipartite_lightgcn
from models.damrs import (
    DAMRS,
    DAMRSConfig,
    behaviour_edges,
    masked_knn_edges,
    mean_similarity,
)
from models.training.data import build_graph_data, interactions_from_arrays
from models.training.trainer import TrainConfig, fit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks.*
from benchmarks.parity import damrs_parity as P  # noqa: E402
from benchmarks.parity import tiny  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# printed by benchmarks/parity/damrs_parity.py (MMRec's DAMRS on its 8 × 24 tiny input, knn_k 3,
# the cases' settings in P.CASES, the behaviour graph the authors' build_iib_graph.py writes): loss,
# and fingerprints (norm, probe sum) of each gradient and of the user × item score matrix.
MMREC = {
    "damrs": {
        "loss": 0.3753410279750824,
        "scores": (1.4168759243388445, 1.9848777256516876),
        "grads": {
            "user_emb.weight": (0.03680609759118244, 0.024157349321047687),
            "item_emb.weight": (0.06781092455748787, -0.06427045115793242),
        },
    },
    "damrs_same": {
        "loss": 0.37731269001960754,
        "scores": (1.4327205446385876, 2.406306489348883),
        "grads": {
            "user_emb.weight": (0.03460914368113143, 0.0232610127253114),
            "item_emb.weight": (0.06781878091668794, -0.05840846074596369),
        },
    },
    "damrs_deep": {
        "loss": 0.36941593885421753,
        "scores": (1.7164349076130538, 2.109793931390009),
        "grads": {
            "user_emb.weight": (0.03424537652799292, 0.021850494168333734),
            "item_emb.weight": (0.05602919004044937, 0.008848958522098539),
        },
    },
}
# the behaviour graph the authors' build_iib_graph.py (XMUDM/DA-MRS) writes for the tiny pairs with
# --topk 2 (item → its neighbours; items not listed have none): printed by the same script.
# Items 4 and 7 have ties at the cut, broken by torch.topk, not by index.
AUTHORS_GRAPH = {
    4: [17, 15],
    5: [4, 17],
    6: [7],
    7: [15, 4],
    11: [18, 4],
    13: [4],
    15: [4, 7],
    17: [4, 5],
    18: [11],
    19: [20],
    20: [19],
    21: [4],
    23: [5],
}
# float32 noise: the neighbour term sums e^{cos/0.2} (up to e^5) and subtracts two such sums; our
# own float64 run moves the item gradient's probe sum by 1.3e-5, as far as MMRec's float32 run is
GRAD_ATOL = 5e-5


def tiny_graph(same: bool):
    train = P.train_pairs()
    data = interactions_from_arrays(P.N_USERS, P.N_ITEMS, train, train[:0], train[:0])
    return build_graph_data(data, P.features(same), knn_k=P.KNN_K, device="cpu")


def tiny_model(case: str) -> DAMRS:
    args = {k: v for k, v in P.CASES[case].items() if k != "same"}
    return DAMRS(tiny_graph(P.CASES[case]["same"]), DAMRSConfig(embedding_dim=P.DIM, knn_k=P.KNN_K, **args))


@pytest.mark.parametrize("case", sorted(MMREC))
def test_loss_gradients_and_scores_equal_mmrec(case):
    model, expected = tiny_model(case), MMREC[case]
    params = dict(model.named_parameters())
    assert set(params) == set(expected["grads"]), "the ID tables are DA-MRS's only trained parameters"
    with torch.no_grad():
        for name, value in P.weights().items():
            params[name].copy_(torch.as_tensor(value))
    loss = model.batch_loss(*(torch.as_tensor(x) for x in P.batch_arrays()))["loss"]
    loss.backward()
    np.testing.assert_allclose(float(loss.detach()), expected["loss"], rtol=1e-5)
    for name, ref in expected["grads"].items():
        np.testing.assert_allclose(
            tiny.fingerprint(params[name].grad.numpy()), ref, rtol=1e-4, atol=GRAD_ATOL, err_msg=name
        )
    u, i = model.final_embeddings()
    np.testing.assert_allclose(tiny.fingerprint((u @ i.T).numpy()), expected["scores"], rtol=1e-5, atol=1e-6)


def dense_masked_knn(feats: dict[str, np.ndarray], k: int) -> dict[str, set]:
    """MMRec's rule on the full N × N matrices: mask below either mean, top min(k, kept) per row."""
    sims = {}
    for m, f in feats.items():
        x = f / np.linalg.norm(f, axis=1, keepdims=True)
        sims[m] = x @ x.T
    keep = np.logical_and.reduce([s >= s.mean() for s in sims.values()])
    out = {}
    for m, s in sims.items():
        masked = np.where(keep, s, -np.inf)
        out[m] = {(i, j) for i in range(len(s)) for j in np.argsort(-masked[i], kind="stable")[: min(k, keep[i].sum())]}
    return out


def test_masked_knn_equals_the_dense_rule_without_an_n_by_n_matrix():
    rng = np.random.default_rng(3)
    n, k = 90, 4  # 8·k = 32 candidates of 90 items: the candidate search is exercised
    feats = {"t": rng.standard_normal((n, 6)).astype(np.float32), "v": rng.standard_normal((n, 5)).astype(np.float32)}
    ours = masked_knn_edges(feats, k)
    ref = dense_masked_knn(feats, k)
    for m in feats:
        rows, cols = ours[m]
        assert set(zip(rows.tolist(), cols.tolist())) == ref[m], m
        assert (np.bincount(rows, minlength=n) <= k).all() and (rows == cols).sum() == n  # itself always kept
    x = feats["t"] / np.linalg.norm(feats["t"], axis=1, keepdims=True)
    assert mean_similarity(x) == pytest.approx(float((x @ x.T).mean()), rel=1e-6)
    # the text mask matters: the v graph is not v's plain top-k
    xv = feats["v"] / np.linalg.norm(feats["v"], axis=1, keepdims=True)
    plain = {(i, j) for i in range(n) for j in np.argsort(-(xv @ xv.T)[i], kind="stable")[:k]}
    assert len(ref["v"] - plain) > n // 2


@pytest.mark.parametrize("dense_block", [damrs.DENSE_BLOCK, 24 * 5])  # one block; five blocks of 5 rows
def test_behaviour_graph_is_the_authors_build_iib_graph(monkeypatch, dense_block):
    monkeypatch.setattr(damrs, "DENSE_BLOCK", dense_block)
    g = tiny_graph(False)
    rows, cols = behaviour_edges(g.ui, damrs.DAMRSConfig().behaviour_k, damrs.DAMRSConfig().behaviour_min_users)
    expected = {(i, i) for i in range(P.N_ITEMS)} | {(i, j) for i, nb in AUTHORS_GRAPH.items() for j in nb}
    assert set(zip(rows.tolist(), cols.tolist())) == expected
    assert len(rows) == len(expected)  # no duplicates


def test_behaviour_graph_needs_the_common_users_and_keeps_the_top_k():
    """Three users: items 0 and 1 share 3 users, 0 and 2 share 2, 0 and 3 share 1 (below the 2)."""
    pairs = np.array([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2], [2, 0], [2, 1], [2, 3]])
    data = interactions_from_arrays(3, 4, pairs, pairs[:0], pairs[:0])
    ui = build_graph_data(data, {"t": np.eye(4, dtype=np.float32)}, knn_k=2, device="cpu").ui
    edges = lambda k, m: set(zip(*(a.tolist() for a in behaviour_edges(ui, k, m))))  # noqa: E731
    selfs = {(i, i) for i in range(4)}
    assert edges(2, 2) == selfs | {(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)}
    top1 = edges(1, 2) - selfs
    assert {(0, 1), (1, 0)} <= top1 and len(top1) == 3  # 0 and 1: each other's top item (3 users)
    assert len({j for i, j in top1 if i == 2} & {0, 1}) == 1  # 2 shares 2 users with 0 and with 1: a tie, one kept
    assert edges(2, 3) == selfs | {(0, 1), (1, 0)}
    assert (0, 3) in edges(3, 1) and (0, 3) not in edges(3, 2)


def test_text_only_setup_uses_one_graph_for_t_and_v():
    train = P.train_pairs()
    data = interactions_from_arrays(P.N_USERS, P.N_ITEMS, train, train[:0], train[:0])
    g = build_graph_data(data, {"t": P.features(False)["t"]}, knn_k=P.KNN_K, device="cpu")
    model = DAMRS(g, DAMRSConfig(embedding_dim=P.DIM, knn_k=P.KNN_K))
    h_t, h_v, h_s = model.views()
    torch.testing.assert_close(h_t, h_v)
    assert not torch.allclose(h_t, h_s)
    u, i = model.final_embeddings()
    assert u.shape == (P.N_USERS, P.DIM) and i.shape == (P.N_ITEMS, P.DIM)
    out = model.batch_loss(*(torch.as_tensor(x) for x in P.batch_arrays()))
    assert set(out) == {"bpr", "neighbour", "kl", "loss"} and torch.isfinite(out["loss"])
    same = tiny_model("damrs_same")  # t = v as two equal tables: one graph, one view
    assert same.s_t is same.s_v and tiny_model("damrs").s_t is not tiny_model("damrs").s_v


def test_config_validation():
    with pytest.raises(ValueError, match="knn_k"):
        DAMRSConfig(knn_k=0)
    with pytest.raises(ValueError, match="kl_weight"):
        DAMRSConfig(kl_weight=-1)
    with pytest.raises(ValueError, match="n_ui_layers"):
        DAMRSConfig(n_ui_layers=-1)


def test_trains_through_the_trainer_and_learns_the_planted_preference(tmp_path):
    data = planted(n_users=120, n_items=60, n_groups=3, per_user=10)
    rng = np.random.default_rng(1)
    graph = build_graph_data(
        data,
        {"t": rng.standard_normal((60, 8)).astype(np.float32), "v": rng.standard_normal((60, 6)).astype(np.float32)},
        knn_k=4,
        device="cpu",
    )
    cfg = TrainConfig(model="damrs", model_args={"embedding_dim": 16}, epochs=30, batch_size=256, lr=0.01, patience=30)
    m = fit(data, graph, cfg, tmp_path / "run", progress=False)
    losses = [h["loss"] for h in m["history"]]
    assert all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0]
    assert m["test"]["recall@20"] > 0.8  # random ranking: about 0.38


def dense_labels(total: torch.Tensor, p_m: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MMRec's pseudo-labels: top k of total + p_m, then zero those in a copy of p_m and rank it again."""
    mm = torch.topk(total + p_m, k, dim=1).indices
    single = torch.topk(p_m.clone().scatter_(1, mm, 0), k, dim=1).indices
    return mm, single


def dense_neighbour_term(qs: dict, keys: dict, k: int) -> torch.Tensor:
    """The whole batch × N matrices at once, autograd through all of them (MMRec's form, straight)."""
    cos = {m: qs[m] @ keys[m].T for m in qs}
    with torch.no_grad():
        probs = {m: torch.softmax(c, dim=1) for m, c in cos.items()}
        total = probs[0] + probs.get(1, probs[0]) + probs[2]
    nd = {}
    for m in qs:
        with torch.no_grad():
            mm, single = dense_labels(total, probs[m], k)
        e = torch.exp(cos[m] / damrs.TEMPERATURE)
        mm_s, single_s, all_s = e.gather(1, mm).sum(1), e.gather(1, single).sum(1), e.sum(1)
        nd[m] = (-torch.log(mm_s / all_s + 1e-9) - torch.log(single_s / (all_s - mm_s) + 1e-9)).mean()
    return nd


# e^{cos/τ} kept for the backward: none (all recomputed), 3 of the 43 chunks of 7 × 500 float64, all
@pytest.mark.parametrize("cache", [0, 3 * 7 * 500 * 8, damrs.EXP_CACHE])
@pytest.mark.parametrize("views", [(0, 2), (0, 1, 2)])
def test_chunked_neighbour_term_equals_the_whole_matrices(monkeypatch, views, cache):
    """Row chunks of 7 over 300 batch items and 500 items: same pseudo-labels, loss and gradients."""
    monkeypatch.setattr(damrs, "ROW_CHUNK", 7)
    monkeypatch.setattr(damrs, "EXP_CACHE", cache)
    monkeypatch.setattr(damrs, "TOPK_BLOCK", 4)  # 125 blocks of 500 items: row_topk's block ranking
    gen = torch.Generator().manual_seed(5)
    base = {m: torch.randn(500, 8, generator=gen, dtype=torch.float64) for m in views}
    batch = torch.randperm(500, generator=gen)[:300]

    def run(chunked: bool) -> tuple[torch.Tensor, dict]:
        h = {m: b.clone().requires_grad_(True) for m, b in base.items()}
        qs = {m: torch.nn.functional.normalize(h[m][batch], dim=1) for m in views}
        keys = {m: torch.nn.functional.normalize(h[m], dim=1) for m in views}
        if chunked:
            labels, sums, kept = damrs.ranked_views(
                {m: q.detach() for m, q in qs.items()}, {m: x.detach() for m, x in keys.items()}, 10
            )
            n_kept = sum(c is not None for m in views for c in kept[m])
            assert n_kept == min(43 * len(views), cache // (7 * 500 * 8))
            loss = sum(
                damrs.neighbour_loss(*labels[m], qs[m], keys[m], damrs.ExpSum.apply(qs[m], keys[m], sums[m], kept[m]))
                for m in views
            )
        else:
            loss = sum(dense_neighbour_term(qs, keys, 10).values())
        loss.backward()
        return loss.detach(), {m: h[m].grad for m in views}

    (loss_c, grad_c), (loss_d, grad_d) = run(True), run(False)
    torch.testing.assert_close(loss_c, loss_d, rtol=1e-12, atol=0)
    for m in views:
        assert grad_d[m].abs().sum() > 0
        torch.testing.assert_close(grad_c[m], grad_d[m], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("n", [64 * 40, 64 * 40 + 37, 20000])
@pytest.mark.parametrize("k", [1, 10, 20])
def test_row_topk_equals_torch_topk(n, k):
    gen = torch.Generator().manual_seed(n + k)
    x = torch.randn(50, n, generator=gen, dtype=torch.float64)  # no ties
    x[0] = torch.arange(n, dtype=torch.float64)  # the best all in the last (short) block
    x[1] = -torch.arange(n, dtype=torch.float64)  # all in the first block
    x[2, : 64 * k] += 100  # the best k blocks hold all the top values
    x[3, torch.randperm(n, generator=gen)[:k]] += 100  # each in its own block
    torch.testing.assert_close(damrs.row_topk(x, k), torch.topk(x, k, dim=1).indices, rtol=0, atol=0)
    f = x.float() * 1e-3 + 0.5  # float32, values as close as the pseudo-labels': ties, where either may come
    torch.testing.assert_close(f.gather(1, damrs.row_topk(f, k)), torch.topk(f, k, dim=1).values, rtol=0, atol=0)


def test_symmetric_kl_from_logits_equals_the_two_bernoulli_kls():
    gen = torch.Generator().manual_seed(2)
    a0, b0 = torch.randn(2, 40, 30, generator=gen, dtype=torch.float64) * 3
    out = []
    for fused in (True, False):
        a, b = a0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
        if fused:
            kl = damrs.SymmetricKL.apply(a * 1.0, b * 1.0)  # its inputs: intermediate results, as in batch_loss
        else:
            p, q = torch.sigmoid(a), torch.sigmoid(b)
            kl = (damrs.bernoulli_kl(p, q) + damrs.bernoulli_kl(q, p)).mean()
        (kl * 3.0).backward()
        out.append((kl.detach(), a.grad, b.grad))
    for x, y in zip(*out):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)


def reference_batch_loss(model: DAMRS, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """DA-MRS's loss written straight, as MMRec computes it: whole matrices, softmax, the eight logs."""
    cfg = model.cfg
    u_all, i_all = bipartite_lightgcn(model.r, model.rt, model.user_emb.weight, model.item_emb.weight, cfg.n_ui_layers)
    h_t, h_v, h_s = views = model.views()
    uniq_u, uniq_i = torch.unique(users), torch.unique(torch.cat([pos, neg]))
    F = torch.nn.functional
    qs = {m: F.normalize(views[m][uniq_i], dim=1) for m in range(3)}
    keys = {m: F.normalize(views[m], dim=1) for m in range(3)}
    nd = dense_neighbour_term(qs, keys, model.pseudo_k)
    neighbour = cfg.neighbor_weight * (nd[2] + nd[1] + nd[0]) / 3.0
    p_g = torch.sigmoid(u_all[uniq_u] @ F.normalize(i_all[uniq_i], dim=-1).T)
    p_c = torch.sigmoid(u_all[uniq_u] @ F.normalize(((h_t + h_v + h_s) / 3.0)[uniq_i], dim=-1).T)
    kl = cfg.kl_weight * (damrs.bernoulli_kl(p_g, p_c) + damrs.bernoulli_kl(p_c, p_g)).mean()
    u = u_all[users]
    w_pos, w_neg = damrs.pair_weights(u, [h[pos] for h in views], [h[neg] for h in views])
    x = (u * (i_all[pos] + (h_t[pos] + h_v[pos] + h_s[pos]) / 3.0)).sum(1) - (
        u * (i_all[neg] + (h_t[neg] + h_v[neg] + h_s[neg]) / 3.0)
    ).sum(1)
    bpr = -(F.logsigmoid(x) * w_pos + F.logsigmoid(-x) * w_neg).mean()
    return bpr + neighbour + kl


@pytest.mark.parametrize("case", sorted(MMREC))
@pytest.mark.parametrize("cache", [0, 10**9])
def test_batch_loss_and_gradients_equal_the_straight_computation(monkeypatch, case, cache):
    """Row chunks of 3 (some kept for the backward, some recomputed) against the whole matrices, float64."""
    monkeypatch.setattr(damrs, "ROW_CHUNK", 3)
    monkeypatch.setattr(damrs, "EXP_CACHE", cache)
    model = tiny_model(case).double()
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))  # larger than the init: σ away from ½
    users, pos, neg = (torch.as_tensor(x) for x in P.batch_arrays())
    results = []
    for fn in (lambda: model.batch_loss(users, pos, neg)["loss"], lambda: reference_batch_loss(model, users, pos, neg)):
        model.zero_grad()
        loss = fn()
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss, grads), (ref_loss, ref_grads) = results
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=0)
    for name, g in ref_grads.items():
        assert g.abs().sum() > 0
        torch.testing.assert_close(grads[name], g, rtol=1e-10, atol=1e-13, msg=name)
