"""The loss terms the recommenders share: BPR, L2 and MMRec's embedding-norm regulariser,
InfoNCE (with its own log-sum-exp backward), the UIA margin, BM3's cosine gap, AnchorRec's
similarity-structure gap and graph smoothing.

One definition each, so a fix or a speed-up reaches every model that uses the term; the
models' files say which terms they combine and with what weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.training.sparse import FixedSparse


def bpr_loss(u: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """−mean log σ(u·p − u·n)."""
    return -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()


def l2_loss(*embeddings: torch.Tensor) -> torch.Tensor:
    """½ Σ‖e‖² over the batch's embeddings, per batch row (the reference's BPR regularizer)."""
    return added([0.5 * (e**2).sum() for e in embeddings]) / embeddings[0].shape[0]


def added(terms: list[torch.Tensor]) -> torch.Tensor:
    """t₀ + t₁ + … in order, exactly what `sum()` computes (the parity tests compare to the last
    bit), but typed as a tensor: `sum()` of an empty list would be the int 0."""
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


def total_loss(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss a batch steps on: the named parts a model reports (kept apart for the logs), added."""
    return added(list(parts.values()))


class _CosineLogSumExp(torch.autograd.Function):
    """lse_i = log Σ_j exp(a_i·o_j) for rows a = unit/τ, o = unit, touching the B × B matrix 3 times.

    Since |a_i·o_j| ≤ 1/τ, the shift 1/τ replaces the row maximum (no overflow; exp(−2/τ) stays
    a normal float32 while τ ≥ 0.025, below that the row maximum is used). The forward keeps
    E = exp(a oᵀ − shift) and its row sums s; the backward needs only E:
    ∂lse/∂a = diag(g/s) E o and ∂lse/∂o = Eᵀ diag(g/s) a — two products, no B × B pass
    (torch.logsumexp and its autograd make about eight).
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, o: torch.Tensor, tau: float) -> torch.Tensor:
        if tau >= 0.025:  # the shift rides in the product as one more column: [a, −1/τ]·[o, 1]
            a_aug = torch.cat([a, a.new_full((a.shape[0], 1), -1.0 / tau)], 1)
            e = a_aug @ torch.cat([o, o.new_ones(o.shape[0], 1)], 1).T
            shift = a.new_full((a.shape[0],), 1.0 / tau)
        else:
            e = a @ o.T
            shift = e.amax(1)
            e.sub_(shift[:, None])
        e.exp_()
        s = e.sum(1)
        ctx.save_for_backward(a, o, e, s)
        return s.log() + shift

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        a, o, e, s = ctx.saved_tensors
        w = (g / s)[:, None]
        grad_a = w * (e @ o) if ctx.needs_input_grad[0] else None
        grad_o = e.T @ (w * a) if ctx.needs_input_grad[1] else None
        return grad_a, grad_o, None


def info_nce(anchor: torch.Tensor, other: torch.Tensor, tau: float) -> torch.Tensor:
    """One-directional InfoNCE on cosine similarity: row i of `anchor` should pick row i of `other`.

    −mean_i log(exp(s_ii/τ) / Σ_j exp(s_ij/τ)); 1/τ is applied to the B × d anchor rather than
    to the B × B logits, and the log-sum-exp is the stable form of the reference's exp/sum.
    """
    a = F.normalize(anchor, dim=1) / tau
    o = F.normalize(other, dim=1)
    return (_CosineLogSumExp.apply(a, o, tau) - (a * o).sum(1)).mean()


def uia_margin_loss(
    u: torch.Tensor, p: torch.Tensor, n: torch.Tensor, margin: float, detach: bool = True
) -> torch.Tensor:
    """relu(margin + (1 − cos(u, p)) − (1 − cos(u, n))), mean; u is the anchor, detached unless `detach` is False."""
    if detach:
        u = u.detach()
    return F.relu(margin + (1 - F.cosine_similarity(u, p, dim=-1)) - (1 - F.cosine_similarity(u, n, dim=-1))).mean()


def gram_sq(x: torch.Tensor) -> torch.Tensor:
    """‖x xᵀ‖_F² = ‖xᵀ x‖_F², through whichever Gram matrix is smaller."""
    g = x.T @ x if x.shape[1] <= x.shape[0] else x @ x.T
    return (g**2).sum()


def similarity_gap(
    emb: torch.Tensor, feat_unit: torch.Tensor, feat_gram_sq: torch.Tensor | None = None
) -> torch.Tensor:
    """‖E Eᵀ − S‖_F / B with S = F Fᵀ the raw features' cosine matrix (F rows of unit norm).

    This is MMRec's EmbLoss on the B × B gap (the norm, not its square, over the batch size), as
    the reference computes it. Expanded, ‖EEᵀ − FFᵀ‖² = ‖EᵀE‖² − 2‖EᵀF‖² + ‖FᵀF‖², so no B × B
    matrix is formed. `feat_gram_sq` (= ‖FFᵀ‖²) may be passed in when modalities share features.
    """
    if feat_gram_sq is None:
        feat_gram_sq = gram_sq(feat_unit)
    sq = gram_sq(emb) - 2 * ((emb.T @ feat_unit) ** 2).sum() + feat_gram_sq
    return torch.sqrt(torch.clamp(sq, min=1e-12)) / emb.shape[0]


def smoothing_loss(z: torch.Tensor, knn: FixedSparse, deg_sum: torch.Tensor) -> torch.Tensor:
    """mean over the kNN edges (i, j, w) of w‖z_i − z_j‖², all edges, without gathering them.

    Σ_ij w_ij‖z_i − z_j‖² = Σ_i (r_i + c_i)‖z_i‖² − 2 Σ_i z_i·(K z)_i with r, c the row and
    column sums of K (`deg_sum` = r + c).
    """
    total = (deg_sum * (z**2).sum(1)).sum() - 2 * (z * knn(z)).sum()
    return total / knn.nnz


def emb_norm_loss(*embeddings: torch.Tensor) -> torch.Tensor:
    """MMRec's EmbLoss: Σ ‖E‖_F over the batch tables, divided by the batch size."""
    return sum(torch.linalg.vector_norm(e) for e in embeddings) / embeddings[-1].shape[0]


def cosine_gap(online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − mean cosine: BM3's alignment of a prediction with a (detached) target view."""
    return 1 - F.cosine_similarity(online, target.detach(), dim=-1).mean()
