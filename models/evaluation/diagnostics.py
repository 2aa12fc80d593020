"""Positional-collapse diagnostics of a trained model's embeddings (METHOD.md, AnchorRec §analysis).

A multimodal recommender "collapses" when its final item space is arranged by interaction
position (the ID/graph embedding) instead of by content: an item's nearest neighbours are then
items bought by the same people, not items that look or read alike. These functions turn that
into numbers computed on the final vectors alone, so any model (ours or imported) can be judged:

- coherence: mean raw-feature cosine between each item and its r-th nearest neighbour
  (r = 1..top) in the final space — high means neighbourhoods respect content;
- ID dominance: mean size of the 2-hop co-interaction neighbourhood of those neighbours —
  high means the final space pulls in hub items of the interaction graph;
- ID overlap: share of final-space neighbours that are also ID-space neighbours — 1.0 means
  the final space *is* the ID space as far as neighbourhoods go;
- silhouette of KMeans clusters in a space (ID / content / final), and of the final space under
  the content space's clusters (does the final space keep the content's grouping?);
- alignment and uniformity (Wang & Isola, ICML 2020) of the L2-normalised final embeddings.

Neighbours are taken by COSINE similarity, not by the score's inner product: the score multiplies
the norms in, and in LightGCN-style models the norm grows with popularity, so inner-product
neighbours of almost every item would be the same few popular items. That would measure
popularity twice (ID dominance already does) and hide the geometry the paper's claim is about —
where an item sits, i.e. its direction. Pass metric="ip" to get the score's view instead.

Nothing here builds an n × n matrix: neighbours are found block by block (one matrix product
and a top-k per block, on the GPU when there is one).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Mapping

import numpy as np
import scipy.sparse as sp
import torch

SCORE_BUDGET = 1 << 24  # similarity-matrix elements per block (128 MB as float64 for the tie-break)
METRICS = ("cosine", "ip")


@contextlib.contextmanager
def few_threads() -> Iterator[None]:
    """One OpenMP/BLAS thread on machines with ≤ 4 cores, else no limit.

    sklearn's KMeans and Barnes–Hut t-SNE spin OpenMP threads; on a 2-core machine shared with
    other jobs that spinning made t-SNE of 80 points take 16 s instead of 0.5 s.
    """
    if (os.cpu_count() or 1) > 4:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row stays zero (its cosines are 0, not NaN)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)


def _check_matrix(name: str, x: np.ndarray, n: int | None = None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be an (n, d) matrix, got shape {x.shape}")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{name} has {x.shape[0]} rows, expected {n} (one per item)")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


# ------------------------------------------------------------------------------ neighbours


@torch.no_grad()
def item_neighbours(
    item_emb: np.ndarray,
    top: int = 3,
    metric: str = "cosine",
    device: str | torch.device | None = None,
) -> np.ndarray:
    """(n, top) ids of each item's nearest other items, nearest first (the item itself excluded).

    Exact (blocked matrix products); ties are broken towards the lower item id, so the result is
    deterministic.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    x = _check_matrix("item_emb", item_emb)
    n = x.shape[0]
    if not 1 <= top < n:
        raise ValueError(f"top must be in 1..{n - 1} for {n} items, got {top}")
    if metric == "cosine":
        x = l2_normalize(x)
    dev = _device(device)
    xt = torch.as_tensor(x, device=dev)
    block = max(1, min(n, SCORE_BUDGET // n))
    # a tiny decreasing offset makes topk prefer lower ids among exact ties
    tie = torch.arange(n, device=dev, dtype=torch.float64) * 1e-14
    out = np.empty((n, top), dtype=np.int64)
    for start in range(0, n, block):
        rows = torch.arange(start, min(start + block, n), device=dev)
        sims = (xt[rows] @ xt.T).double() - tie
        sims[torch.arange(len(rows), device=dev), rows] = -torch.inf
        out[start : start + len(rows)] = torch.topk(sims, top, dim=1, sorted=True).indices.cpu().numpy()
    return out


def neighbour_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of a row's neighbours in `a` that are also among the same row's in `b`."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"neighbour lists cover {a.shape[0]} and {b.shape[0]} items")
    hits = (a[:, :, None] == b[:, None, :]).any(axis=2)
    return float(hits.mean())


# ------------------------------------------------------------------------------ coherence


def coherence(
    final_item_emb: np.ndarray,
    raw_feats: Mapping[str, np.ndarray],
    top: int = 3,
    neighbours: np.ndarray | None = None,
    metric: str = "cosine",
) -> dict[str, float]:
    """{'<feature>@r': mean raw-feature cosine between each item and its r-th final-space neighbour}.

    E.g. raw_feats={'text': t, 'vision': v} gives text@1..3 and vision@1..3, the numbers of
    AnchorRec's coherence table (Baby: AnchorRec text .684/.650/.628, AlignRec .502/.443/.414).
    """
    x = _check_matrix("final_item_emb", final_item_emb)
    if neighbours is None:
        neighbours = item_neighbours(x, top, metric)
    neighbours = np.asarray(neighbours)[:, :top]
    out: dict[str, float] = {}
    for name, feats in raw_feats.items():
        f = l2_normalize(_check_matrix(f"raw_feats[{name!r}]", feats, x.shape[0]))
        for r in range(neighbours.shape[1]):
            cos = np.einsum("ij,ij->i", f, f[neighbours[:, r]])
            out[f"{name}@{r + 1}"] = float(cos.mean())
    return out


# ------------------------------------------------------------------------------ ID dominance


def two_hop_counts(train_csr: sp.spmatrix, block: int = 4096) -> np.ndarray:
    """Per item: how many OTHER items share at least one training user with it.

    That is the item's 2-hop neighbourhood in the user–item graph (item → user → item), the
    set a graph model's propagation mixes into the item. Computed a block of items at a time
    (Rᵀ R restricted to the block's rows), so the item × item co-occurrence matrix never exists
    whole.
    """
    r = sp.csr_matrix(train_csr, dtype=np.float32, copy=True)
    r.data[:] = 1.0
    rt = r.T.tocsr()
    n_items = r.shape[1]
    counts = np.zeros(n_items, dtype=np.int64)
    for start in range(0, n_items, block):
        stop = min(start + block, n_items)
        co = rt[start:stop] @ r  # (block, n_items): co-interaction counts
        co = co.tocsr()
        co.eliminate_zeros()
        nnz = np.diff(co.indptr)
        has_self = co.diagonal(k=start) > 0  # an item with ≥ 1 user co-occurs with itself
        counts[start:stop] = nnz - has_self
    return counts


def id_dominance(
    final_item_emb: np.ndarray,
    train_csr: sp.spmatrix,
    top: int = 3,
    neighbours: np.ndarray | None = None,
    metric: str = "cosine",
    counts: np.ndarray | None = None,
) -> float:
    """Mean 2-hop co-interaction count (see `two_hop_counts`) of each item's top-`top` neighbours.

    Definition implemented: (1 / (n·top)) Σ_i Σ_{j ∈ N_top(i)} |{k ≠ j : k shares ≥ 1 training
    user with j}|, N_top(i) the item's nearest items in the final space. A space arranged by
    interaction position picks neighbours that are graph hubs, so the number rises with collapse
    (AnchorRec 208.8 vs AlignRec 282.0 on Baby).
    """
    x = _check_matrix("final_item_emb", final_item_emb)
    if train_csr.shape[1] != x.shape[0]:
        raise ValueError(f"train_csr has {train_csr.shape[1]} items, final_item_emb {x.shape[0]}")
    if neighbours is None:
        neighbours = item_neighbours(x, top, metric)
    if counts is None:
        counts = two_hop_counts(train_csr)
    return float(counts[np.asarray(neighbours)[:, :top]].mean())


# ------------------------------------------------------------------------------ clustering


def _subsample(n: int, sample: int | None, seed: int) -> np.ndarray:
    if sample is None or n <= sample:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))


