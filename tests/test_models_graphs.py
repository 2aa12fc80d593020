"""Graphs: adjacency normalization values, kNN graph vs the exact dense computation, caching."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from models.training import graphs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dense_reference_knn(x: np.ndarray, k: int, include_self: bool) -> np.ndarray:
    """The reference's construction, densely: cosine matrix, top-k per row, w/sqrt(d_i d_j)."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = xn @ xn.T
    if not include_self:
        np.fill_diagonal(s, -np.inf)
    top = np.argsort(-s, axis=1)[:, :k]
    w = np.zeros_like(s)
    rows = np.arange(len(x))[:, None]
    w[rows, top] = s[rows, top]
    deg = w.sum(axis=1)
    dis = deg**-0.5
    return dis[:, None] * w * dis[None, :]


def test_normalized_adjacency_values():
    r = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 1]], dtype=np.float32))
    a = graphs.normalized_adjacency(r).toarray()
    # degrees: u0=2, u1=2, i0=1, i1=2, i2=1 → Â_ui = 1/sqrt(d_u d_i)
    expected = np.zeros((5, 5))
    for u, i in [(0, 0), (0, 1), (1, 1), (1, 2)]:
        d_u, d_i = 2, [1, 2, 1][i]
        expected[u, 2 + i] = expected[2 + i, u] = 1 / np.sqrt(d_u * d_i)
    np.testing.assert_allclose(a, expected, rtol=1e-6)
    assert a[0, 2] == pytest.approx(1 / np.sqrt(2)) and a[0, 3] == pytest.approx(0.5)


def test_isolated_nodes_get_zero_rows_not_nan():
    r = sp.csr_matrix(np.array([[1, 0, 0], [0, 0, 0]], dtype=np.float32))  # user 1, items 1-2 isolated
    a = graphs.normalized_adjacency(r).toarray()
    assert np.isfinite(a).all() and a[1].sum() == 0 and a[0, 2] == pytest.approx(1.0)


def test_row_normalized_and_user_item_block():
    r = sp.csr_matrix(np.array([[1, 1, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=np.float32))
    rn = graphs.row_normalized(r).toarray()
    np.testing.assert_allclose(rn[0], [1 / 3, 1 / 3, 0, 1 / 3], rtol=1e-6)
    assert rn[2].sum() == 0
    block = graphs.user_item_block(r).toarray()
    full = graphs.normalized_adjacency(r).toarray()
    np.testing.assert_allclose(block, full[:3, 3:], rtol=1e-6)


@pytest.mark.parametrize("include_self", [True, False])
def test_knn_graph_equals_dense_exact(include_self):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    g = graphs.knn_graph(x, k=7, include_self=include_self, block=64)  # several query blocks
    expected = dense_reference_knn(x.astype(np.float64), 7, include_self)
    np.testing.assert_allclose(g.toarray(), expected, atol=1e-5)
    assert g.nnz == 300 * 7
    assert (g.diagonal() > 0).all() == include_self and (g.diagonal() == 0).all() != include_self


def test_knn_ivf_path_matches_exact_when_probing_every_list():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2000, 8)).astype(np.float32)
    exact_i, exact_s = graphs.knn_search(x, 5, include_self=False, exact=True)
    ivf_i, ivf_s = graphs.knn_search(x, 5, include_self=False, exact=False, nprobe=10_000)
    np.testing.assert_array_equal(np.sort(ivf_i, 1), np.sort(exact_i, 1))
    np.testing.assert_allclose(ivf_s, exact_s, atol=1e-5)


def clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n // 100, d)).astype(np.float32)
    return rng.standard_normal((n, d)).astype(np.float32) + 1.5 * centers[rng.integers(0, len(centers), n)]


@pytest.mark.parametrize("include_self", [True, False])
def test_knn_ivf_sq8_reranked_equals_exact(monkeypatch, include_self):
    x = clustered(3000, 24, seed=4)
    x *= np.random.default_rng(5).uniform(0.5, 3.0, (len(x), 1)).astype(np.float32)  # unequal norms
    before = x.copy()
    exact_i, exact_s = graphs.knn_search(x, 6, include_self=include_self, exact=True)
    monkeypatch.setattr(graphs, "EXACT_MAX", 100)  # force the IVF path through the default switch
    built = []
    real_build = graphs._build_index
    monkeypatch.setattr(graphs, "_build_index", lambda *a: built.append(real_build(*a)) or built[-1])
    # every list probed: only the 8-bit codes approximate, and re-ranking must undo that
    ivf_i, ivf_s = graphs.knn_search(x, 6, include_self=include_self, block=700, nprobe=10_000)
    assert isinstance(built[0], faiss.IndexIVFScalarQuantizer)
    np.testing.assert_array_equal(x, before)  # the caller's features are not normalized in place
    np.testing.assert_array_equal(np.sort(ivf_i, 1), np.sort(exact_i, 1))
    # re-ranked similarities are exact cosines (the 8-bit codes alone are off by ~1e-3)
    np.testing.assert_allclose(ivf_s, exact_s, atol=1e-5)
    assert (np.diff(ivf_s, axis=1) <= 1e-6).all()  # best first


