"""FREEDOM (Zhou & Shen, MM 2023): a frozen item–item graph and a denoised user–item graph.

"A Tale of Two Graphs: Freezing and Denoising Graph Structures for Multimodal Recommendation",
as MMRec implements it (enoche/MMRec `src/models/freedom.py`, the authors' own code):

    item graph  S = w_v · S_v + (1 − w_v) · S_t      w_v = mm_image_weight; S_m the kNN graph of
                S_m[i, j] = 1/sqrt(d_i d_j) for the k nearest    modality m's raw features (cosine,
                neighbours j of i (the item itself among them),  k = knn_k, unweighted, d_i = its
                built once from the raw features and frozen      number of neighbours = k)
    h           h = S^L q                                        (q: item ID embeddings, L = n_mm_layers)
    UI graph    each epoch, keep (1 − dropout)·|E| training edges sampled without replacement with
                probability ∝ 1/sqrt(deg_u deg_i) (degree-sensitive pruning), renormalize
                D^-1/2 A D^-1/2 on the kept edges; scoring uses the full graph
    embeddings  [u; i] = LightGCN mean of layers 0..n_ui_layers on that graph; item = i + h
    loss        BPR(u, i+, i−) + reg_weight · Σ_{m ∈ t, v} BPR(u, T_m f_m,i+, T_m f_m,i−)

T_m is a linear map D_m → feat_embed_dim (= embedding_dim, since it is scored against u), and
the feature tables f_m are trained too (MMRec wraps them in unfrozen nn.Embeddings); they enter
the score only through the kNN graph, built before training. With t = v (one table for both,
the text-only setup) S = S_t and the two feature copies are trained apart, as in MMRec.

Where this file departs from MMRec (tests/test_freedom.py checks loss, gradients and scores
against the values MMRec's class prints, benchmarks/parity/mmrec_parity.py):

- the kNN graph comes from `GraphData.knn_edges` (FAISS, block by block, models/training/graphs.py) — no
  N × N similarity matrix. Its k and whether an item counts among its own neighbours are the
  trainer's `knn_k` / `knn_self` (defaults 10 / True = FREEDOM's knn_k 10 with the item itself
  in its top-k, as MMRec's topk over a similarity matrix with a unit diagonal has it); the
  weights are FREEDOM's unweighted 1/sqrt(d_i d_j), not the cosine-weighted graph other models use;
- only the batch's rows of the last propagation layer (user–item and item–item) are computed,
  and only the batch's items are projected by T_m (MMRec computes all items for each batch):
  the same loss and gradients, since the loss reads no other row;
- the pruned graph is sampled at the end of each epoch for the next one (the trainer's
  `on_epoch_end`) and once at construction for the first epoch; MMRec samples at the start of
  each epoch. A resumed run draws the graph of its first epoch afresh;
- the full graph is the trainer's D^-1/2 A D^-1/2 without MMRec's 1e-7 in the degrees (a
  relative difference of about 1e-7); the pruned graph keeps the 1e-7, as MMRec's;
- BPR is −mean log σ(x) as in MMRec's FREEDOM (no 1e-10); unused MMRec options
  (lambda_coeff, cf_model, degree_ratio, weight_size) are not carried.

Speed (benchmarks/speed/epoch_speed.py, Sports, one CPU thread): 9.5 s/epoch against LightGCN's
7.1; 3.7 with reg_weight 0. The difference is the trained feature tables (N × D per modality):
each batch gives them a dense gradient and Adam moves every row (momentum moves rows outside the
batch too, as in MMRec), which a sparse update would change.

Defaults: MMRec's FREEDOM.yaml (embedding 64, feat_embed_dim 64, n_mm_layers 1, n_ui_layers 2,
knn_k 10, mm_image_weight 0.1). Its dropout ∈ {0.8, 0.9} and reg_weight ∈ {0, 1e-5, 1e-4, 1e-3}
are grids searched per dataset with no published single value; 0.8 and 1e-4 are used here
(0.8 is the grid's first value; 1e-4 the middle of its non-zero values — at 0 the features would
only shape the kNN graph), so a tuned comparison sweeps both.

Cold items: an item FREEDOM never saw has no ID embedding q and no user–item edge, so neither
the LightGCN part nor S^L q exists for it; what it has is the row it would get in the frozen
item graph. Its vector is that row applied once to the warm items' FINAL vectors (i + h): its k
content neighbours among warm items in each modality (cosine on the raw features, as S_m is
built), FREEDOM's unweighted 1/sqrt(d_n d_j) (d = neighbour counts, the warm d_j those of the
trained graph), mixed w_v S_v + (1 − w_v) S_t with the model's mm_image_weight — S is the
model's own statement of which items' vectors a new item's content makes it resemble (models/cold.py;
one step whatever n_mm_layers, since the warm vectors already carry their own propagation; the
new item keeps no self-loop, having no vector of its own). The paper evaluates warm items only;
this choice is ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from models import cold
from models.backbone import bipartite_blocks, bipartite_lightgcn
from models.blocks import (
    content_modalities,
    id_embeddings,
    projections,
    require_knn,
    trained_features,
)
from models.losses import added, bpr_loss, total_loss
from models.training.data import GraphData
from models.training.sparse import FixedSparse

EPS = 1e-7  # MMRec's guard in the degrees of its graphs


@dataclass
class FREEDOMConfig:
    embedding_dim: int = 64
    feat_embed_dim: int = 64  # must equal embedding_dim: projected features are scored against users
    n_mm_layers: int = 1
    n_ui_layers: int = 2
    reg_weight: float = 1e-4  # MMRec grid {0, 1e-5, 1e-4, 1e-3}
    dropout: float = 0.8  # share of user–item edges pruned each epoch; MMRec grid {0.8, 0.9}
    mm_image_weight: float = 0.1

    def __post_init__(self) -> None:
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be ≥ 1, got {self.embedding_dim}")
        if self.feat_embed_dim != self.embedding_dim:
            raise ValueError(
                f"feat_embed_dim ({self.feat_embed_dim}) must equal embedding_dim ({self.embedding_dim}): "
                "projected features are scored against the user embeddings"
            )
        for name in ("n_mm_layers", "n_ui_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if self.reg_weight < 0:
            raise ValueError(f"reg_weight must be ≥ 0, got {self.reg_weight}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.mm_image_weight <= 1:
            raise ValueError(f"mm_image_weight must be in [0, 1], got {self.mm_image_weight}")


# `anchorrec tune`'s grid (models/training/tune.py): MMRec's FREEDOM.yaml searches dropout and reg_weight;
# lr is searched for every model on one grid (an equal budget). Other names are FREEDOMConfig fields.
SEARCH_SPACE: dict[str, tuple] = {
    "dropout": (0.8, 0.9),
    "reg_weight": (0.0, 1e-5, 1e-4, 1e-3),
}


def unweighted_knn(graph: GraphData, modality: str) -> torch.Tensor:
    """FREEDOM's S_m: the kNN edges of `modality` with weight 1/sqrt(d_i d_j), d = neighbours per row."""
    rows, cols, _ = graph.knn_edges[modality]
    n = graph.n_items
    inv = (torch.bincount(rows, minlength=n).float() + EPS).pow(-0.5)
    vals = inv[rows] * inv[cols]
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, n), check_invariants=False).coalesce()


