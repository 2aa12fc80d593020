"""Building blocks the recommenders share: which content a model gets and checks on it, its ID
tables, trained feature copies and projections, MLP heads, the user lift of item vectors and
row-consistent dropout.

Kept in one place so that every baseline creates its parameters the same way and in the same
order (the parity tests against MMRec fix the random stream: users' table, items' table, then
the projections), and so a fix reaches all of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.training.data import GraphData
from models.training.sparse import FixedSparse, block

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


def require_modalities(graph: GraphData, names: tuple[str, ...], model: str) -> None:
    for m in names:
        if m not in graph.features or m not in graph.knn:
            raise ValueError(
                f"{model} needs feature and kNN graph {m!r}; the graph has features {sorted(graph.features)}. "
                "Build the GraphData with all of them (the same table may serve several modalities)."
            )


def feature_groups(features: dict[str, torch.Tensor], names: tuple[str, ...]) -> dict[str, str]:
    """Modality → the first modality with identical raw features (so shared work is done once)."""
    groups: dict[str, str] = {}
    for m in names:
        groups[m] = next(
            (o for o in groups if features[o].shape == features[m].shape and torch.equal(features[o], features[m])), m
        )
    return groups


def same_matrix(a: FixedSparse, b: FixedSparse) -> bool:
    """The same sparse matrix (so products with it may be shared)."""
    return a.shape == b.shape and all(torch.equal(getattr(a, n), getattr(b, n)) for n in ("crow", "col", "val"))


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_out))
    for layer in net:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
    return net


def user_lift(graph: GraphData, kind: str) -> torch.Tensor:
    """The users × items matrix that lifts item embeddings to users.

    'sym' is the reference's R = D_u^-1/2 R D_i^-1/2 (the user–item block of the normalized
    graph); 'mean' is `graph.ui` (each user the mean of their training items).
    """
    if kind == "mean":
        return graph.ui
    n_u, n_i = graph.n_users, graph.n_items
    return block(graph.adj, 0, n_u, n_u, n_u + n_i)


def row_dropout(x: torch.Tensor, ids: torch.Tensor, p: float) -> torch.Tensor:
    """dropout(X)[ids] for X whose rows `ids` are x: one mask per distinct id, as on the full table."""
    uniq, inverse = torch.unique(ids, return_inverse=True)
    first = torch.zeros(len(uniq), dtype=torch.long, device=ids.device).scatter_(
        0, inverse, torch.arange(len(ids), device=ids.device)
    )
    return F.dropout(x.index_select(0, first), p, training=True).index_select(0, inverse)
