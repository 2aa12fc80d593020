"""LightGCN (He et al., SIGIR 2020): ID embeddings smoothed over the user–item graph.

    E^(0) = [users; items]               (learned, d = 64)
    E^(l+1) = Â E^(l),  Â = D^-1/2 A D^-1/2
    E = mean(E^(0), …, E^(L))            score(u, i) = E_u · E_i

Â = [[0, R], [Rᵀ, 0]] is bipartite, so a layer is u' = R i, i' = Rᵀ u on the two blocks kept
apart (`models.backbone.bipartite_lightgcn`, the backbone every graph model here shares): no users+items
concatenation, and the CSR transposes are stored once (models/training/sparse.py). A batch's loss needs
E only at its users and items, so the last layer is computed for those rows alone
((Â E^(L-1))[rows] = Â[rows] E^(L-1)): identical numbers, less sparse work.

Loss on a batch of BPR triples (u, i+, i-):
    bpr = -mean log σ(E_u·E_i+ − E_u·E_i-)
    reg = reg_weight · ½ (‖E⁰_u‖² + ‖E⁰_i+‖² + ‖E⁰_i-‖²) / batch     (on the ego embeddings)

Cold items: none. An item LightGCN never saw has no ID embedding and no edge, and the model reads
no content, so nothing could place it: any vector would be made up (zeros would rank it by
accident, a mean vector would recommend it to everyone alike). `COLD_PATH = None`: the cold
column lists LightGCN as having no cold path instead of scoring it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from models.backbone import bipartite_blocks, bipartite_lightgcn
from models.losses import bpr_loss
from models.training.data import GraphData


@dataclass
class LightGCNConfig:
    dim: int = 64
    n_layers: int = 2
    reg_weight: float = 1e-4

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"dim must be ≥ 1, got {self.dim}")
        if self.n_layers < 0:
            raise ValueError(f"n_layers must be ≥ 0, got {self.n_layers}")
        if self.reg_weight < 0:
            raise ValueError(f"reg_weight must be ≥ 0, got {self.reg_weight}")


# `anchorrec tune`'s grid (models/training/tune.py): MMRec's LightGCN.yaml searches n_layers {1..4} and
# reg_weight {1e-2 … 1e-6}; lr is searched for every model on one grid (an equal budget).
# lr comes from models.training.tune.LR_GRID (shared); every name here is a LightGCNConfig field.
SEARCH_SPACE: dict[str, tuple] = {
    "n_layers": (1, 2, 3, 4),
    "reg_weight": (1e-2, 1e-3, 1e-4, 1e-5, 1e-6),
}


class LightGCN(nn.Module):
    COLD_PATH = None  # ID-only: no honest vector for an item it never saw (see the docstring)

    def __init__(self, graph: GraphData, cfg: LightGCNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_users, self.n_items = graph.n_users, graph.n_items
        self.r, self.rt = bipartite_blocks(graph)
        self.user_emb = nn.Embedding(self.n_users, cfg.dim)
        self.item_emb = nn.Embedding(self.n_items, cfg.dim)
        nn.init.xavier_uniform_(self.user_emb.weight)
        nn.init.xavier_uniform_(self.item_emb.weight)

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return bipartite_lightgcn(self.r, self.rt, self.user_emb.weight, self.item_emb.weight, self.cfg.n_layers)

    def batch_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        b = len(users)
        u, i = bipartite_lightgcn(
            self.r, self.rt, self.user_emb.weight, self.item_emb.weight, self.cfg.n_layers, users, torch.cat([pos, neg])
        )
        bpr = bpr_loss(u, i[:b], i[b:])
        ego = (self.user_emb(users), self.item_emb(pos), self.item_emb(neg))
        reg = self.cfg.reg_weight * 0.5 * sum(e.pow(2).sum() for e in ego) / b
        return {"loss": bpr + reg, "bpr": bpr, "reg": reg}

    @torch.no_grad()
    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.embeddings()

    def cold_kit(self) -> None:
        """No cold path, so no kit: `models.cold.save_kit` writes nothing for LightGCN."""
        return None


def cold_item_vectors(kit: dict[str, Any] | None, features: dict[str, np.ndarray]) -> np.ndarray:
    """LightGCN has no cold path: asking for one is a caller's error (models.cold.cold_vectors gives None)."""
    raise ValueError("lightgcn has no cold path (COLD_PATH = None): leave it out of the cold column")
