"""The fixed graphs models propagate over: the user–item graph and item–item kNN graphs.

The kNN graph is found with FAISS one block of queries at a time, so no N × N similarity matrix
ever exists (the reference builds one densely: 1.3 GB at 18k items, impossible at 10^6).
Up to EXACT_MAX items the search is exact (IndexFlatIP); above it an inverted-file index with
8-bit codes (IVF-SQ8) proposes candidates that are re-ranked exactly against the caller's float32
features, which makes 10^6 items feasible on two cores in under 4 GB, at a recall the benchmark
measures.

kNN graph semantics follow the reference (LATTICE/FREEDOM/AnchorRec `build_knn_normalized_graph`
with norm 'sym'): per item the top-k cosine neighbours, weighted by the cosine, normalized as
w_ij / sqrt(d_i d_j) with d_i the row sum of weights. `include_self=True` (the reference's
behaviour: its top-k runs over a similarity matrix whose diagonal is 1, so the item itself is
one of its k) keeps the item's own embedding in the propagation; `include_self=False` gives k
true neighbours.
"""

from __future__ import annotations

import logging
import time
import warnings
import weakref
from pathlib import Path

import faiss
import numpy as np
import scipy.sparse as sp
import torch

from store.tables import atomic_path
from store.vectors import array_hash

log = logging.getLogger(__name__)

EXACT_MAX = 200_000  # items up to which the kNN search is brute force (exact)


def normalized_adjacency(train_csr: sp.csr_matrix) -> sp.csr_matrix:
    """D^-1/2 A D^-1/2 of the bipartite graph A = [[0, R], [Rᵀ, 0]] (users first, then items)."""
    r = sp.csr_matrix(train_csr, dtype=np.float32)
    a = sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float32)
    deg = np.asarray(a.sum(axis=1)).ravel()
    d_inv_sqrt = np.zeros_like(deg)
    d_inv_sqrt[deg > 0] = deg[deg > 0] ** -0.5
    d = sp.diags(d_inv_sqrt.astype(np.float32))
    out = (d @ a @ d).tocsr().astype(np.float32)
    out.sort_indices()
    return out


def user_item_block(train_csr: sp.csr_matrix) -> sp.csr_matrix:
    """The user × item block of the normalized adjacency: D_u^-1/2 R D_i^-1/2 (the reference's R)."""
    r = sp.csr_matrix(train_csr, dtype=np.float32)
    du = np.asarray(r.sum(axis=1)).ravel()
    di = np.asarray(r.sum(axis=0)).ravel()
    du = np.where(du > 0, np.maximum(du, 1e-12) ** -0.5, 0.0).astype(np.float32)
    di = np.where(di > 0, np.maximum(di, 1e-12) ** -0.5, 0.0).astype(np.float32)
    return (sp.diags(du) @ r @ sp.diags(di)).tocsr().astype(np.float32)


def row_normalized(train_csr: sp.csr_matrix) -> sp.csr_matrix:
    """Each user's row divided by their number of training items: users as the mean of their items."""
    r = sp.csr_matrix(train_csr, dtype=np.float32)
    deg = np.asarray(r.sum(axis=1)).ravel()
    inv = np.zeros_like(deg)
    inv[deg > 0] = 1.0 / deg[deg > 0]
    return (sp.diags(inv.astype(np.float32)) @ r).tocsr().astype(np.float32)


def to_torch_sparse(m: sp.spmatrix, device: str | torch.device = "cpu") -> torch.Tensor:
    """scipy → torch sparse COO (coalesced), which supports autograd through torch.sparse.mm."""
    coo = sp.coo_matrix(m)
    idx = torch.as_tensor(np.vstack([coo.row, coo.col]).astype(np.int64))
    vals = torch.as_tensor(coo.data.astype(np.float32))
    return torch.sparse_coo_tensor(idx, vals, coo.shape, check_invariants=False).coalesce().to(device)


def _normalize_rows(x: np.ndarray, inplace: bool = False) -> np.ndarray:
    """Unit rows (zero rows stay zero). `inplace=True` for a fresh array the caller owns: no copy.

    The default copies, because the rows are usually a view of the caller's features, which must
    not change; at 10^6 × 384 a needless copy is 1.5 GB, so callers normalize block by block.
    """
    if inplace and x.dtype == np.float32 and x.flags.c_contiguous and x.flags.writeable:
        out = x
    else:
        out = np.array(x, dtype=np.float32, order="C", copy=True)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    out[(norms == 0).ravel()] = 0.0
    return out