def item_graph(graph: GraphData, names: tuple[str, ...], image_weight: float) -> torch.Tensor:
    """w_v S_v + (1 − w_v) S_t, or the one modality's graph when only one is there."""
    if len(names) == 1:
        return unweighted_knn(graph, names[0])
    return (image_weight * unweighted_knn(graph, "v") + (1 - image_weight) * unweighted_knn(graph, "t")).coalesce()


def normalized_bipartite(
    users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int
) -> tuple[FixedSparse, FixedSparse]:
    """(R, Rᵀ) with R[u, i] = 1/sqrt((deg_u + ε)(deg_i + ε)) on the given edges, as MMRec normalizes."""
    du = (torch.bincount(users, minlength=n_users).float() + EPS).pow(-0.5)
    di = (torch.bincount(items, minlength=n_items).float() + EPS).pow(-0.5)
    r = torch.sparse_coo_tensor(
        torch.stack([users, items]), du[users] * di[items], (n_users, n_items), check_invariants=False
    )
    r = r.coalesce()
    return FixedSparse(r), FixedSparse(r.t().coalesce())


class FREEDOM(nn.Module):
    # buffers registered in __init__ (declared for their type): the training graph's edges, their keep probability
    edge_users: torch.Tensor
    edge_items: torch.Tensor
    edge_prob: torch.Tensor
    COLD_PATH = (
        "final vectors of its k content-kNN warm neighbours per modality, FREEDOM's unweighted "
        "1/sqrt(d_i d_j) graph weights mixed by mm_image_weight"
    )

    def __init__(self, graph: GraphData, cfg: FREEDOMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_users, self.n_items = graph.n_users, graph.n_items
        self.modalities = content_modalities(graph, "FREEDOM")
        require_knn(graph, self.modalities, "FREEDOM")
        d = cfg.embedding_dim
        self.user_emb, self.item_emb = id_embeddings(self.n_users, self.n_items, d)
        # the features are trained (MMRec: nn.Embedding.from_pretrained(freeze=False)); own copies
        self.feat = trained_features(graph, self.modalities)
        self.trs = projections(graph, self.modalities, cfg.feat_embed_dim)
        self.mm = FixedSparse(item_graph(graph, self.modalities, cfg.mm_image_weight))
        # raw features and kNN edges the item graph was built from: the cold kit reads them
        self.cold_source = {m: (graph.features[m], graph.knn_edges[m]) for m in self.modalities}
        self.r, self.rt = bipartite_blocks(graph)  # the full graph: scoring, and dropout 0
        coo = graph.ui.coalesce().indices()
        self.register_buffer("edge_users", coo[0].clone(), persistent=False)
        self.register_buffer("edge_items", coo[1].clone(), persistent=False)
        deg_u = torch.bincount(self.edge_users, minlength=self.n_users).float() + EPS
        deg_i = torch.bincount(self.edge_items, minlength=self.n_items).float() + EPS
        # MMRec's values to the bit (pow(−½) per side, then the product), so the same random stream
        # draws the same edges (tests/test_freedom.py checks the draws against MMRec's own sampler)
        prob = deg_u.pow(-0.5)[self.edge_users] * deg_i.pow(-0.5)[self.edge_items]
        self.register_buffer("edge_prob", prob, persistent=False)
        self.train_r, self.train_rt = self.r, self.rt
        self.resample_edges()

    def use_edges(self, users: torch.Tensor, items: torch.Tensor) -> None:
        """Train on the graph of these user–item edges (renormalized) until the next resample."""
        self.train_r, self.train_rt = normalized_bipartite(users, items, self.n_users, self.n_items)

    def resample_edges(self) -> None:
        """Degree-sensitive pruning: keep (1 − dropout)·|E| edges, drawn ∝ 1/sqrt(deg_u deg_i)."""
        if self.cfg.dropout <= 0:
            self.train_r, self.train_rt = self.r, self.rt
            return
        n_keep = int(len(self.edge_prob) * (1.0 - self.cfg.dropout))
        keep = torch.multinomial(self.edge_prob, n_keep)
        self.use_edges(self.edge_users[keep], self.edge_items[keep])

    def on_epoch_end(self, epoch: int) -> None:
        self.resample_edges()

    def item_side(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """h = S^L q (rows `items` only, when given)."""
        h = self.item_emb.weight
        for layer in range(self.cfg.n_mm_layers):
            if items is not None and layer == self.cfg.n_mm_layers - 1:
                return self.mm.rows(items, h)
            h = self.mm(h)
        return h if items is None else h.index_select(0, items)

    def batch_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        b, items = len(users), torch.cat([pos, neg])
        u, i = bipartite_lightgcn(
            self.train_r, self.train_rt, self.user_emb.weight, self.item_emb.weight, self.cfg.n_ui_layers, users, items
        )
        i = i + self.item_side(items)
        out = {"bpr": bpr_loss(u, i[:b], i[b:])}
        if self.cfg.reg_weight > 0:
            feat = added(
                [
                    bpr_loss(u, f[:b], f[b:])
                    for f in (self.trs[m](self.feat[m].index_select(0, items)) for m in self.modalities)
                ]
            )
            out["feat_bpr"] = self.cfg.reg_weight * feat
        out["loss"] = total_loss(out)
        return out

    @torch.no_grad()
    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        u, i = bipartite_lightgcn(self.r, self.rt, self.user_emb.weight, self.item_emb.weight, self.cfg.n_ui_layers)
        return u, i + self.item_side()

    def cold_kit(self) -> dict[str, Any]:
        """The warm items' raw features, graph degrees and final vectors, with the modality weights."""
        _, items = self.final_embeddings()
        w_v = self.cfg.mm_image_weight
        weights = {"v": w_v, "t": 1.0 - w_v} if len(self.modalities) == 2 else {self.modalities[0]: 1.0}
        graphs = [
            cold.graph_entry(m, weights[m], f, items, edges, "unweighted") for m, (f, edges) in self.cold_source.items()
        ]
        return cold.graph_kit("freedom", graphs, self.cold_source[self.modalities[0]][1], "unweighted")


def cold_item_vectors(kit: dict[str, Any], features: dict[str, np.ndarray]) -> np.ndarray:
    """w_v S_v + (1 − w_v) S_t rows of new items applied to the warm final vectors (see the docstring)."""
    return cold.mixed_propagation(kit, features)
