"""LGMRec (Guo et al., AAAI 2024): local graph embeddings plus a global hypergraph embedding.

"LGMRec: Local and Global Graph Learning for Multimodal Recommendation", as MMRec implements
it (enoche/MMRec `src/models/lgmrec.py`, contributed by the first author):

    CGE    [u; i]_c = LightGCN mean of layers 0..n_ui_layers of the ID embeddings on Â
    MGE    per modality m ∈ {v, t}: i⁰ = F_m W_m (frozen features, W_m: D_m → d, no bias),
           u⁰ = mean of i⁰ over the user's training items; [u; i]_m = Â^n_mm_layers [u⁰; i⁰]
           (the last layer only, no layer mean)
    HGE    hyperedges: A_i^m = gumbel_softmax(F_m H_m, τ) (items × hyper_num, row-wise),
           A_u^m = gumbel_softmax(R (F_m H_m), τ) with R the 0/1 user–item matrix (a sum, not a
           mean); both through dropout 1 − keep_rate in training. With x⁰ = i_c and
           n_hyper_layer steps Λ = A_iᵀ x, x = A_i Λ: the modality's hypergraph embeddings are
           u_h^m = A_u Λ, i_h^m = A_i Λ (the last step's Λ)
    final  e = e_c + n(e_v) + n(e_t) + α · n(e_h^v + e_h^t)          (n: row-wise L2 normalization)
    loss   BPR(u, i+, i−)
           + cl_weight · [ HCL(u_h^v[B_u], u_h^t[B_u], u_h^t) + HCL(i_h^v[B_+], i_h^t[B_+], i_h^t) ]
           + reg_weight · (‖U_B‖ + ‖I_B+‖ + ‖I_B−‖) / B       (Frobenius norms, not squared)
    HCL(a, p, O) = Σ_b −log( exp(cos(a_b, p_b)/τ) / Σ_j exp(cos(a_b, O_j)/τ) ), j over ALL users
           (items), summed over the batch; τ = 0.2 (MMRec hard-codes it for both uses)

LGMRec builds no item–item graph: besides the user–item graph its structures are the
n × hyper_num hyperedge assignments, so nothing here grows as N². It needs both t and v (MMRec's
forward fails without either); with t = v (one table, the text-only setup) the same table
serves both, with separate W_m and H_m, as MMRec has it.

Where this file departs from MMRec (tests/test_lgmrec.py checks loss, gradients and scores
against the values MMRec's class prints, benchmarks/parity/lgmrec_parity.py):

- the contrastive denominators are computed through the hyperedges: every row of u_h^t is
  A_u[j] Λ with Λ only hyper_num × d, so cos(a, O_j)/τ = (a Λᵀ/τ‖a‖) · (A_u[j]/‖A_u[j] Λ‖), a
  B × hyper_num by hyper_num × n product instead of MMRec's B × d by d × n (16× fewer flops at
  the defaults, the same numbers up to float rounding); when hyper_num ≥ d the plain form is
  used. The log-sum-exp is the stable form of MMRec's exp / sum, computed block by block of
  users (items) so the B × n logits never exist at once (`_BlockedLogSumExp`);
- only the batch's rows of the last user–item layer (CGE users, MGE users and items), of the
  last hypergraph step (A_i Λ, A_u Λ) and of the final embeddings are computed; all items'
  CGE, the MGE layers before the last and the assignments (cheap: n × hyper_num) are full,
  since the hypergraph and the denominators read every row;
- Â is the trainer's D^-1/2 A D^-1/2 and the user mean divides by the degree, both without
  MMRec's 1e-7 (a relative difference of about 1e-7);
- with t = v the one table is multiplied by [W_t H_t W_v H_v] at once (one pass over it);
- the Gumbel noise is drawn by `F.gumbel_softmax`, as in MMRec, in training and in
  `final_embeddings` alike (MMRec's scores are drawn anew at each evaluation: `model.eval()`
  turns off its dropout, not the noise), so two calls of `final_embeddings` differ slightly.
  For parity, both sides are handed the same noise (the script swaps `F.gumbel_softmax` for a
  fixed draw) and keep_rate 1 (no dropout); dropout itself is `F.dropout`, as MMRec's nn.Dropout;
- MMRec's cf_model 'mf' option (its yaml uses 'lightgcn') is not carried.

Each difference above changes results only by float rounding: the parity test's three cases
(t ≠ v, t = v, and hyper_num ≥ d with two hypergraph steps) agree with MMRec to 1e-5 in the
loss and scores and 1e-4 in every gradient.

Speed (benchmarks/speed/epoch_speed.py, Sports, one CPU thread): 48.7 s/epoch against
LightGCN's 7.1 (the first version, with one B × n logit matrix per denominator, took 122 s of
CPU on a loaded machine). Per batch of 2048 about 0.45 s: the 18 full sparse products of the
local graphs (CGE 3, MGE 3 per modality, forward and backward) a third, the denominators over
all 35 598 users and 18 357 items a third, the feature projections (N × 384 by 384 × 136) a tenth.

Defaults: MMRec's LGMRec.yaml (embedding and feat_embed_dim 64, n_ui_layers 2, n_mm_layers 2,
cl_weight 1e-4, reg_weight 1e-6) and its active dataset block — Baby's: n_hyper_layer 1,
hyper_num 4, keep_rate 0.5, alpha 0.3. The yaml also lists, commented out, Sports (keep_rate 0.4,
alpha 0.6) and Clothing (n_hyper_layer 2, hyper_num 64, keep_rate 0.2, alpha 0.2); SEARCH_SPACE
is the union of the three blocks.

Cold items: an item LGMRec never saw has no ID embedding (no CGE part) and no user–item edge
(its MGE part, the last layer of Â^L, reads only graph neighbours: zero); LGMRec builds no
item–item graph to place it. Its vector is therefore taken from its content neighbours the way
the other graph models here do (models/cold.py): per modality t and v its k cosine neighbours
among warm items on the raw features, weighted s_nj / sqrt(d_n d_j) as the trainer's kNN graph
(`knn_k`, `knn_self`), applied once to the warm items' FINAL vectors, the two modalities weighted
½ each — the paper has no item graph and is silent on cold-start; the equal weights are our
choice (LGMRec adds its two modality embeddings with equal weight). The hypergraph part could in
principle be computed from the features alone (A_i = softmax(F_m H_m)), but its Gumbel draws and
the dropped ID parts would give a vector on another scale than the warm ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import cold
from models.backbone import bipartite_blocks
from models.blocks import feature_groups, id_embeddings
from models.losses import bpr_loss, emb_norm_loss, total_loss
from models.training.data import GraphData
from models.training.sparse import FixedSparse

BLOCK_ELEMENTS = {True: 2**18, False: 2**24}  # logits per block of the contrastive loss: CPU (cache-sized), GPU
LOG2E = math.log2(math.e)
MODALITIES = ("v", "t")  # MMRec's order (its Gumbel draws: v items, v users, t items, t users)


@dataclass
class LGMRecConfig:
    embedding_dim: int = 64
    feat_embed_dim: int = 64  # must equal embedding_dim: the modality embeddings are added to the IDs'
    n_ui_layers: int = 2
    n_mm_layers: int = 2
    n_hyper_layer: int = 1  # MMRec: Baby 1, Sports 1, Clothing 2
    hyper_num: int = 4  # hyperedges per modality; Baby 4, Sports 4, Clothing 64
    keep_rate: float = 0.5  # 1 − dropout on the hyperedge assignments; Baby 0.5, Sports 0.4, Clothing 0.2
    alpha: float = 0.3  # weight of the global embedding; Baby 0.3, Sports 0.6, Clothing 0.2
    cl_weight: float = 1e-4
    reg_weight: float = 1e-6
    tau: float = 0.2  # Gumbel-softmax and contrastive temperature (MMRec hard-codes 0.2)

    def __post_init__(self) -> None:
        if self.feat_embed_dim != self.embedding_dim:
            raise ValueError(
                f"feat_embed_dim ({self.feat_embed_dim}) must equal embedding_dim ({self.embedding_dim}): "
                "the modality embeddings are added to the ID embeddings"
            )
        # τ ≥ 0.025 keeps the contrastive kernel's terms e^(±1/τ) well inside float32
        lowest = {
            "embedding_dim": 1,
            "n_ui_layers": 0,
            "n_mm_layers": 0,
            "n_hyper_layer": 1,
            "hyper_num": 1,
            "alpha": 0,
            "cl_weight": 0,
            "reg_weight": 0,
            "tau": 0.025,
        }
        for name, low in lowest.items():
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be ≥ {low}, got {getattr(self, name)}")
        if not 0 < self.keep_rate <= 1:
            raise ValueError(f"keep_rate must be in (0, 1], got {self.keep_rate}")


# `anchorrec tune`'s grid (models/training/tune.py): MMRec's LGMRec.yaml gives one value per dataset
# (Baby active; Sports, Clothing commented out); the grid is their union. lr comes from
# models.training.tune.LR_GRID (shared); other names are LGMRecConfig fields.
SEARCH_SPACE: dict[str, tuple] = {
    "n_hyper_layer": (1, 2),
    "hyper_num": (4, 64),
    "keep_rate": (0.5, 0.4, 0.2),
    "alpha": (0.3, 0.6, 0.2),
}


class _BlockedLogSumExp(torch.autograd.Function):
    """lse_b = log Σ_j exp(a_b · o_j) for |a_b · o_j| ≤ 1/τ (cosines over τ), over blocks of o's rows.

    The denominators run over every user (item), so the B × n matrix is 2048 × 35 598 floats on
    Sports and grows with the catalog; here it exists one cache-sized block at a time and the
    backward recomputes each block. No shift is needed: with τ ≥ 0.025 (LGMRecConfig checks
    it) every term lies in [e^−40, e^40], far inside float32, and so does a sum of 10⁹ of them.
    exp(x) is taken as exp2(x log₂e), with log₂e folded into a: torch's exp2 is 3–4× faster
    than its exp on CPU. The products are oriented so that their output is the small side
    (6× faster for Eᵀ(w a) as ((w a)ᵀ E)ᵀ). Measured on Sports' users (B = 2048, hyper_num 4):
    3.3× faster than one B × n matrix (models.anchorrec's kernel), and closer to a float64
    reference (gradient error 1e-6 against 2e-5).
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        block = max(1, BLOCK_ELEMENTS[a.device.type == "cpu"] // max(len(a), 1))
        a2, s = a * LOG2E, a.new_zeros(len(a))
        for start in range(0, len(o), block):
            s += torch.mm(a2, o[start : start + block].T).exp2_().sum(1)
        ctx.save_for_backward(a2, o, s)
        ctx.block = block
        return s.log()

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        a2, o, s = ctx.saved_tensors
        w = (g / s)[:, None]
        wa_t = ((w / LOG2E) * a2).T.contiguous()
        grad_a_t, grad_o = a2.new_zeros(a2.shape[1], len(a2)), torch.empty_like(o)
        for start in range(0, len(o), ctx.block):
            part = o[start : start + ctx.block]
            e = torch.mm(a2, part.T).exp2_()
            grad_a_t.addmm_(part.T, e.T)
            grad_o[start : start + ctx.block] = (wa_t @ e).T
        return w * grad_a_t.T, grad_o


def hyper_nce(
    anchor: torch.Tensor, positive: torch.Tensor, assign: torch.Tensor, lat: torch.Tensor, tau: float
) -> torch.Tensor:
    """HCL: Σ_b −log softmax_j(cos(anchor_b, O_j)/τ) at j = b's positive, O = assign @ lat (all rows);
    τ ≥ 0.025 (see _BlockedLogSumExp).

    O has rank ≤ hyper_num, so the B × n logits are (a Λᵀ) (A / ‖A Λ‖)ᵀ: hyper_num flops per
    pair instead of d when hyper_num < d (the same cosines: a · A_j Λ / ‖A_j Λ‖).
    """
    a = F.normalize(anchor, dim=1) / tau
    pos = (a * F.normalize(positive, dim=1)).sum(1)
    o = assign @ lat
    inv_norm = o.norm(dim=1, keepdim=True).clamp_min(1e-12).reciprocal()  # F.normalize's eps
    if lat.shape[0] < lat.shape[1]:
        lse = _BlockedLogSumExp.apply(a @ lat.T, assign * inv_norm)
    else:
        lse = _BlockedLogSumExp.apply(a, o * inv_norm)
    return (lse - pos).sum()


def binary_interactions(graph: GraphData) -> torch.Tensor:
    """R: the 0/1 users × items training matrix (what MMRec's hyperedges of users sum over)."""
    idx = graph.ui.coalesce().indices()
    ones = torch.ones(idx.shape[1], device=idx.device)
    return torch.sparse_coo_tensor(idx, ones, (graph.n_users, graph.n_items), check_invariants=False).coalesce()


class LGMRec(nn.Module):
    COLD_PATH = (
        "final vectors of its k content-kNN warm neighbours in t and in v (cosine, sym-normalised "
        "as the trainer's kNN graph), the two modalities weighted equally"
    )

    def __init__(self, graph: GraphData, cfg: LGMRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_users, self.n_items = graph.n_users, graph.n_items
        missing = [m for m in MODALITIES if m not in graph.features]
        if missing:
            raise ValueError(
                f"LGMRec needs features 't' and 'v'; the graph lacks {missing}. For text only, give the text "
                "table as both (t = v); extract features first: `anchorrec features --dataset <name>`."
            )
        # raw features and the trainer's kNN edges (LGMRec itself reads no kNN graph): the cold kit's
        self.cold_source = {m: (graph.features[m], graph.knn_edges.get(m)) for m in MODALITIES}
        groups = feature_groups(graph.features, MODALITIES)
        self.tables = {
            name: tuple(m for m in MODALITIES if groups[m] == name) for name in dict.fromkeys(groups.values())
        }
        for name in self.tables:
            self.register_buffer(f"feat_{name}", graph.features[name].float(), persistent=False)
        d, k = cfg.embedding_dim, cfg.hyper_num
        self.user_emb, self.item_emb = id_embeddings(self.n_users, self.n_items, d)
        dims = {m: graph.features[m].shape[1] for m in MODALITIES}
        self.trs = nn.ParameterDict(
            {m: nn.Parameter(nn.init.xavier_uniform_(torch.empty(dims[m], d))) for m in MODALITIES}
        )
        self.hyper = nn.ParameterDict(
            {m: nn.Parameter(nn.init.xavier_uniform_(torch.empty(dims[m], k))) for m in MODALITIES}
        )
        self.r, self.rt = bipartite_blocks(graph)
        self.user_mean = FixedSparse(graph.ui)  # rows sum to 1: u⁰ = mean of the user's items
        self.user_sum = FixedSparse(binary_interactions(graph))

    def projections(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per modality (F W, F H) for all items: one product per distinct feature table."""
        d, out = self.cfg.embedding_dim, {}
        for name, mods in self.tables.items():
            y = getattr(self, f"feat_{name}") @ torch.cat([torch.cat([self.trs[m], self.hyper[m]], 1) for m in mods], 1)
            for m, part in zip(mods, y.split(d + self.cfg.hyper_num, 1)):
                out[m] = (part[:, :d], part[:, d:])
        return out

    def propagate(
        self,
        u: torch.Tensor,
        i: torch.Tensor,
        n_layers: int,
        mean: bool,
        users: torch.Tensor | None = None,
        items: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Â^L [u; i], or the mean of layers 0..L; with `users`, the last layer at those rows only
        (and at rows `items`, or every item when `items` is None)."""
        sum_u, sum_i = u, i
        for layer in range(n_layers):
            if users is not None and layer == n_layers - 1:
                u_last = self.r.rows(users, i)
                i_last = self.rt(u) if items is None else self.rt.rows(items, u)
                if not mean:
                    return u_last, i_last
                sum_i = sum_i if items is None else sum_i.index_select(0, items)
                return (sum_u.index_select(0, users) + u_last) / (n_layers + 1), (sum_i + i_last) / (n_layers + 1)
            u, i = self.r(i), self.rt(u)
            sum_u, sum_i = (sum_u + u, sum_i + i) if mean else (u, i)
        if mean:
            sum_u, sum_i = sum_u / (n_layers + 1), sum_i / (n_layers + 1)
        if users is None:
            return sum_u, sum_i
        return sum_u.index_select(0, users), sum_i if items is None else sum_i.index_select(0, items)

    def assignments(self, logits: torch.Tensor, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(A_i, A_u): items' and users' soft hyperedge memberships, Gumbel-softmax then dropout."""
        tau, p = self.cfg.tau, 1.0 - self.cfg.keep_rate
        a_i = F.gumbel_softmax(logits, tau=tau, dim=1)
        a_u = F.gumbel_softmax(self.user_sum(logits), tau=tau, dim=1)
        return F.dropout(a_i, p, training), F.dropout(a_u, p, training)

    def hyper_lat(self, a_i: torch.Tensor, items_c: torch.Tensor) -> torch.Tensor:
        """Λ of the last hypergraph step (x ← A_i Λ, Λ = A_iᵀ x, starting at the items' CGE)."""
        x = items_c
        for step in range(self.cfg.n_hyper_layer):
            lat = a_i.T @ x
            if step < self.cfg.n_hyper_layer - 1:
                x = a_i @ lat
        return lat

    def embed(self, users: torch.Tensor | None, items: torch.Tensor | None, training: bool):
        """Final embeddings at rows `users` and `items` (all rows when both are None), and per
        modality the hypergraph's (A_i, A_u, Λ)."""
        cfg, proj = self.cfg, self.projections()
        u, items_c = self.propagate(self.user_emb.weight, self.item_emb.weight, cfg.n_ui_layers, True, users)
        i = items_c if items is None else items_c.index_select(0, items)
        hyper = {}
        for m in MODALITIES:  # MMRec's order of Gumbel draws: v then t, items then users
            a_i, a_u = self.assignments(proj[m][1], training)
            hyper[m] = (a_i, a_u, self.hyper_lat(a_i, items_c))
        for m in MODALITIES:
            feats = proj[m][0]
            u_m, i_m = self.propagate(self.user_mean(feats), feats, cfg.n_mm_layers, False, users, items)
            u, i = u + F.normalize(u_m, dim=1), i + F.normalize(i_m, dim=1)
        pick = lambda a, idx: a if idx is None else a.index_select(0, idx)  # noqa: E731
        u_h = sum(pick(a_u, users) @ lat for _, a_u, lat in hyper.values())
        i_h = sum(pick(a_i, items) @ lat for a_i, _, lat in hyper.values())
        return u + cfg.alpha * F.normalize(u_h, dim=1), i + cfg.alpha * F.normalize(i_h, dim=1), hyper

    def batch_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg, b = self.cfg, len(users)
        u, i, hyper = self.embed(users, torch.cat([pos, neg]), self.training)
        out = {"bpr": bpr_loss(u, i[:b], i[b:])}
        if cfg.cl_weight > 0:
            (ai_v, au_v, lat_v), (ai_t, au_t, lat_t) = hyper["v"], hyper["t"]
            hcl = hyper_nce(
                au_v.index_select(0, users) @ lat_v, au_t.index_select(0, users) @ lat_t, au_t, lat_t, cfg.tau
            )
            hcl = hcl + hyper_nce(
                ai_v.index_select(0, pos) @ lat_v, ai_t.index_select(0, pos) @ lat_t, ai_t, lat_t, cfg.tau
            )
            out["hcl"] = cfg.cl_weight * hcl
        if cfg.reg_weight > 0:
            out["reg"] = cfg.reg_weight * emb_norm_loss(u, i[:b], i[b:])
        out["loss"] = total_loss(out)
        return out

    @torch.no_grad()
    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        u, i, _ = self.embed(None, None, training=False)
        return u, i

    @torch.no_grad()
    def cold_kit(self) -> dict[str, Any]:
        """The warm items' raw features, kNN degrees and final vectors, t and v weighted ½ each."""
        _, items = self.final_embeddings()
        graphs = []
        for m, (f, edges) in self.cold_source.items():
            if edges is None:
                raise ValueError(f"LGMRec's cold path needs the kNN graph of {m!r}; build the GraphData with it")
            graphs.append(cold.graph_entry(m, 0.5, f, items, edges, "cosine"))
            shape_from: tuple[torch.Tensor, ...] = edges
        return cold.graph_kit("lgmrec", graphs, shape_from, "cosine")


def cold_item_vectors(kit: dict[str, Any], features: dict[str, np.ndarray]) -> np.ndarray:
    """½ (t-kNN rows + v-kNN rows) of new items applied to the warm final vectors (see the docstring)."""
    return cold.mixed_propagation(kit, features)
