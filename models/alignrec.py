"""AlignRec stage 2 (CIKM 2024): one gated multimodal branch aligned to the ID view.

The baseline AnchorRec is measured against (../shared/specs/METHOD.md, "AlignRec stage 2";
authors' code sjtulyf123/AlignRec_CIKM24, `ALIGNREC.calculate_loss`):

    ID view     LightGCN (mean of layers) on the sym-normalized user–item graph
    mm branch   e = item_id ⊙ σ(G(W f_mm)); z = K^L e over the mm kNN graph; users R z
    score       user = lightgcn_u + z_u,  item = lightgcn_i + z_i
    loss        BPR + reg_weight·L2
                + cca_weight · [InfoNCE(z_i+, lightgcn_i+) + InfoNCE(z_u, lightgcn_u)]   (τ = 0.2)
                + uia_weight · (1 − mean cos(u, i+))
                + sim_weight · ‖E Eᵀ − S‖_F / B   (E = z of the positive items, S their raw cosines)

Unlike AnchorRec, the alignment is done directly in the embedding space the score uses: this is
the "positional collapse" AnchorRec's paper attributes to AlignRec. The batch computations reuse
AnchorRec's (only the rows the batch needs; the similarity term through Gram matrices).

Cold items: the model's own forward, run for an item with its features and nothing else. Its ID
embedding does not exist (zero), so its LightGCN part is zero (no ego vector, no user–item edge)
and so is its own gated input e = item_id ⊙ σ(G(W f)) — the encoder's gate scales an ID, it
does not produce a vector from the features alone. What its features do decide is its row of
the mm kNN graph K: its k cosine neighbours among warm items on the raw mm features, weighted
s_nj / sqrt(d_n d_j) as K is (d_j the warm item's degree in the trained K). So its vector is
z = Σ_j K_nj z_j^(L−1), the warm items' branch one layer before the last, exactly what
`final_embeddings` computes for that row (models/cold.py; the new item has no self-loop, its own
e being zero; with n_layers 0 there is no content path and the model reports none). Mapping the
features through the encoder alone was rejected: the gate's output has no meaning without the
ID it multiplies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import cold
from models.backbone import lightgcn_mean
from models.blocks import require_modalities, user_lift
from models.losses import bpr_loss, info_nce, l2_loss, similarity_gap, total_loss
from models.training.data import GraphData
from models.training.sparse import FixedSparse


@dataclass
class AlignRecConfig:
    embedding_dim: int = 64
    n_ui_layers: int = 2
    n_layers: int = 1  # kNN propagation steps of the mm branch (the released config)
    reg_weight: float = 1e-4
    cca_weight: float = 0.01  # the authors' grid: 1e-4 … 0.1
    cca_tau: float = 0.2
    uia_weight: float = 0.1
    sim_weight: float = 0.1  # the authors' grid: 0.1 … 0.5
    finetune_features: bool = False  # True: train a copy of the mm features as branch input (the reference does)
    user_lift: str = "sym"  # 'sym' (reference) or 'mean'

    def __post_init__(self) -> None:
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be ≥ 1, got {self.embedding_dim}")
        for name in ("n_ui_layers", "n_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        for name in ("reg_weight", "cca_weight", "uia_weight", "sim_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if self.cca_tau <= 0:
            raise ValueError(f"cca_tau must be > 0, got {self.cca_tau}")
        if self.user_lift not in ("sym", "mean"):
            raise ValueError(f"user_lift must be 'sym' or 'mean', got {self.user_lift!r}")


# `anchorrec tune`'s grid (models/training/tune.py): the authors' grids for the two alignment weights
# (cca_weight 1e-4 … 0.1, sim_weight 0.1 … 0.5) and MMRec's reg_weight grid; lr on the grid every
# model shares. lr comes from models.training.tune.LR_GRID (shared); every name here is an AlignRecConfig field.
SEARCH_SPACE: dict[str, tuple] = {
    "cca_weight": (1e-4, 1e-3, 1e-2, 1e-1),
    "sim_weight": (0.1, 0.2, 0.3, 0.4, 0.5),
    "reg_weight": (1e-2, 1e-3, 1e-4, 1e-5, 1e-6),
}


class AlignRec(nn.Module):
    unit_mm: torch.Tensor  # a buffer (registered in __init__): unit-norm mm features
    COLD_PATH = (
        "its row of the mm kNN graph (k content neighbours among warm items, cosine, sym-normalised) "
        "applied to the warm gated mm branch; ID and LightGCN parts zero"
    )

    def __init__(self, graph: GraphData, cfg: AlignRecConfig) -> None:
        super().__init__()
        require_modalities(graph, ("mm",), "AlignRec")
        self.cfg = cfg
        self.n_users, self.n_items = graph.n_users, graph.n_items
        d = cfg.embedding_dim
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))
        self.adj = FixedSparse(graph.adj)
        self.lift = FixedSparse(user_lift(graph, cfg.user_lift))
        self.knn = FixedSparse(graph.knn["mm"])
        self.cold_source = (graph.features["mm"], graph.knn_edges["mm"])  # K's input and edges: the cold kit's
        f = graph.features["mm"].float()
        self.register_buffer("unit_mm", F.normalize(f, dim=1), persistent=False)
        if cfg.finetune_features:
            self.feat = nn.Parameter(f.clone())
        else:
            self.register_buffer("feat", f, persistent=False)
        self.trs = nn.Linear(f.shape[1], d)
        self.gate = nn.Linear(d, d)

    def lightgcn(self, nodes: torch.Tensor | None = None) -> torch.Tensor:
        return lightgcn_mean(self.adj, torch.cat([self.user_emb, self.item_emb]), self.cfg.n_ui_layers, nodes)

    def branch(self) -> torch.Tensor:
        e = self.item_emb * torch.sigmoid(self.gate(self.trs(self.feat)))
        for _ in range(self.cfg.n_layers):
            e = self.knn(e)
        return e

    def batch_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg, n_b = self.cfg, len(users)
        lg = self.lightgcn(torch.cat([users, self.n_users + pos, self.n_users + neg]))
        lg_u, lg_p, lg_n = lg[:n_b], lg[n_b : 2 * n_b], lg[2 * n_b :]
        z = self.branch()
        z_u, z_p = self.lift.rows(users, z), z.index_select(0, pos)
        u, p, n = lg_u + z_u, lg_p + z_p, lg_n + z.index_select(0, neg)

        out = {"bpr": bpr_loss(u, p, n)}
        if cfg.reg_weight > 0:
            out["reg"] = cfg.reg_weight * l2_loss(u, p, n)
        if cfg.cca_weight > 0:
            out["cca"] = cfg.cca_weight * (info_nce(z_p, lg_p, cfg.cca_tau) + info_nce(z_u, lg_u, cfg.cca_tau))
        if cfg.uia_weight > 0:
            out["uia"] = cfg.uia_weight * (1 - F.cosine_similarity(u, p, dim=-1).mean())
        if cfg.sim_weight > 0:
            out["sim"] = cfg.sim_weight * similarity_gap(z_p, self.unit_mm[pos])
        out["loss"] = total_loss(out)
        return out

    @torch.no_grad()
    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        lg = self.lightgcn()
        z = self.branch()
        return lg[: self.n_users] + self.lift(z), lg[self.n_users :] + z

    @torch.no_grad()
    def cold_kit(self) -> dict[str, Any] | None:
        """The warm items' raw mm features, K's degrees and the branch one layer before the last."""
        if self.cfg.n_layers == 0:
            return None  # z = e = item_id ⊙ gate: nothing of a new item's features reaches its vector
        e = self.item_emb * torch.sigmoid(self.gate(self.trs(self.feat)))
        for _ in range(self.cfg.n_layers - 1):
            e = self.knn(e)
        f, edges = self.cold_source
        return cold.graph_kit("alignrec", [cold.graph_entry("mm", 1.0, f, e, edges, "cosine")], edges, "cosine")


def cold_item_vectors(kit: dict[str, Any], features: dict[str, np.ndarray]) -> np.ndarray:
    """z = K-row · z^(L−1) of the warm items; the LightGCN part of a new item is zero."""
    return cold.mixed_propagation(kit, features)