def kmeans_labels(emb: np.ndarray, n_clusters: int = 10, seed: int = 0) -> np.ndarray:
    """KMeans cluster of each row of the L2-normalised `emb` (cosine geometry, like the neighbours)."""
    from sklearn.cluster import KMeans

    x = l2_normalize(_check_matrix("emb", emb))
    if not 2 <= n_clusters < len(x):
        raise ValueError(f"n_clusters must be in 2..{len(x) - 1} for {len(x)} rows, got {n_clusters}")
    # fewer distinct points than clusters (pop's one-dimensional scores are ±1 once normalised):
    # as many clusters as points, rather than KMeans' warning and empty clusters
    k = min(n_clusters, len(np.unique(x, axis=0)))
    if k < 2:
        return np.zeros(len(x), dtype=np.int32)
    with few_threads():
        return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(x)


def silhouette(
    emb: np.ndarray,
    n_clusters: int = 10,
    seed: int = 0,
    sample: int | None = 4000,
    labels: np.ndarray | None = None,
) -> float:
    """Silhouette of KMeans clusters of `emb` (on a seeded subsample of `sample` rows).

    With `labels` given, the silhouette of THOSE labels in this space instead — e.g. the content
    space's clusters judged in the final space: high when the final space keeps the content's
    grouping, near zero or negative when it has been rearranged (collapsed onto ID).
    Rows are L2-normalised first, so Euclidean distance ranks like cosine.
    """
    from sklearn.metrics import silhouette_score

    x = _check_matrix("emb", emb)
    rows = _subsample(len(x), sample, seed)
    x = l2_normalize(x[rows])
    if labels is None:
        lab = kmeans_labels(x, n_clusters, seed)
    else:
        lab = np.asarray(labels)
        if len(lab) != len(emb):
            raise ValueError(f"labels has {len(lab)} entries for {len(emb)} rows")
        lab = lab[rows]
    if len(np.unique(lab)) < 2:
        return 0.0
    with few_threads():
        return float(silhouette_score(x, lab, metric="euclidean"))


