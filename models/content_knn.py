"""Content kNN: users are the mean of their items' content vectors, items are ranked by cosine.

The content-only baseline of the cold leaderboard (issue 33): no interaction is learned from,
so it shows how far an item's features alone go, for warm and new items alike.

    item i     x_i = f_i / ‖f_i‖                     f the item's content vector
    user u     p_u = m_u / ‖m_u‖,  m_u = mean of x_i over u's training items
    score      p_u · x_i = cos(m_u, x_i)

The content table is the config's `modality`: 'auto' (default) reads the mm table when the
dataset has one (the inter-content ICA features, the project's best single content table), else
the text table t, else the image table v; 'mm', 't' or 'v' picks one. There is no trainable
weight: `fixed = True`, the trainer runs no epoch. A user's vector is a function of the item
vectors and their training items, so `anchorrec update` recomputes it when a user gains items.

Cold items: a new item's vector is its own normalised content vector, x = f / ‖f‖, computed
exactly as a warm item's: the model never looked at anything else, so nothing is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.training.data import GraphData
from models.training.sparse import FixedSparse

MODALITY_ORDER = ("mm", "t", "v")  # 'auto' takes the first the dataset has


@dataclass
class ContentKNNConfig:
    modality: str = "auto"  # 'auto': mm when the dataset has it, else t, else v

    def __post_init__(self) -> None:
        if self.modality not in ("auto",) + MODALITY_ORDER:
            raise ValueError(f"modality must be one of auto, mm, t, v; got {self.modality!r}")


def pick_modality(available: Any, wanted: str) -> str:
    """The content table to read: `wanted`, or for 'auto' the first of mm, t, v the graph has."""
    names = [m for m in MODALITY_ORDER if m in available]
    if wanted == "auto":
        if not names:
            raise ValueError(
                "content_knn needs a content table (mm, t or v); extract features first: "
                "`anchorrec features --dataset <name>`"
            )
        return names[0]
    if wanted not in available:
        raise ValueError(f"content_knn: modality {wanted!r} is not among the dataset's tables {sorted(available)}")
    return wanted


class ContentKNN(nn.Module):
    items: torch.Tensor
    fixed = True  # no trainable weight: the trainer runs no epoch
    COLD_PATH = "its own L2-normalised content vector, computed exactly as a warm item's"

    def __init__(self, graph: GraphData, cfg: ContentKNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_users, self.n_items = graph.n_users, graph.n_items
        self.modality = pick_modality(graph.features, cfg.modality)
        self.register_buffer("items", F.normalize(graph.features[self.modality].float(), dim=1), persistent=False)
        self.user_mean = FixedSparse(graph.ui)  # rows sum to 1: each user the mean of their training items

    def batch_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        raise RuntimeError("content_knn has no trainable weight (fixed = True): train it with no epoch")

    @torch.no_grad()
    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised mean of each user's items, normalised items): scores are cosines."""
        return F.normalize(self.user_mean(self.items), dim=1), self.items.clone()

    def cold_kit(self) -> dict[str, Any]:
        """Which table, and its width: a new item needs nothing else."""
        return {"model": "content_knn", "modality": self.modality, "dim": int(self.items.shape[1])}


def cold_item_vectors(kit: dict[str, Any], features: dict[str, np.ndarray]) -> np.ndarray:
    """f / ‖f‖ of the new items' `kit['modality']` rows (a zero row stays zero)."""
    m = kit["modality"]
    if m not in features:
        raise ValueError(f"cold path of content_knn: no {m!r} features for the new items; give {m!r}")
    f = np.asarray(features[m], np.float32)
    if f.ndim != 2 or f.shape[1] != kit["dim"]:
        raise ValueError(f"cold path of content_knn: {m!r} features have shape {f.shape}, expected {kit['dim']} dims")
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    return np.divide(f, norms, out=np.zeros_like(f), where=norms > 0)
