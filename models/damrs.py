"""DA-MRS (Xv et al., KDD 2024): denoised item–item graphs and feedback, aligned with user taste.

"Improving Multi-modal Recommender Systems by Denoising and Aligning Multi-modal Content and
User Feedback", as MMRec implements it (enoche/MMRec `src/models/damrs.py`):

    item graphs  S_t, S_v: cosine kNN graphs with the noise masked out — an item pair is kept only
                 where its text AND its image similarity reach that modality's mean similarity
                 over all pairs; each item keeps its k = knn_k most similar kept items (itself
                 among them), unweighted, S[i, j] = 1/sqrt(d_i d_j), d_i = kept neighbours of i
                 S_s: the behaviour ("session") graph — each item, itself and its top 2 items
                 among those sharing at least 2 users with it (most shared users first),
                 normalized the same way
    h_m          h_m = S_m^L q for m ∈ {t, v, s}    (q: item ID embeddings, L = n_mm_layers)
    u, i         LightGCN mean of layers 0..n_ui_layers on the user–item graph
    score        u · (i + (h_t + h_v + h_s) / 3)
    denoising    a BPR pair is weighted by how much the three views agree that the user likes
    feedback     the positive (w+ = mean σ · exp(−var σ)², σ = σ(u · ĥ_m,i+)) and, where the
                 positive scores below the batch's mean negative, how sure they are it is a
                 false positive (w− = max σ − mean negative σ); weights carry no gradient:
                 L_bpr = −mean(w+ log σ(x+ − x−) + w− log σ(x− − x+))
    neighbour    for each view m and batch item i, pseudo-positives from the softmax over all items
    alignment    of cos(h_m,i, h_m,j): the top 10 of p_a + p_b + 2 p_m (the two other views a, b) and
                 the top 10 of p_m outside those; InfoNCE-like, τ = 0.2:
                 L_nd = −log(Σ_mm e^{c/τ} / Σ_all e^{c/τ}) − log(Σ_single e^{c/τ} / (Σ_all − Σ_mm))
    user align   p_g = σ(u_U · î_I), p_c = σ(u_U · ĥ_I) over the batch's unique users U × items I,
                 ĥ = normalized (h_t + h_v + h_s)/3: L_kl = mean(KL(p_g‖p_c) + KL(p_c‖p_g)) (Bernoulli)
    loss         L_bpr + neighbor_weight · mean_m L_nd,m + kl_weight · L_kl

With t = v (one table, the text-only setup) both masks and graphs are the text's, and h_v = h_t;
with only one of t and v in the graph it serves as both, the same thing.

Where this file departs from MMRec (tests/test_damrs.py checks loss, gradients and scores
against the values MMRec's class prints, benchmarks/parity/damrs_parity.py):

- the masked kNN graphs are built without an N × N similarity matrix: the mean similarity of a
  modality is ‖Σ_i x̂_i‖² / N² (exact), each item's candidates are its CANDIDATES·knn_k nearest
  items of the modality (`models.training.graphs.knn_search`, FAISS block by block), and the first knn_k
  of them that pass both masks are kept. MMRec ranks the whole masked row; the two agree unless
  fewer than knn_k of an item's CANDIDATES·knn_k nearest pass the other modality's mask (then
  this file keeps fewer neighbours). MMRec ranks a masked row by its values, so where a
  modality's mean similarity is negative, a passing negative similarity can rank below the
  masked-out zeros there; here passing items always rank first;
- the behaviour graph: MMRec reads it from a per-dataset file (`item_graph_dict_2.npy`) that
  the authors' `build_iib_graph.py` (XMUDM/DA-MRS) writes from the training pairs: an item pair
  is an edge when the two items share at least 2 users, and each item keeps its 2 pairs with the
  most common users (`behaviour_min_users`, `behaviour_k`; the file name's 2 is that top 2); MMRec
  adds the item itself and ignores the counts (the graph is unweighted). Here the same rule is
  computed from the sparse RᵀR, a block of dense rows at a time instead of the N × N matrix,
  with the script's own torch.topk per row, so ties at the cut fall as they fall there (torch
  does not specify that order: it is the installed torch's). The parity script runs the authors' script itself on the tiny input and hands MMRec its
  output file;
- MMRec creates the text/image projections (text_trs, image_trs) but never uses them, and keeps
  the features frozen: this file has neither (the same trained parameters: the two ID tables);
- only the batch's rows of the last user–item layer are computed; h_t, h_v, h_s are computed
  for all items (the pseudo-labels and the contrastive denominator need every item, as MMRec's);
  the pseudo-label ranking runs without autograd (only its indices are used, as in MMRec); the
  batch's unique users and items come sorted (MMRec asks for them unsorted; the terms average
  over them, so the order does not matter);
- the batch × all-items cosine matrix of a view is computed ROW_CHUNK batch items at a time and
  shared by the pseudo-labels (softmax) and the contrastive denominator (MMRec computes it twice,
  whole); one exp serves both: e^{cos} (unit vectors: no max to subtract) normalized is the
  softmax and its fifth power is e^{cos/τ} (exp_cos; within float32 rounding of MMRec's); the
  denominator's gradient takes a chunk's e^{cos/τ} from the forward while those kept fit
  EXP_CACHE bytes and recomputes the rest chunk by chunk (ExpSum), so memory stays bounded by
  EXP_CACHE plus a few ROW_CHUNK × N buffers at any catalog size, not batch × N kept for
  autograd; the second pseudo-label set is taken from p_m's 2·10 best instead of re-ranking an
  N-wide copy with the first set zeroed (the same items: softmax values are > 0); rows are
  ranked through their blocks' maxima (row_topk: the same items as torch.topk, ties at the cut
  aside); with one table as t and v the graph, view and neighbour term are computed once and
  counted twice (MMRec computes the same thing twice);
- the user-alignment KL(p_g‖p_c) + KL(p_c‖p_g) is computed from the logits as
  (σ(a) − σ(b))(a − b) (SymmetricKL), which is what MMRec's eight logs sum to: the same values
  within float32 rounding, finite where MMRec's saturated σ gives NaN;
- log σ(x) is F.logsigmoid (MMRec: torch.log(torch.sigmoid(x)); equal until σ saturates, where
  MMRec gives −inf); the pseudo-label count is min(10, n_items // 2) — MMRec's 10 fails below 20
  items; unused MMRec options (lambda_coeff, cf_model, reg_weight, weight_size) are not carried.

Defaults: MMRec's DAMRS.yaml (embedding 64, knn_k 10, n_mm_layers 1, n_ui_layers 2, kl_weight 1,
neighbor_weight 0.001 — the values its yaml keeps active; the grids in its comments are the
SEARCH_SPACE below) and the behaviour graph of the file that yaml names (co-users ≥ 2, top 2).

Cold items: an item DA-MRS never saw has no ID embedding q (its views S_m^L q start from zero)
and no user–item edge, hence no behaviour-graph row (S_s needs co-users); what its features give
it is its row in the denoised content graphs S_t and S_v. Its vector is those rows applied once
to the warm items' FINAL vectors (models/cold.py): per modality the first knn_k of its
CANDIDATES·knn_k cosine neighbours among warm items that pass the same denoising mask (text AND
image cosine at least the warm catalogue's mean similarity of that modality, computed at
training), weighted as S_m, unweighted 1/sqrt(d_n d_j) (d_j the warm item's count in the trained
S_m), t and v weighted ½ each (the model averages its views equally; S_s has no row for a new
item and is left out). The paper is silent on cold-start; these choices are ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from models import cold
from models.backbone import bipartite_blocks, bipartite_lightgcn
from models.blocks import content_modalities, id_embeddings
from models.losses import total_loss
from models.training.data import GraphData
from models.training.graphs import knn_search
from models.training.sparse import FixedSparse

EPS = 1e-7  # MMRec's guard in the degrees of its item graphs
CANDIDATES = 8  # nearest items per knn_k searched before the masks (see the docstring)
PSEUDO_K = 10  # MMRec's pseudo-positives per kind
TEMPERATURE = 0.2  # MMRec's neighbour-discrimination temperature
assert TEMPERATURE == 0.2, "exp_cos takes e^{cos/τ} as the fifth power of e^{cos}: change it with τ"
ROW_CHUNK = 256  # batch items whose batch × N cosines are held at once (256 × 10⁵ items: 100 MB)
DENSE_BLOCK = 1 << 24  # count values made dense at once when building the behaviour graph (64 MB)
TOPK_BLOCK = 64  # row_topk: items per block whose maximum preselects the blocks ranked
EXP_CACHE = 256 << 20  # bytes of e^{cos/τ} chunks the forward keeps for ExpSum's backward (the rest: recomputed)


@dataclass
class DAMRSConfig:
    embedding_dim: int = 64
    knn_k: int = 10
    n_mm_layers: int = 1
    n_ui_layers: int = 2
    kl_weight: float = 1.0
    neighbor_weight: float = 0.001
    behaviour_k: int = 2  # the authors' item_graph_dict_2: top 2 co-bought items per item
    behaviour_min_users: int = 2  # build_iib_graph.py: a pair needs at least 2 common users

    def __post_init__(self) -> None:
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be ≥ 1, got {self.embedding_dim}")
        if self.knn_k < 1:
            raise ValueError(f"knn_k must be ≥ 1, got {self.knn_k}")
        for name in ("behaviour_k", "behaviour_min_users"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("n_mm_layers", "n_ui_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        for name in ("kl_weight", "neighbor_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")


# `anchorrec tune`'s grid (models/training/tune.py): MMRec's DAMRS.yaml hyper_parameters, each with the
# grid in its comments (kl_weight: the commented {10, 0.1, 0.01} and the active 1; learning_rate
# excluded: one lr grid for every model).
SEARCH_SPACE: dict[str, tuple] = {
    "kl_weight": (0.01, 0.1, 1.0, 10.0),
    "neighbor_weight": (0.0, 0.0001, 0.001, 0.01, 0.1, 1.0),
    "n_mm_layers": (1, 2),
    "n_ui_layers": (1, 2, 3),
}


def row_normalized_graph(rows: np.ndarray, cols: np.ndarray, n: int) -> torch.Tensor:
    """Unweighted S[i, j] = 1/sqrt(d_i d_j), d_i the entries of row i (MMRec's normalization)."""
    inv = (np.bincount(rows, minlength=n).astype(np.float32) + EPS) ** -0.5
    idx = torch.as_tensor(np.stack([rows, cols]).astype(np.int64))
    vals = torch.as_tensor((inv[rows] * inv[cols]).astype(np.float32))
    return torch.sparse_coo_tensor(idx, vals, (n, n), check_invariants=False).coalesce()


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def mean_similarity(unit: np.ndarray) -> float:
    """The mean cosine over all N² pairs (the item itself included), without the N × N matrix."""
    s = unit.astype(np.float64).sum(0)
    return float(s @ s) / len(unit) ** 2


def masked_knn_edges(feats: dict[str, np.ndarray], k: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(rows, cols) of each modality's kNN graph over the pairs that pass every modality's mean mask."""
    unit = {m: unit_rows(f.astype(np.float32)) for m, f in feats.items()}
    means = {m: mean_similarity(u) for m, u in unit.items()}
    n = len(next(iter(unit.values())))
    out = {}
    for m, f in feats.items():
        idx, sim = knn_search(f.astype(np.float32), min(n, CANDIDATES * k), include_self=True)
        ok = (sim >= means[m]) & (idx >= 0)
        safe = np.maximum(idx, 0)
        for other, u in unit.items():
            if other != m:
                ok &= np.einsum("nd,nkd->nk", u, u[safe]) >= means[other]
        rank = np.cumsum(ok, axis=1)  # candidates are best first: keep the first k that pass
        keep = ok & (rank <= k)
        rows = np.repeat(np.arange(n), idx.shape[1]).reshape(idx.shape)[keep]
        out[m] = (rows, idx[keep])
    return out


def behaviour_edges(ui: torch.Tensor, k: int, min_users: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols): each item, itself and its k items sharing the most users (at least min_users).

    The authors' rule (build_iib_graph.py): torch.topk over each item's dense row of common-user
    counts, so ties fall as they fall there; rows are made dense a block at a time (≤ DENSE_BLOCK
    values), never the N × N matrix.
    """
    coo = ui.coalesce().cpu()
    u, i = coo.indices().numpy()
    n_users, n_items = coo.shape
    r = sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(n_users, n_items))
    rt = r.T.tocsr()
    rows, cols = [np.arange(n_items)], [np.arange(n_items)]
    step = max(1, DENSE_BLOCK // max(n_items, 1))
    for start in range(0, n_items, step):
        block = torch.from_numpy((rt[start : start + step] @ r).toarray())
        block[block < min_users] = 0
        block[torch.arange(len(block)), torch.arange(start, start + len(block))] = 0  # not itself
        values, idx = torch.topk(block, min(k, n_items), dim=1)
        keep = (values > 0).numpy()
        rows.append(np.nonzero(keep)[0] + start)
        cols.append(idx.numpy()[keep])
    return np.concatenate(rows), np.concatenate(cols)


def row_topk(x: torch.Tensor, k: int) -> torch.Tensor:
    """torch.topk(x, k, dim=1).indices (best first) of a contiguous (rows × N) x, from k blocks per row.

    The k largest values of a row lie in the k blocks (TOPK_BLOCK items) of largest maximum and
    the last, short block: a block holding one of them whose maximum is not among the k largest
    would leave k larger values elsewhere. So the block maxima (one pass) are ranked, those k
    blocks gathered and ranked: 2–3× faster than ranking N-wide rows on CPU. The same items as
    torch.topk; where values tie at the cut either may be returned (torch does not specify it).
    """
    g = TOPK_BLOCK
    rows, n = x.shape
    nb = n // g
    if nb < 4 * k or not x.is_contiguous():
        return torch.topk(x, k, dim=1).indices
    blocks = x.as_strided((rows, nb, g), (n, g, 1))
    best = torch.topk(blocks.amax(2), k, dim=1, sorted=False).indices
    cols = (best.unsqueeze(2) * g + torch.arange(g, device=x.device)).view(rows, k * g)
    if nb * g < n:
        cols = torch.cat([cols, torch.arange(nb * g, n, device=x.device).expand(rows, -1)], 1)
    return cols.gather(1, torch.topk(x.gather(1, cols), k, dim=1).indices)


def label_positives(score: torch.Tensor, p_m: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(top k of score = p_a + p_b + 2 p_m, top k of p_m outside those): view m's pseudo-positives.

    MMRec zeroes the first k in a copy of p_m and ranks it again; the k best of p_m outside them
    are among p_m's 2k best (softmax values are > 0), so those are ranked instead: no N-wide copy.
    p_m may be any positive multiple of p_m per row (e^{cos}: the same order).
    """
    mm = row_topk(score, k)
    cand = row_topk(p_m, 2 * k)
    keep = ~(cand.unsqueeze(2) == mm.unsqueeze(1)).any(2)
    keep &= torch.cumsum(keep, dim=1) <= k
    return mm, cand[keep].view(len(cand), k)


def neighbour_loss(
    mm: torch.Tensor, single: torch.Tensor, q: torch.Tensor, keys: torch.Tensor, total: torch.Tensor
) -> torch.Tensor:
    """−log(Σ_mm / Σ_all) − log(Σ_single / (Σ_all − Σ_mm)) over e^{cos/τ}, averaged over the batch.

    q, keys: the batch's and all items' normalized view; total = Σ_all e^{cos/τ} per batch item
    (ExpSum: computed in row chunks, its gradient too).
    """
    mm_s = torch.exp((keys[mm] * q.unsqueeze(1)).sum(2) / TEMPERATURE).sum(1)
    single_s = torch.exp((keys[single] * q.unsqueeze(1)).sum(2) / TEMPERATURE).sum(1)
    return (-torch.log(mm_s / total + 1e-9) - torch.log(single_s / (total - mm_s) + 1e-9)).mean()


def exp_cos(q: torch.Tensor, keys: torch.Tensor, e: torch.Tensor, e_tau: torch.Tensor) -> None:
    """e = e^{q kᵀ} and e_tau = e^{q kᵀ/τ} = e⁵ (τ = 0.2), written into the given (rows × N) buffers.

    One exp for both: the cosines of unit vectors lie in [−1, 1], so e^{cos} needs no max
    subtracted (softmax's guard) and e^{cos/τ} = (e^{cos})⁵ is three products (within float32
    rounding of exp(cos/τ): ≈ 5 ulp).
    """
    torch.mm(q, keys.T, out=e)
    e.exp_()
    torch.mul(e, e, out=e_tau)
    e_tau.mul_(e_tau).mul_(e)


class ExpSum(torch.autograd.Function):
    """Σ_j e^{q_i·k_j/τ} for each batch item i over all items j, given its value.

    The value comes from the chunked pass that also ranks the pseudo-labels (one batch × N matmul
    per chunk serves both); the backward takes a chunk's e^{q k/τ} from `cache` where that pass
    kept it (at most EXP_CACHE bytes in all) and recomputes it otherwise, so no more than that
    and a chunk of ROW_CHUNK × N at a time is held for autograd.
    """

    @staticmethod
    def forward(
        ctx: Any, q: torch.Tensor, keys: torch.Tensor, value: torch.Tensor, cache: list | None = None
    ) -> torch.Tensor:
        ctx.save_for_backward(q, keys)
        ctx.cache = cache
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        q, keys = ctx.saved_tensors
        cache, ctx.cache = ctx.cache, None
        gq, gk = torch.empty_like(q), torch.zeros_like(keys)
        bufs: tuple[torch.Tensor, torch.Tensor] | None = None  # (e, e_tau) for the chunks not kept
        for c, s in enumerate(range(0, len(q), ROW_CHUNK)):
            qc, g = q[s : s + ROW_CHUNK], grad[s : s + ROW_CHUNK, None] / TEMPERATURE
            w = cache[c] if cache is not None else None
            if w is None:
                if bufs is None:
                    bufs = (q.new_empty(len(qc), len(keys)), q.new_empty(len(qc), len(keys)))
                w = bufs[1][: len(qc)]
                exp_cos(qc, keys, bufs[0][: len(qc)], w)
            # d/dq_i = Σ_j g_i/τ e_ij k_j, d/dk_j = Σ_i g_i/τ e_ij q_i: the row scale on the small side
            torch.mm(w, keys, out=gq[s : s + ROW_CHUNK]).mul_(g)
            gk.addmm_(w.T, qc * g)
        return gq, gk, None, None


@torch.no_grad()
def ranked_views(
    qs: dict[int, torch.Tensor], keys: dict[int, torch.Tensor], k: int
) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], dict[int, torch.Tensor], dict[int, list]]:
    """Per view m: its pseudo-positives (mm, single), Σ_all e^{cos/τ} and the kept chunks of e^{cos/τ}.

    p_m = softmax(q_m kᵀ_m) over all items; total = p_t + p_v + p_s (a view used as t and v counts
    twice); the chunk's batch × N cosines are computed once and serve the softmax, the ranking
    and the sum. The ranking score total + p_m is Σ_v c_v e^{cos_v} / Z_v (c_v: the times view v
    counts), one fused pass per view; p_m's own top 2k is e^{cos_m}'s (the same order). Chunks of
    e^{cos/τ} are kept for ExpSum's backward while they fit EXP_CACHE bytes (None: recomputed).
    """
    views = sorted(qs)
    counts = {m: 1 + (m == 0 and 1 not in qs) for m in views}  # total = p_t + p_v + p_s
    n, b = len(keys[views[0]]), len(qs[views[0]])
    rows = min(ROW_CHUNK, b)
    like = qs[views[0]]
    e = {m: like.new_empty(rows, n) for m in views}
    scratch = like.new_empty(rows, n)
    budget = EXP_CACHE // like.element_size()  # values
    labels: dict[int, list] = {m: [] for m in views}
    sums: dict[int, list] = {m: [] for m in views}
    cache: dict[int, list] = {m: [] for m in views}
    for s in range(0, b, ROW_CHUNK):
        r = min(ROW_CHUNK, b - s)
        z = {}
        for m in views:
            keep = r * n <= budget
            e_tau = like.new_empty(r, n) if keep else scratch[:r]
            exp_cos(qs[m][s : s + r], keys[m], e[m][:r], e_tau)
            z[m] = e[m][:r].sum(1, keepdim=True)
            sums[m].append(e_tau.sum(1))
            cache[m].append(e_tau if keep else None)
            budget -= r * n if keep else 0
        for m in views:
            score = scratch[:r]
            scale = {v: (counts[v] + (v == m)) / z[v] for v in views}
            torch.mul(e[views[0]][:r], scale[views[0]], out=score)
            for v in views[1:]:
                score.addcmul_(e[v][:r], scale[v])
            labels[m].append(label_positives(score, e[m][:r], k))
    return (
        {m: (torch.cat([mm for mm, _ in labels[m]]), torch.cat([one for _, one in labels[m]])) for m in views},
        {m: torch.cat(sums[m]) for m in views},
        cache,
    )


def bernoulli_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) of Bernoulli variables as MMRec writes it (batch_loss uses SymmetricKL, its closed form)."""
    return p * torch.log(p) - p * torch.log(q) + (1 - p) * torch.log(1 - p) - (1 - p) * torch.log(1 - q)


class SymmetricKL(torch.autograd.Function):
    """mean over entries of KL(σ(a)‖σ(b)) + KL(σ(b)‖σ(a)), from the logits: mean((σ(a) − σ(b))(a − b)).

    The eight logs of the two Bernoulli KLs collapse to it (log p − log(1−p) = logit p = a): the
    same values as bernoulli_kl(σa, σb) + bernoulli_kl(σb, σa), within float32 rounding (that form
    cancels terms of ≈ 0.35 to a KL of ≈ 10⁻⁶–10⁻³; where σ saturates to 1 it gives NaN, this does
    not). Its gradient, d/da = σ'(a)(a − b) + σ(a) − σ(b) (and the same with a, b swapped), is
    written in place: six passes over the matrix forward, eight backward.
    """

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        pa, pb, d = torch.sigmoid(a), torch.sigmoid(b), a - b
        s = pa - pb
        ctx.save_for_backward(pa, pb, d, s)
        return (s * d).mean()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pa, pb, d, s = ctx.saved_tensors
        c = grad / s.numel()
        ga = torch.addcmul(pa, pa, pa, value=-1).mul_(d).add_(s).mul_(c)  # (σ'(a) d + s) c
        gb = torch.addcmul(pb, pb, pb, value=-1).mul_(d).add_(s).mul_(-c)
        return ga, gb


def pair_weights(
    u: torch.Tensor, views_pos: list[torch.Tensor], views_neg: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(w+, w−) of each BPR pair from the three views' agreement; no gradient."""
    with torch.no_grad():
        p = torch.sigmoid(torch.stack([(u * F.normalize(h, dim=-1)).sum(1) for h in views_pos]))
        n_mean = torch.sigmoid(torch.stack([(u * F.normalize(h, dim=-1)).sum(1) for h in views_neg])).mean()
        p_mean = p.mean(0)
        w_pos = (p_mean * torch.exp(-p.var(0)) ** 2).clamp(0, 1)
        w_neg = ((p.max(0).values - n_mean) * (p_mean < n_mean).float()).clamp(0, 1)
    return w_pos, w_neg


class DAMRS(nn.Module):
    COLD_PATH = (
        "final vectors of its knn_k warm neighbours in the denoised (mean-masked) t and v kNN graphs, "
        "unweighted 1/sqrt(d_i d_j), the two modalities weighted equally"
    )

    def __init__(self, graph: GraphData, cfg: DAMRSConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_users, self.n_items = graph.n_users, graph.n_items
        names = content_modalities(graph, "DA-MRS")
        d = cfg.embedding_dim
        self.user_emb, self.item_emb = id_embeddings(self.n_users, self.n_items, d)
        feats = {m: graph.features[m].detach().cpu().numpy() for m in names}
        if len(names) == 2 and np.array_equal(feats["t"], feats["v"]):
            names = ("t",)  # one table as t and v: the same masks and graph; built and used once
            del feats["v"]
        edges = masked_knn_edges(feats, cfg.knn_k)
        self.cold_source = {m: (graph.features[m], edges[m]) for m in names}  # S_m's input and edges: the cold kit's
        self.cold_means = {m: mean_similarity(unit_rows(f.astype(np.float32))) for m, f in feats.items()}
        mm = {m: FixedSparse(row_normalized_graph(*edges[m], self.n_items).to(graph.device)) for m in names}
        self.s_t, self.s_v = mm[names[0]], mm[names[-1]]  # one modality serves as both
        behaviour = behaviour_edges(graph.ui, cfg.behaviour_k, cfg.behaviour_min_users)
        self.s_s = FixedSparse(row_normalized_graph(*behaviour, self.n_items).to(graph.device))
        self.r, self.rt = bipartite_blocks(graph)
        self.pseudo_k = min(PSEUDO_K, self.n_items // 2)

    def views(self) -> list[torch.Tensor]:
        """[h_t, h_v, h_s]: the item IDs propagated on each item graph, all items."""
        out: dict[int, torch.Tensor] = {}
        for s in (self.s_t, self.s_v, self.s_s):
            if id(s) not in out:  # one table as t and v: one graph, propagated once
                h = self.item_emb.weight
                for _ in range(self.cfg.n_mm_layers):
                    h = s(h)
                out[id(s)] = h
        return [out[id(s)] for s in (self.s_t, self.s_v, self.s_s)]

    def batch_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        b = len(users)
        uniq_u, uniq_i = torch.unique(users), torch.unique(torch.cat([pos, neg]))
        u, i = bipartite_lightgcn(
            self.r,
            self.rt,
            self.user_emb.weight,
            self.item_emb.weight,
            self.cfg.n_ui_layers,
            torch.cat([users, uniq_u]),
            torch.cat([pos, neg, uniq_i]),
        )
        u_b, u_uniq, i_pos, i_neg, i_uniq = u[:b], u[b:], i[:b], i[b : 2 * b], i[2 * b :]
        h_t, h_v, h_s = views = self.views()
        out = {}
        if self.cfg.neighbor_weight > 0:
            # one table as t and v: the same graph, view, labels and term; computed once, counted twice
            distinct = [0, 2] if self.s_t is self.s_v else [0, 1, 2]
            qs = {m: F.normalize(views[m][uniq_i], dim=1) for m in distinct}
            keys = {m: F.normalize(views[m], dim=1) for m in distinct}
            labels, sums, cache = ranked_views(
                {m: q.detach() for m, q in qs.items()}, {m: kk.detach() for m, kk in keys.items()}, self.pseudo_k
            )
            nd = {
                m: neighbour_loss(*labels[m], qs[m], keys[m], ExpSum.apply(qs[m], keys[m], sums[m], cache[m]))
                for m in distinct
            }
            nd.setdefault(1, nd[0])
            out["neighbour"] = self.cfg.neighbor_weight * (nd[2] + nd[1] + nd[0]) / 3.0  # MMRec's order: s, v, t
        if self.cfg.kl_weight > 0:
            content = (h_t + h_v + h_s)[uniq_i] / 3.0
            # p_g = σ(logit_g), p_c = σ(logit_c): KL(p_g‖p_c) + KL(p_c‖p_g) from the logits (SymmetricKL)
            logit_g = u_uniq @ F.normalize(i_uniq, dim=-1).T
            logit_c = u_uniq @ F.normalize(content, dim=-1).T
            out["kl"] = self.cfg.kl_weight * SymmetricKL.apply(logit_g, logit_c)
        w_pos, w_neg = pair_weights(u_b, [h[pos] for h in views], [h[neg] for h in views])
        pos_score = (u_b * (i_pos + (h_t[pos] + h_v[pos] + h_s[pos]) / 3.0)).sum(1)
        x = pos_score - (u_b * (i_neg + (h_t[neg] + h_v[neg] + h_s[neg]) / 3.0)).sum(1)
        out = {"bpr": -(F.logsigmoid(x) * w_pos + F.logsigmoid(-x) * w_neg).mean(), **out}
        out["loss"] = total_loss(out)
        return out

    @torch.no_grad()
    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        u, i = bipartite_lightgcn(self.r, self.rt, self.user_emb.weight, self.item_emb.weight, self.cfg.n_ui_layers)
        h_t, h_v, h_s = self.views()
        return u, i + (h_t + h_v + h_s) / 3.0

    @torch.no_grad()
    def cold_kit(self) -> dict[str, Any]:
        """The warm items' raw features, S_t/S_v counts and final vectors, the masks' mean similarities."""
        _, items = self.final_embeddings()
        names = tuple(self.cold_source)
        graphs = []
        for m, (f, (rows, cols)) in self.cold_source.items():
            edges = (torch.as_tensor(rows), torch.as_tensor(cols))
            graphs.append(cold.graph_entry(m, 1.0 / len(names), f, items, edges, "unweighted"))
        kit = cold.graph_kit("damrs", graphs, edges, "unweighted", candidates=CANDIDATES, mask=dict(self.cold_means))
        kit["k"] = self.cfg.knn_k  # the cap of a row, whatever the masks left of the trained rows
        return kit


def cold_item_vectors(kit: dict[str, Any], features: dict[str, np.ndarray]) -> np.ndarray:
    """½ (S_t rows + S_v rows) of new items, through the same denoising mask, on the warm final vectors."""
    warm = {g["modality"]: cold.unit_rows(g["features"].numpy()) for g in kit["graphs"]}
    new = {m: cold.unit_rows(np.asarray(features[m], np.float32)) for m in warm if m in features}

    def keep(idx: np.ndarray, sim: np.ndarray) -> np.ndarray:
        ok = np.ones(idx.shape, dtype=bool)
        for m, mean in kit["mask"].items():
            ok &= np.einsum("nd,nkd->nk", new[m], warm[m][idx]) >= mean
        return ok

    return cold.mixed_propagation(kit, features, keep)
