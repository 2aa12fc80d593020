"""Popularity: every user is offered the catalogue's most interacted-with items.

The floor a recommender has to clear, and on new items the floor the content models are
measured against (issue 33):

    score(u, i) = log(1 + n_i)        n_i = the item's training interactions

served as a one-dimensional factorization, user = [1], item = [log(1 + n_i)], so that the
trainer, the evaluator and the FAISS index treat it like any model (score = user · item). The log
keeps the order of n_i (the ranking is plain popularity) and keeps a long-tailed catalogue's
scores in a small range. There is no trainable weight: `fixed = True`, and the trainer runs no
epoch for it (one validation evaluation, best_epoch 0).

Cold items: a new item has no training interaction, so n = 0 and its score is log 1 = 0, below
every warm item anyone interacted with. That is what popularity knows about an item nobody has
bought yet; among cold items every score ties, so the cold division measures popularity at
chance level, which is the honest figure for a model that reads no content.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from models.training.data import GraphData


@dataclass
class PopularityConfig:
    """No hyperparameter: the ranking is fixed by the training counts."""


class Popularity(nn.Module):
    counts: torch.Tensor
    fixed = True  # no trainable weight: the trainer runs no epoch
    COLD_PATH = "no interactions: count 0, score log(1 + 0) = 0, below every warm item (new items tie)"

    def __init__(self, graph: GraphData, cfg: PopularityConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_users, self.n_items = graph.n_users, graph.n_items
        self.register_buffer("counts", graph.item_pop.detach().float().clone(), persistent=False)

    def batch_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        raise RuntimeError("popularity has no trainable weight (fixed = True): train it with no epoch")

    @torch.no_grad()
    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        users = torch.ones(self.n_users, 1, device=self.counts.device)
        return users, torch.log1p(self.counts)[:, None]

    def cold_kit(self) -> dict[str, Any]:
        """Nothing to carry: a new item's count is 0 by definition."""
        return {"model": "pop"}


def cold_item_vectors(kit: dict[str, Any], features: dict[str, np.ndarray], n_items: int | None = None) -> np.ndarray:
    """[log(1 + 0)] = [0] per new item. Popularity reads no features, so the count of new items comes
    from `n_items`, or from the rows of any feature table given."""
    if n_items is None:
        sizes = {len(f) for f in features.values()}
        if len(sizes) != 1:
            raise ValueError("cold path of pop: give n_items (popularity reads no features to count the new items)")
        n_items = sizes.pop()
    return np.zeros((int(n_items), 1), dtype=np.float32)
