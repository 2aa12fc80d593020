"""LATTICE (Zhang et al., MM 2021): item–item graphs learned from the content, mixed with fixed ones.

"Mining Latent Structures for Multimedia Recommendation", as MMRec implements it (enoche/MMRec
`src/models/lattice.py`, cf_model 'lightgcn', the setting the multimodal papers compare against):

    fixed graph   O_m = D^-1/2 kNN(f_m) D^-1/2   top-k cosine neighbours of modality m's raw
                                                 features (the item itself among them), weighted
                                                 by the cosine, D = row sums; built once
    learned graph S_m = kNN(T_m f_m)             the same on the projected features (T_m: D_m →
                                                 feat_embed_dim), rebuilt at each epoch's start
    mix           w = softmax(α)                 α ∈ R² learned (MMRec: [v, t], start [0.5, 0.5])
                  A = (1 − λ) · D^-1/2 (w_v S_v + w_t S_t) D^-1/2 + λ (w_v O_v + w_t O_t)
    item side     h = A^L q                      (q: item ID embeddings, L = n_layers)
    UI graph      Â = D^-1 (A_ui + I)            row-normalized, with self-loops (not LightGCN's
                                                 symmetric Â); [u; i] = mean of layers 0..n_ui_layers
    item          i + h / ‖h‖
    loss          −mean log σ(u·i+ − u·i−) + reg_weight · ½(‖u‖² + ‖i+‖² + ‖i−‖²) / B
                  (on the final embeddings of the batch)

The learned graph carries gradients only in the batch that builds it — the first of each epoch:
that batch trains T_m, α and the feature tables f_m (MMRec wraps them in unfrozen nn.Embeddings);
the epoch's other batches use the graph detached (so those parameters get no gradient there, and
Adam skips them, as with MMRec on PyTorch ≥ 2 whose zero_grad sets gradients to None). Scoring
rebuilds the graph from the current parameters, as MMRec's full_sort_predict does. With t = v
(one table for both, the text-only setup) O_v = O_t, while S_v and S_t differ (T_v ≠ T_t, and the
two feature copies are trained apart), as in MMRec; with one modality A uses its graphs alone
and there is no α.

Where this file departs from MMRec (tests/test_lattice.py checks loss, gradients and scores
against the values MMRec's class prints, benchmarks/parity/lattice_parity.py):

- no N × N matrix: the fixed graphs are `GraphData.knn_edges` (FAISS, block by block,
  models/training/graphs.py); the learned graph's neighbours are found by the same `knn_search` on the
  detached projections, and only their k cosines per row are recomputed with gradients. The
  gradient is the same as through MMRec's dense topk (which passes gradient to the selected
  entries alone); neighbours tied in cosine may be chosen in another order. k and whether an
  item is among its own neighbours follow the fixed graph, i.e. the trainer's `knn_k` /
  `knn_self` (defaults 10 / True = MMRec's knn_k 10 and its topk over a unit diagonal). Above
  models.training.graphs.EXACT_MAX items the search is approximate for the learned graph as well;
- the graph's rows are propagated with an index_add over its edges (k·(2 + 2) per item), then
  kept as a fixed CSR matrix for the epoch's other batches, which compute only their items' rows
  of the last item-graph layer and of the last user–item layer (the loss reads no other row);
- the regularizer divides by the batch's length; MMRec divides by train_batch_size, which
  differs on the last, shorter batch of each epoch only;
- BPR is MMRec's LATTICE's (no 1e-10). Only cf_model 'lightgcn' (MMRec's default) is carried,
  so neither the NGCF and MF variants nor their mess_dropout and layer widths are; n_ui_layers
  stands for len(weight_size). That variant has no randomness besides BPR sampling, so the
  parity check needs nothing but fixed weights.

Speed (benchmarks/speed/epoch_speed.py, Sports, one CPU thread, CPU seconds): 13.9 s/epoch
against LightGCN's 7.5 in the same run. The epoch's first batch costs 5.7 s (two exact kNN
searches over 18k projected items, 2.1 s, and the gradient into the two 18k × 384 feature
tables), each other batch 0.09 s (LightGCN 0.07). MMRec multiplies the dense 18k × 18k item graph
by the item table in every batch: 0.8 s for that product alone, its backward another. Measured
against MMRec's structure re-created (benchmarks/speed/bench_baseline_speed.py, same weights and batches,
1 thread, a loaded machine): 20–22× per batch and per epoch (430–673 vs 20–32 s/epoch); its
literal diag(d)·A·diag(d) normalization would add an estimated 1,350–1,860 s per epoch more.

Defaults: MMRec's LATTICE.yaml (embedding 64, feat_embed_dim 64, weight_size [64, 64] → 2 UI
layers, n_layers 1, knn_k 10, lambda_coeff 0.9, lr decay 0.96 per 50 epochs = the trainer's
default). Its reg_weight ∈ {0, 1e-5, 1e-4, 1e-3} is a grid searched per dataset; 1e-4 is used
here (the middle of its non-zero values), so a tuned comparison sweeps it.

Cold items: an item LATTICE never saw has no ID embedding and no user–item edge; what its
features give it is a row of the item graph. Its vector is the fixed graphs' row applied once to
the warm items' FINAL vectors: per modality its k cosine neighbours among warm items on the raw
features, weighted s_nj / sqrt(d_n d_j) as O_m is (d_j the warm item's degree in the trained
O_m), mixed with the learned modality weights w = softmax(α) (models/cold.py). The learned graph
S_m (weight 1 − λ = 0.1 by default) is left out: it is built on each item's trained copy of its
features, which a new item does not have, and mixing a graph of raw features into it would be a
graph the model never saw. One step whatever n_layers (the warm vectors carry their own
propagation); no self-loop (the new item has no vector to keep). The paper is silent on
cold-start; these choices are ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import cold
from models.blocks import (
    content_modalities,
    id_embeddings,
    projections,
    require_knn,
    trained_features,
)
from models.losses import bpr_loss, l2_loss, total_loss
from models.training.data import GraphData
from models.training.graphs import knn_search
from models.training.sparse import FixedSparse

Edges = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # rows, cols, values


@dataclass
class LATTICEConfig:
    embedding_dim: int = 64
    feat_embed_dim: int = 64  # projection the learned graph's cosines are taken in
    n_layers: int = 1  # item–item graph layers
    n_ui_layers: int = 2  # MMRec: len(weight_size)
    lambda_coeff: float = 0.9  # share of the fixed graph in the item–item graph
    reg_weight: float = 1e-4  # MMRec grid {0, 1e-5, 1e-4, 1e-3}

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "feat_embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("n_layers", "n_ui_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if not 0 <= self.lambda_coeff <= 1:
            raise ValueError(f"lambda_coeff must be in [0, 1], got {self.lambda_coeff}")
        if self.reg_weight < 0:
            raise ValueError(f"reg_weight must be ≥ 0, got {self.reg_weight}")


# `anchorrec tune`'s grid (models/training/tune.py): MMRec's LATTICE.yaml searches reg_weight (and lr,
# which is searched for every model on one grid). Other names are LATTICEConfig fields.
SEARCH_SPACE: dict[str, tuple] = {
    "reg_weight": (0.0, 1e-5, 1e-4, 1e-3),
}


def self_loop_blocks(graph: GraphData) -> tuple[FixedSparse, FixedSparse, torch.Tensor, torch.Tensor]:
    """D^-1 (A + I) on the bipartite graph, split: (R_u, R_i, s_u, s_i) with a layer being
    u' = s_u ⊙ u + R_u i, i' = s_i ⊙ i + R_i u, s = 1 / (degree + 1)."""
    coo = graph.ui.coalesce()
    users, items = coo.indices()
    s_u = 1.0 / (torch.bincount(users, minlength=graph.n_users).float() + 1.0)
    s_i = 1.0 / (torch.bincount(items, minlength=graph.n_items).float() + 1.0)
    r_u = torch.sparse_coo_tensor(
        torch.stack([users, items]), s_u[users], (graph.n_users, graph.n_items), check_invariants=False
    )
    r_i = torch.sparse_coo_tensor(
        torch.stack([items, users]), s_i[items], (graph.n_items, graph.n_users), check_invariants=False
    )
    return FixedSparse(r_u.coalesce()), FixedSparse(r_i.coalesce()), s_u, s_i


def knn_cosine(x: torch.Tensor, k: int, include_self: bool) -> Edges:
    """The top-k cosine neighbours of each row of x, the cosines differentiable in x."""
    idx, _ = knn_search(x.detach().float().cpu().numpy(), k, include_self=include_self)
    rows = torch.arange(len(x), device=x.device).repeat_interleave(idx.shape[1])
    cols = torch.as_tensor(idx.reshape(-1), device=x.device)
    keep = cols >= 0  # an approximate search may find fewer than k
    rows, cols = rows[keep], cols[keep]
    unit = x / x.norm(dim=1, keepdim=True)
    return rows, cols, (unit.index_select(0, rows) * unit.index_select(0, cols)).sum(1)


def sym_normalize(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n: int) -> torch.Tensor:
    """w_ij / sqrt(d_i d_j), d the row sums (duplicate entries add up), 0 where d = 0."""
    d = torch.zeros(n, dtype=vals.dtype, device=vals.device).index_add(0, rows, vals)
    inv = d.pow(-0.5)
    inv = inv.masked_fill(torch.isinf(inv), 0.0)
    return vals * inv.index_select(0, rows) * inv.index_select(0, cols)


def edge_matmul(edges: Edges, x: torch.Tensor) -> torch.Tensor:
    """A @ x for A given as (possibly repeated) edges, differentiable in the values and x."""
    rows, cols, vals = edges
    return x.new_zeros(x.shape).index_add(0, rows, vals[:, None] * x.index_select(0, cols))


class LATTICE(nn.Module):
    s_u: torch.Tensor  # buffers registered in __init__ (declared for their type): self-loop weights of D^-1 (A + I)
    s_i: torch.Tensor
    COLD_PATH = (
        "final vectors of its k content-kNN warm neighbours per modality, weighted as the fixed "
        "graphs O_m (cosine, sym-normalised) and mixed by the learned softmax(α)"
    )

    def __init__(self, graph: GraphData, cfg: LATTICEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_users, self.n_items = graph.n_users, graph.n_items
        self.modalities = content_modalities(graph, "LATTICE")
        require_knn(graph, self.modalities, "LATTICE")
        d = cfg.embedding_dim
        self.user_emb, self.item_emb = id_embeddings(self.n_users, self.n_items, d)
        # trained through the learned graph (MMRec: nn.Embedding.from_pretrained(freeze=False)); own copies
        self.feat = trained_features(graph, self.modalities)
        self.trs = projections(graph, self.modalities, cfg.feat_embed_dim)
        if len(self.modalities) == 2:
            self.modal_weight = nn.Parameter(torch.tensor([0.5, 0.5]))  # [v, t], MMRec's order
        self.fixed = {m: graph.knn_edges[m] for m in self.modalities}
        self.cold_source = {m: graph.features[m] for m in self.modalities}  # raw: O_m's input, the cold kit's
        rows, cols, _ = self.fixed[self.modalities[0]]
        self.knn_k = int(torch.bincount(rows, minlength=self.n_items).max())
        self.knn_self = bool((rows == cols).any())
        self.r_u, self.r_i, s_u, s_i = self_loop_blocks(graph)
        self.register_buffer("s_u", s_u, persistent=False)
        self.register_buffer("s_i", s_i, persistent=False)
        self.item_adj: FixedSparse | None = None  # this epoch's graph, detached; None: rebuild
        self.rebuild_next = True

    def on_epoch_end(self, epoch: int) -> None:
        self.rebuild_next = True  # MMRec's pre_epoch_processing

    def mix_weights(self) -> dict[str, torch.Tensor]:
        if len(self.modalities) == 1:
            return {self.modalities[0]: torch.ones((), device=self.item_emb.weight.device)}
        w = torch.softmax(self.modal_weight, 0)
        return {"v": w[0], "t": w[1]}

    def item_graph(self) -> Edges:
        """A = (1 − λ) · normalized(Σ w_m S_m) + λ · Σ w_m O_m, as edges (repeats add up)."""
        lam, w = self.cfg.lambda_coeff, self.mix_weights()
        learned = [knn_cosine(self.trs[m](self.feat[m]), self.knn_k, self.knn_self) for m in self.modalities]
        rows = torch.cat([r for r, _, _ in learned])
        cols = torch.cat([c for _, c, _ in learned])
        vals = torch.cat([w[m] * v for m, (_, _, v) in zip(self.modalities, learned)])
        vals = (1 - lam) * sym_normalize(rows, cols, vals, self.n_items)
        fixed = [self.fixed[m] for m in self.modalities]
        return (
            torch.cat([rows] + [r for r, _, _ in fixed]),
            torch.cat([cols] + [c for _, c, _ in fixed]),
            torch.cat([vals] + [lam * w[m] * v for m, (_, _, v) in zip(self.modalities, fixed)]),
        )

    def item_side(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """h / ‖h‖ with h = A^L q (rows `items` only, when given): rebuilds A when an epoch starts."""
        h = self.item_emb.weight
        if self.rebuild_next or self.item_adj is None or items is None:
            edges = self.item_graph()
            for _ in range(self.cfg.n_layers):
                h = edge_matmul(edges, h)
            if items is not None:  # training: keep this epoch's graph for its other batches
                rows, cols, vals = edges
                adj = torch.sparse_coo_tensor(
                    torch.stack([rows, cols]), vals.detach(), (self.n_items,) * 2, check_invariants=False
                )
                self.item_adj, self.rebuild_next = FixedSparse(adj.coalesce()), False
        else:
            for layer in range(self.cfg.n_layers):
                if layer == self.cfg.n_layers - 1:
                    return F.normalize(self.item_adj.rows(items, h), dim=1)
                h = self.item_adj(h)
        h = h if items is None else h.index_select(0, items)
        return F.normalize(h, dim=1)

    def ui_side(
        self, users: torch.Tensor | None = None, items: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean of the layers of D^-1 (A + I); the last layer only at `users`/`items` when given."""
        u, i = self.user_emb.weight, self.item_emb.weight
        sum_u, sum_i = u, i
        n = self.cfg.n_ui_layers
        scale = 1.0 / (n + 1)
        for layer in range(n):
            if users is not None and layer == n - 1:
                assert items is not None  # users and items are given together
                last_u = self.s_u[users, None] * u.index_select(0, users) + self.r_u.rows(users, i)
                last_i = self.s_i[items, None] * i.index_select(0, items) + self.r_i.rows(items, u)
                return (sum_u.index_select(0, users) + last_u) * scale, (sum_i.index_select(0, items) + last_i) * scale
            u, i = self.s_u[:, None] * u + self.r_u(i), self.s_i[:, None] * i + self.r_i(u)
            sum_u, sum_i = sum_u + u, sum_i + i
        if users is None:
            return sum_u * scale, sum_i * scale
        assert items is not None
        return sum_u.index_select(0, users) * scale, sum_i.index_select(0, items) * scale

    def batch_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        b, items = len(users), torch.cat([pos, neg])
        u, i = self.ui_side(users, items)
        i = i + self.item_side(items)
        out = {"bpr": bpr_loss(u, i[:b], i[b:])}
        if self.cfg.reg_weight > 0:
            out["reg"] = self.cfg.reg_weight * l2_loss(u, i[:b], i[b:])
        out["loss"] = total_loss(out)
        return out

    @torch.no_grad()
    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        u, i = self.ui_side()
        return u, i + self.item_side()

    @torch.no_grad()
    def cold_kit(self) -> dict[str, Any]:
        """The warm items' raw features, O_m degrees and final vectors, with the learned modality weights."""
        _, items = self.final_embeddings()
        w = {m: float(v) for m, v in self.mix_weights().items()}
        graphs = [
            cold.graph_entry(m, w[m], self.cold_source[m], items, self.fixed[m], "cosine") for m in self.modalities
        ]
        return cold.graph_kit("lattice", graphs, self.fixed[self.modalities[0]], "cosine")


def cold_item_vectors(kit: dict[str, Any], features: dict[str, np.ndarray]) -> np.ndarray:
    """Σ_m w_m O_m-rows of new items applied to the warm final vectors (see the docstring)."""
    return cold.mixed_propagation(kit, features)