# ------------------------------------------------------------------------------ alignment / uniformity


def _uniformity(x: torch.Tensor, t: float) -> float:
    """log E_{i<j} exp(−t ‖x_i − x_j‖²) (Wang & Isola 2020), x already unit rows."""
    if len(x) < 2:
        return 0.0
    sq = torch.pdist(x.double(), p=2).pow(2)
    return float(torch.logsumexp(-t * sq, 0) - np.log(len(sq)))


def alignment_uniformity(
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    pairs: np.ndarray,
    t: float = 2.0,
    sample: int | None = 4096,
    seed: int = 0,
) -> dict[str, float]:
    """Alignment and uniformity of the L2-normalised embeddings (Wang & Isola 2020, DirectAU).

    alignment  = mean over training pairs (u, i) of ‖ū − ī‖²           (α = 2; lower = closer)
    uniformity = log mean over distinct pairs exp(−t ‖x − y‖²), for users and for items
                 (on a seeded subsample of `sample` rows each); 'uniformity' is their mean.
    Lower uniformity = spread over the sphere; a collapsed space has uniformity near 0.
    """
    u = torch.as_tensor(l2_normalize(_check_matrix("user_emb", user_emb)))
    i = torch.as_tensor(l2_normalize(_check_matrix("item_emb", item_emb)))
    if u.shape[1] != i.shape[1]:
        raise ValueError(f"user_emb has dimension {u.shape[1]} but item_emb {i.shape[1]}: not one scoring space")
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if not len(pairs):
        raise ValueError("pairs is empty: alignment needs at least one (user, item) pair")
    pu, pi = torch.as_tensor(pairs[:, 0]), torch.as_tensor(pairs[:, 1])
    align = float((u[pu].double() - i[pi].double()).pow(2).sum(1).mean())
    uu = _uniformity(u[torch.as_tensor(_subsample(len(u), sample, seed))], t)
    ui = _uniformity(i[torch.as_tensor(_subsample(len(i), sample, seed + 1))], t)
    return {"alignment": align, "uniformity_user": uu, "uniformity_item": ui, "uniformity": (uu + ui) / 2}


