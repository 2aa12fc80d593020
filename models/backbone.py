"""The LightGCN backbone every graph recommender here propagates on (He et al., SIGIR 2020).

Â = [[0, R], [Rᵀ, 0]] is bipartite, so a layer is u' = R i, i' = Rᵀ u on the two blocks kept
apart: no users+items concatenation, and the CSR transposes are stored once
(models/training/sparse.py). A batch's loss needs the embeddings only at its users and items, so
the last layer is computed for those rows alone ((Â E^(L-1))[rows] = Â[rows] E^(L-1)):
identical numbers, less sparse work.
"""

from __future__ import annotations

import torch

from models.training.data import GraphData
from models.training.sparse import FixedSparse, block


def bipartite_blocks(graph: GraphData) -> tuple[FixedSparse, FixedSparse]:
    """(R, Rᵀ): the user–item and item–user blocks of the normalized graph Â = [[0, R], [Rᵀ, 0]]."""
    n_u, n_i = graph.n_users, graph.n_items
    return FixedSparse(block(graph.adj, 0, n_u, n_u, n_u + n_i)), FixedSparse(block(graph.adj, n_u, n_u + n_i, 0, n_u))


def lightgcn_mean(
    adj: FixedSparse, ego: torch.Tensor, n_layers: int, nodes: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of LightGCN layers E⁰..E^L (users then items); only rows `nodes` when given.

    With `nodes`, the last layer is computed for those rows only: the batch needs no more.
    """
    layers, h = [ego], ego
    for layer in range(n_layers):
        if nodes is not None and layer == n_layers - 1:
            return torch.stack([x.index_select(0, nodes) for x in layers] + [adj.rows(nodes, h)]).mean(0)
        h = adj(h)
        layers.append(h)
    out = torch.stack(layers).mean(0)
    return out if nodes is None else out.index_select(0, nodes)


def bipartite_lightgcn(
    r: FixedSparse,
    rt: FixedSparse,
    e_u: torch.Tensor,
    e_i: torch.Tensor,
    n_layers: int,
    users: torch.Tensor | None = None,
    items: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`lightgcn_mean` on A = [[0, R], [Rᵀ, 0]], users and items kept apart: (users' mean, items' mean).

    The same numbers without concatenating the two tables: a layer is u' = R i, i' = Rᵀ u, and
    with `users`/`items` the last layer is computed for those rows only — the users' rows of R
    are a small gather (a batch's users have few items), and the layers are summed before the
    one gather per side, so the backward pass scatters into each table once.
    """
    sum_u, sum_i, u, i = e_u, e_i, e_u, e_i
    scale = 1.0 / (n_layers + 1)
    for layer in range(n_layers):
        if users is not None and layer == n_layers - 1:
            assert items is not None  # users and items are given together
            return (sum_u.index_select(0, users) + r.rows(users, i)) * scale, (
                sum_i.index_select(0, items) + rt.rows(items, u)
            ) * scale
        u, i = r(i), rt(u)
        sum_u, sum_i = sum_u + u, sum_i + i
    if users is None:
        return sum_u * scale, sum_i * scale
    assert items is not None
    return sum_u.index_select(0, users) * scale, sum_i.index_select(0, items) * scale