def test_rerank_missing_candidates_rank_last():
    x = np.eye(4, dtype=np.float32) + 0.1
    q = graphs._normalize_rows(x[:1])
    inv = graphs._inverse_norms(x, block=2)
    i, s = graphs._rerank(x, inv, q, np.array([[-1, 2, 0, -1]]), k=3)
    assert i.tolist() == [[0, 2, -1]]
    np.testing.assert_allclose(
        s[0, :2], [1.0, 0.24 / 1.24], rtol=1e-5
    )  # rows 0 and 2: 2·0.11 + 2·0.01 over ‖·‖² = 1.24
    assert s[0, 2] == np.finfo(np.float32).min


def test_knn_zero_vector_rows_do_not_produce_nan():
    x = np.random.default_rng(2).standard_normal((50, 4)).astype(np.float32)
    x[3] = 0.0
    g = graphs.knn_graph(x, k=4)
    assert np.isfinite(g.data).all()


def test_knn_graph_cached_by_content_and_k(tmp_path, monkeypatch):
    x = np.random.default_rng(3).standard_normal((100, 8)).astype(np.float32)
    g1 = graphs.knn_graph(x, k=5, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("knn-*-k5-*.npz"))) == 1

    def boom(*a, **k):
        raise AssertionError("should have been read from the cache")

    monkeypatch.setattr(graphs, "knn_search", boom)
    g2 = graphs.knn_graph(x, k=5, cache_dir=tmp_path)
    assert (g1 != g2).nnz == 0
    with pytest.raises(AssertionError):  # another k is another graph
        graphs.knn_graph(x, k=6, cache_dir=tmp_path)
    with pytest.raises(AssertionError):  # other features are another graph
        graphs.knn_graph(x + 1, k=5, cache_dir=tmp_path)


def test_spmm_gradient_matches_torch_sparse():
    rng = np.random.default_rng(4)
    r = sp.random(20, 15, density=0.2, random_state=4, format="csr", dtype=np.float32)
    r.data[:] = 1
    a = graphs.to_torch_sparse(graphs.normalized_adjacency(r))
    x = torch.tensor(rng.standard_normal((35, 3)), dtype=torch.float32, requires_grad=True)
    w = torch.tensor(rng.standard_normal((35, 3)), dtype=torch.float32)
    (graphs.spmm(a, graphs.spmm(a, x)) * w).sum().backward()
    g1 = x.grad.clone()
    x.grad = None
    (torch.sparse.mm(a, torch.sparse.mm(a, x)) * w).sum().backward()
    torch.testing.assert_close(g1, x.grad)
    # non-symmetric: pass the transpose
    ui = graphs.to_torch_sparse(graphs.row_normalized(r))
    y = torch.tensor(rng.standard_normal((15, 3)), dtype=torch.float32, requires_grad=True)
    graphs.spmm(ui, y, graphs.to_torch_sparse(graphs.row_normalized(r).T)).sum().backward()
    g2 = y.grad.clone()
    y.grad = None
    torch.sparse.mm(ui, y).sum().backward()
    torch.testing.assert_close(g2, y.grad)


def test_build_graph_data_shapes_and_shared_knn():
    from models_fixtures import planted

    from models.training.data import build_graph_data

    data = planted(n_users=40, n_items=30, n_groups=2, per_user=6)
    f = np.random.default_rng(5).standard_normal((30, 12)).astype(np.float32)
    g = build_graph_data(data, {"mm": f, "t": f.copy(), "v": f[:, :6]}, knn_k=4, device="cpu")
    assert g.adj.shape == (70, 70) and g.ui.shape == (40, 30) and g.ui_sym.shape == (40, 30)
    torch.testing.assert_close(g.ui.to_dense().sum(1), torch.ones(40))
    assert g.knn["t"] is g.knn["mm"]  # same content → one graph
    assert g.features["t"].data_ptr() != g.features["mm"].data_ptr()  # but own feature storage
    assert g.features["v"].shape == (30, 6) and not torch.equal(g.knn["v"].to_dense(), g.knn["mm"].to_dense())
    row, col, w = g.knn_edges["mm"]
    dense = torch.zeros(30, 30)
    dense[row, col] = w
    torch.testing.assert_close(dense, g.knn["mm"].to_dense())
    np.testing.assert_array_equal(g.item_pop.numpy(), np.asarray(data.train_csr.sum(0)).ravel())