def _inverse_norms(features: np.ndarray, block: int) -> np.ndarray:
    """1 / ‖x_i‖ per row (0 for zero rows), computed block by block: n floats, not a copy of x."""
    inv = np.zeros(len(features), dtype=np.float32)
    for start in range(0, len(features), block):
        norms = np.linalg.norm(features[start : start + block], axis=1)
        np.divide(1.0, norms, out=inv[start : start + len(norms)], where=norms > 0)
    return inv


def _build_index(features: np.ndarray, exact: bool, block: int, nprobe: int | None) -> faiss.Index:
    n, d = features.shape
    index: faiss.Index
    if exact:
        index = faiss.IndexFlatIP(d)
    else:
        # nlist ≈ sqrt(8n) balances the coarse search (nlist dots) against the list scan
        # (nprobe·n/nlist dots) at nprobe 8; 40 training points per list, 10 k-means rounds.
        # Codes are 8 bits per dimension (a quarter of IVFFlat's float32 copy: 0.38 GB instead of
        # 1.5 GB at 10^6 × 384); they only nominate candidates, which knn_search re-ranks exactly.
        nlist = int(min(max(np.sqrt(8 * n), 16), 16384))
        quantizer = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFScalarQuantizer(
            quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        ivf.cp.niter = 10
        rng = np.random.default_rng(0)
        sample = rng.choice(n, size=min(n, 40 * nlist), replace=False)
        ivf.train(_normalize_rows(features[np.sort(sample)], inplace=True))  # fancy index: fresh
        ivf.nprobe = min(nprobe or 8, nlist)
        index = ivf
    for start in range(0, n, block):
        index.add(_normalize_rows(features[start : start + block]))
    return index


def _rerank(
    features: np.ndarray,
    inv_norm: np.ndarray,
    q: np.ndarray,
    cand: np.ndarray,
    k: int,
    sub: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosines of each query against its candidates (read from the caller's float32 rows,
    never copied whole), best k first. Missing candidates (-1) rank last with similarity -FLT_MAX,
    as FAISS reports them."""
    m, c = cand.shape
    idx = np.empty((m, k), dtype=np.int64)
    sim = np.empty((m, k), dtype=np.float32)
    lowest = np.finfo(np.float32).min
    for s0 in range(0, m, sub):
        cb = cand[s0 : s0 + sub]
        missing = cb < 0
        safe = np.where(missing, 0, cb)
        vecs = features[safe.ravel()].reshape(len(cb), c, -1)  # sub × c × d gathered rows
        s = np.matmul(vecs, q[s0 : s0 + sub, :, None])[..., 0] * inv_norm[safe]
        s[missing] = lowest
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        idx[s0 : s0 + sub] = np.where(np.take_along_axis(missing, order, 1), -1, np.take_along_axis(cb, order, 1))
        sim[s0 : s0 + sub] = np.take_along_axis(s, order, 1)
    return idx, sim


RERANK_FACTOR = 4  # approximate (IVF-SQ8) search keeps 4·k candidates per query for exact re-ranking


def knn_search(
    features: np.ndarray,
    k: int,
    include_self: bool = True,
    block: int = 16384,
    exact: bool | None = None,
    nprobe: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k cosine neighbours of every row: (n, k) indices and similarities, best first.

    With include_self=False the row itself is removed from its own list (k real neighbours).
    On the approximate path the index only proposes RERANK_FACTOR·k candidates per row; their
    similarities are then recomputed exactly from `features`, so the returned lists are the exact
    top-k of the candidates and the similarities are exact cosines.
    """
    n = features.shape[0]
    if k < 1:
        raise ValueError(f"knn k must be ≥ 1, got {k}")
    k_eff = min(k, n if include_self else n - 1)
    if k_eff < 1:
        raise ValueError(f"cannot find {k} neighbours among {n} items")
    exact = n <= EXACT_MAX if exact is None else exact
    if not exact:
        features = np.asarray(features, dtype=np.float32)  # no copy when already float32
        inv_norm = _inverse_norms(features, block)
    index = _build_index(features, exact, block, nprobe)
    search_k = min(k_eff + (0 if include_self else 1), n)
    n_cand = search_k if exact else min(max(RERANK_FACTOR * k_eff, search_k), n)
    idx = np.empty((n, k_eff), dtype=np.int64)
    sim = np.empty((n, k_eff), dtype=np.float32)
    starts = range(0, n, block)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"kNN k={k}", unit="block")
    for start in starts:
        q = _normalize_rows(features[start : start + block])
        s, i = index.search(q, n_cand)
        if not exact:
            i, s = _rerank(features, inv_norm, q, i, search_k)
        if not include_self:
            own = np.arange(start, start + len(q))[:, None]
            is_self = i == own
            # drop the item itself; where it was not found, drop the last (worst) hit
            is_self[~is_self.any(axis=1), -1] = True
            keep = ~is_self
            i = i[keep].reshape(len(q), k_eff)
            s = s[keep].reshape(len(q), k_eff)
        idx[start : start + len(q)] = i[:, :k_eff]
        sim[start : start + len(q)] = s[:, :k_eff]
    return idx, sim


def sym_normalized_knn(idx: np.ndarray, sim: np.ndarray, n: int) -> sp.csr_matrix:
    """w_ij / sqrt(d_i d_j) with d_i the row sum of the kept weights (the reference's 'sym')."""
    rows = np.repeat(np.arange(n, dtype=np.int64), idx.shape[1])
    cols = idx.reshape(-1)
    w = sim.reshape(-1).astype(np.float64)
    valid = cols >= 0  # an IVF search may return fewer than k hits (-1)
    rows, cols, w = rows[valid], cols[valid], w[valid]
    deg = np.bincount(rows, weights=w, minlength=n)
    d_inv_sqrt = np.zeros(n)
    d_inv_sqrt[deg > 0] = deg[deg > 0] ** -0.5
    vals = (d_inv_sqrt[rows] * w * d_inv_sqrt[cols]).astype(np.float32)
    m = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
    m.sort_indices()
    return m


def knn_graph(
    features: np.ndarray,
    k: int = 10,
    include_self: bool = True,
    cache_dir: Path | None = None,
    block: int = 16384,
    exact: bool | None = None,
    progress: bool = False,
) -> sp.csr_matrix:
    """The normalized item–item kNN graph of one modality, cached by content hash and k."""
    features = np.asarray(features, dtype=np.float32)
    cache = None
    if cache_dir is not None:
        key = array_hash(features)
        mode = "self" if include_self else "noself"
        kind = "exact" if (exact if exact is not None else len(features) <= EXACT_MAX) else "ivfsq8"
        cache = Path(cache_dir) / f"knn-{key}-k{k}-{mode}-{kind}.npz"
        if cache.exists():
            return sp.load_npz(cache).tocsr()
    t0 = time.perf_counter()
    idx, sim = knn_search(features, k, include_self=include_self, block=block, exact=exact, progress=progress)
    graph = sym_normalized_knn(idx, sim, len(features))
    log.info("kNN graph: %d items, k=%d, %.1fs", len(features), k, time.perf_counter() - t0)
    if cache is not None:
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as fh:
                sp.save_npz(fh, graph)
    return graph


_CSR_CACHE: dict[int, tuple[weakref.ref, torch.Tensor]] = {}


def as_csr(a: torch.Tensor) -> torch.Tensor:
    """The CSR form of a fixed sparse matrix, converted once and cached while `a` lives.

    torch's CSR × dense product is about 3× faster than COO's on CPU (and is cuSPARSE's native
    format on GPU); graphs are handed around as COO for autograd-friendliness.
    """
    if a.layout == torch.sparse_csr:
        return a
    hit = _CSR_CACHE.get(id(a))
    if hit is not None and hit[0]() is a:
        return hit[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        csr = a.coalesce().to_sparse_csr()
    _CSR_CACHE[id(a)] = (weakref.ref(a), csr)
    return csr


class _SpMM(torch.autograd.Function):
    """y = A x with the backward Aᵀ g done by a pre-transposed (or, if symmetric, the same) matrix.

    torch.sparse.mm's own backward transposes and re-sorts A on every call; for a fixed graph
    that is pure waste.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, a_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.a_t = a_t
        return torch.sparse.mm(a, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, torch.sparse.mm(ctx.a_t, grad) if ctx.needs_input_grad[2] else None


def spmm(a: torch.Tensor, x: torch.Tensor, a_t: torch.Tensor | None = None) -> torch.Tensor:
    """Sparse A @ dense x (differentiable in x); pass a_t = Aᵀ (None: A is symmetric)."""
    a_csr = as_csr(a)
    if not x.requires_grad:
        return torch.sparse.mm(a_csr, x)
    return _SpMM.apply(a_csr, a_csr if a_t is None else as_csr(a_t), x)
