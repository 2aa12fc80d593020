"""Intermediate metrics of content vectors, computed without training a recommender.

AlignRec's point: judge the inter-content encoder before any recommender exists, so a bad
encoder is caught in minutes, not after a full training run.
- `cross_modal_retrieval`: can an item's image find its own text among the held-out items
  (and back)? Chance Recall@k is k/n.
- `content_topn`: rank items for a user by their summed cosine similarity to the user's training
  items (user = Σ normalized item vectors), then the project's full-ranking metrics.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from models.evaluation.metrics import ranking_metrics


def _normalized(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, torch.Tensor) else x).float()
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _expected_recall(sim: torch.Tensor, ks: Sequence[int]) -> dict[int, torch.Tensor]:
    """Per query (row) Recall@k of the diagonal target, ties broken uniformly at random in expectation.

    Counting only strictly better candidates would give a constant encoder a perfect score; with
    g strictly better and e tied others, the target lands at rank g + U{0..e}, so
    P(rank < k) = clip((k − g) / (e + 1), 0, 1).
    """
    target = sim.diagonal().unsqueeze(1)
    better = (sim > target).sum(1).float()
    ties = (sim == target).sum(1).float() - 1.0
    return {k: ((k - better) / (ties + 1.0)).clamp(0.0, 1.0) for k in ks}


@torch.no_grad()
def cross_modal_retrieval(
    img_emb: np.ndarray | torch.Tensor,
    txt_emb: np.ndarray | torch.Tensor,
    ks: Sequence[int] = (1, 10),
    block: int = 4096,
) -> dict[str, float]:
    """Image→text and text→image Recall@k where row i of both is the same item (cosine similarity).

    Returns {'i2t_recall@k', 't2i_recall@k', 'mean_recall@k', 'chance@k', 'n'}.
    """
    a, b = _normalized(img_emb), _normalized(txt_emb)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"img_emb has {a.shape[0]} rows and txt_emb {b.shape[0]}: rows must be the same items")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"img_emb is {a.shape[1]}-d and txt_emb {b.shape[1]}-d: embed both in one space first")
    n = a.shape[0]
    if n < 2:
        raise ValueError(f"cross-modal retrieval needs at least 2 items, got {n}")
    out: dict[str, float] = {"n": float(n)}
    for name, q, c in (("i2t", a, b), ("t2i", b, a)):
        sums = {k: 0.0 for k in ks}
        for s in range(0, n, block):
            sim = q[s : s + block] @ c.T
            # the target of query s+j is candidate s+j: move it onto the block's diagonal
            sim = torch.cat([sim[:, s:], sim[:, :s]], 1)
            for k, r in _expected_recall(sim, ks).items():
                sums[k] += float(r.sum())
        for k in ks:
            out[f"{name}_recall@{k}"] = sums[k] / n
    for k in ks:
        out[f"mean_recall@{k}"] = 0.5 * (out[f"i2t_recall@{k}"] + out[f"t2i_recall@{k}"])
        out[f"chance@{k}"] = min(k, n) / n
    return out


def content_topn(
    item_vectors: np.ndarray | torch.Tensor,
    train_csr: sp.csr_matrix,
    valid_csr: sp.csr_matrix,
    k: int = 20,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Content-only top-N on the held-out split: score(u, i) = Σ_{j ∈ train(u)} cos(i, j).

    Zero rows (items without content) score 0 against everything. Training items are excluded
    from the ranking (models.evaluation.metrics). Returns ranking_metrics' dict at k (recall@k, ndcg@k, …).
    """
    v = _normalized(item_vectors).numpy()
    if v.shape[0] != train_csr.shape[1]:
        raise ValueError(f"item_vectors has {v.shape[0]} rows for {train_csr.shape[1]} items")
    user_emb = np.asarray(sp.csr_matrix(train_csr, dtype=np.float32) @ v, dtype=np.float32)
    return ranking_metrics(user_emb, v, train_csr, valid_csr, ks=(k,), device=device)