# ------------------------------------------------------------------------------ all at once


def diagnose_embeddings(
    final_item_emb: np.ndarray,
    user_emb: np.ndarray,
    train_csr: sp.spmatrix,
    raw_feats: Mapping[str, np.ndarray],
    id_item_emb: np.ndarray | None = None,
    top: int = 3,
    n_clusters: int = 10,
    seed: int = 0,
    sample: int | None = 4000,
    metric: str = "cosine",
) -> dict[str, object]:
    """Every diagnostic of one model, as a flat JSON-ready dict (plus 'notes' on what was skipped).

    The content space is the concatenation of the L2-normalised raw features (distinct ones
    only: the same table passed as text and vision counts once).
    """
    x = _check_matrix("final_item_emb", final_item_emb)
    notes: list[str] = []
    counts = two_hop_counts(train_csr)
    neigh = item_neighbours(x, top, metric)
    out: dict[str, object] = {"top": top, "metric": metric, "n_clusters": n_clusters, "n_items": int(len(x))}
    out.update({f"coherence.{k}": v for k, v in coherence(x, raw_feats, top, neigh).items()})
    out["id_dominance"] = id_dominance(x, train_csr, top, neigh, counts=counts)
    out["two_hop_mean"] = float(counts.mean())  # the value a random neighbour choice would give
    out["silhouette.final"] = silhouette(x, n_clusters, seed, sample)
    content = _content_space(raw_feats)
    content_labels = None
    if content is not None:
        out["silhouette.content"] = silhouette(content, n_clusters, seed, sample)
        content_labels = kmeans_labels(content, n_clusters, seed)
        out["silhouette.final_by_content"] = silhouette(x, seed=seed, sample=sample, labels=content_labels)
    else:
        notes.append("no raw features given: coherence and content silhouette skipped")
    if id_item_emb is not None:
        idx = _check_matrix("id_item_emb", id_item_emb, len(x))
        id_neigh = item_neighbours(idx, top, metric)
        out["silhouette.id"] = silhouette(idx, n_clusters, seed, sample)
        out[f"id_overlap@{top}"] = neighbour_overlap(neigh, id_neigh)
        out["id_space.id_dominance"] = id_dominance(idx, train_csr, top, id_neigh, counts=counts)
        out.update({f"id_space.coherence.{k}": v for k, v in coherence(idx, raw_feats, top, id_neigh).items()})
        if content_labels is not None:
            out["silhouette.id_by_content"] = silhouette(idx, seed=seed, sample=sample, labels=content_labels)
    else:
        notes.append("no ID-space item vectors (id_item_vectors.parquet): ID-space diagnostics skipped")
    coo = sp.coo_matrix(train_csr)
    out.update(alignment_uniformity(user_emb, x, np.stack([coo.row, coo.col], 1), sample=sample, seed=seed))
    out["notes"] = notes
    return out


def _content_space(raw_feats: Mapping[str, np.ndarray]) -> np.ndarray | None:
    parts: list[np.ndarray] = []
    seen: list[np.ndarray] = []
    for f in raw_feats.values():
        f = np.asarray(f, dtype=np.float32)
        if any(f.shape == s.shape and np.array_equal(f, s) for s in seen):
            continue
        seen.append(f)
        parts.append(l2_normalize(f))
    if not parts:
        return None
    return np.hstack(parts) / np.sqrt(len(parts))
