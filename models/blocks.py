"""Building blocks the MMRec-style baselines share: which content a model gets, its ID tables,
its trained feature copies and projections, and MMRec's embedding-norm loss.

Kept in one place so that every baseline creates its parameters the same way and in the same
order (the parity tests against MMRec fix the random stream: users' table, items' table, then
the projections), and so a fix reaches all of them.
"""
from __future__ import annotations

import torch
from torch import nn

from models.data import GraphData

CONTENT = ("t", "v")  # in MMRec's concatenation order


def content_modalities(graph: GraphData, model: str) -> tuple[str, ...]:
    """The graph's t and v features (either may be missing, not both), in MMRec's order."""
    names = tuple(m for m in CONTENT if m in graph.features)
    if not names:
        raise ValueError(
            f"{model} needs feature 't' or 'v'; the graph has {sorted(graph.features)}. "
            "Extract text or image features first: `anchorrec features --dataset <name>`."
        )
    return names


def require_knn(graph: GraphData, modalities: tuple[str, ...], model: str) -> None:
    """Item–item models build on the kNN graph of each content table."""
    missing = [m for m in modalities if m not in graph.knn_edges]
    if missing:
        raise ValueError(f"{model} needs the kNN graph of {missing}; build the GraphData with features {missing}")


def id_embeddings(n_users: int, n_items: int, dim: int) -> tuple[nn.Embedding, nn.Embedding]:
    """User and item ID tables, Xavier-uniform as MMRec initialises them (created, then initialised:
    the same random stream as MMRec's constructors)."""
    users, items = nn.Embedding(n_users, dim), nn.Embedding(n_items, dim)
    nn.init.xavier_uniform_(users.weight)
    nn.init.xavier_uniform_(items.weight)
    return users, items


def trained_features(graph: GraphData, modalities: tuple[str, ...]) -> nn.ParameterDict:
    """Own, trainable copies of the content tables (MMRec: nn.Embedding.from_pretrained(freeze=False))."""
    return nn.ParameterDict({m: nn.Parameter(graph.features[m].float().clone()) for m in modalities})


def projections(graph: GraphData, modalities: tuple[str, ...], dim: int) -> nn.ModuleDict:
    """One linear map per content table into the `dim`-wide model space."""
    return nn.ModuleDict({m: nn.Linear(graph.features[m].shape[1], dim) for m in modalities})


def emb_norm_loss(*embeddings: torch.Tensor) -> torch.Tensor:
    """MMRec's EmbLoss: Σ ‖E‖_F over the batch tables, divided by the batch size."""
    return sum(torch.linalg.vector_norm(e) for e in embeddings) / embeddings[-1].shape[0]
