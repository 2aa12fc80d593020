"""Test metrics by item popularity: head, mid and tail buckets of the training interactions.

A popularity-driven item space wins the head and loses the tail; AlignRec reports its gains on the
tail, and the leaderboard places AnchorRec's gap by bucket. Used by the per-run summaries
(run_summary) and the comparison report.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch

BUCKETS = ("head", "mid", "tail")


def popularity_buckets(train_csr: sp.spmatrix, edges: Sequence[float] = (0.2, 0.5)) -> np.ndarray:
    """Bucket index per item: 0 = head (top 20% of items by training interactions), 1 = mid
    (next 30%), 2 = tail (the remaining 50%) with the default edges (cumulative item shares).

    Items are ranked by count, ties by item id, so every bucket has exactly its share of items.
    """
    edges = [float(e) for e in edges]
    if any(not 0 < e < 1 for e in edges) or edges != sorted(edges):
        raise ValueError(f"edges must be increasing shares in (0, 1), got {edges}")
    counts = np.asarray(train_csr.sum(axis=0)).ravel()
    n = len(counts)
    order = np.lexsort((np.arange(n), -counts))  # most popular first, ties by id
    cuts = [int(round(e * n)) for e in edges]
    bucket = np.empty(n, dtype=np.int64)
    bucket[order] = np.searchsorted(cuts, np.arange(n), side="right")
    return bucket


@torch.no_grad()
def top_k(
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    train_csr: sp.spmatrix,
    users: np.ndarray,
    k: int,
    block: int = 2048,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """(len(users), k) top-scored items per user, training items excluded (full ranking)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    u_all = torch.as_tensor(np.asarray(user_emb, np.float32), device=dev)
    i_all = torch.as_tensor(np.asarray(item_emb, np.float32), device=dev)
    train_csr = sp.csr_matrix(train_csr)
    k = min(k, i_all.shape[0])
    out = np.empty((len(users), k), dtype=np.int64)
    for start in range(0, len(users), block):
        u = users[start : start + block]
        scores = u_all[torch.as_tensor(u, device=dev)] @ i_all.T
        tr = train_csr[u]
        rows = np.repeat(np.arange(len(u)), np.diff(tr.indptr))
        scores[torch.as_tensor(rows, device=dev), torch.as_tensor(tr.indices.astype(np.int64), device=dev)] = -torch.inf
        out[start : start + len(u)] = torch.topk(scores, k, dim=1).indices.cpu().numpy()
    return out


def long_tail(
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    train_csr: sp.spmatrix,
    heldout_csr: sp.spmatrix,
    buckets: np.ndarray,
    ks: Sequence[int] = (20,),
    names: Sequence[str] = BUCKETS,
) -> dict[str, dict[str, float]]:
    """Test metrics restricted to held-out items of each popularity bucket (plus 'all').

    The ranking is the ordinary full ranking over all items; only the hits are split: for a
    bucket B and a user with held-out items H_B ≠ ∅ in B, recall@k = |top-k ∩ H_B| / |H_B| and
    ndcg@k = Σ_{hits in B at rank r} 1/log2(r+1) / IDCG(min(|H_B|, k)), averaged over the users
    that have held-out items in B. Hits of the buckets add up to the hits of 'all'.
    """
    heldout_csr = sp.csr_matrix(heldout_csr)
    buckets = np.asarray(buckets, dtype=np.int64)
    if buckets.shape != (heldout_csr.shape[1],) or buckets.min(initial=0) < 0 or buckets.max(initial=0) >= len(names):
        raise ValueError(f"buckets must hold one index in 0..{len(names) - 1} per item ({heldout_csr.shape[1]} items)")
    n_heldout = np.diff(heldout_csr.indptr)
    users = np.flatnonzero(n_heldout > 0)
    max_k = max(ks)
    top = top_k(user_emb, item_emb, train_csr, users, max_k)
    sub = heldout_csr[users]
    sub.sort_indices()
    n_items = heldout_csr.shape[1]
    rows = np.repeat(np.arange(len(users), dtype=np.int64), np.diff(sub.indptr))
    keys = rows * n_items + sub.indices  # sorted: rows ascend, indices sorted within a row
    q = np.arange(len(users), dtype=np.int64)[:, None] * n_items + top
    pos = np.minimum(np.searchsorted(keys, q), max(len(keys) - 1, 0))
    hit = keys[pos] == q if len(keys) else np.zeros(top.shape, dtype=bool)
    discount = 1.0 / np.log2(np.arange(2, max_k + 2))
    ideal = np.cumsum(discount)
    n_buckets = len(names)
    per_bucket = np.bincount(rows * n_buckets + buckets[sub.indices], minlength=len(users) * n_buckets)
    per_bucket = per_bucket.reshape(len(users), n_buckets)
    out: dict[str, dict[str, float]] = {}
    groups = [("all", None)] + [(name, b) for b, name in enumerate(names)]
    for name, b in groups:
        if b is None:
            in_b, n_b = hit, n_heldout[users]
        else:
            in_b = hit & (buckets[top] == b)
            n_b = per_bucket[:, b]
        mask = n_b > 0
        res: dict[str, float] = {"n_users": int(mask.sum()), "n_heldout": int(n_b.sum())}
        if b is not None:
            res["n_items"] = int((buckets == b).sum())
        for k in ks:
            kk = min(k, top.shape[1])
            hits_k = in_b[:, :kk]
            res[f"hits@{k}"] = int(hits_k.sum())
            if mask.any():
                rec = hits_k.sum(1)[mask] / n_b[mask]
                idcg = ideal[np.minimum(n_b[mask], kk) - 1]
                ndcg = (hits_k[mask] * discount[:kk]).sum(1) / idcg
                res[f"recall@{k}"], res[f"ndcg@{k}"] = float(rec.mean()), float(ndcg.mean())
            else:
                res[f"recall@{k}"] = res[f"ndcg@{k}"] = float("nan")
        out[name] = res
    return out
