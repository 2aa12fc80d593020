"""LightGCN (He et al., SIGIR 2020): ID embeddings smoothed over the user–item graph.

    E^(0) = [users; items]               (learned, d = 64)
    E^(l+1) = Â E^(l),  Â = D^-1/2 A D^-1/2
    E = mean(E^(0), …, E^(L))            score(u, i) = E_u · E_i

Â = [[0, R], [Rᵀ, 0]] is bipartite, so a layer is u' = R i, i' = Rᵀ u on the two blocks kept
apart (`bipartite_lightgcn`, the backbone AnchorRec and AlignRec share): no users+items
concatenation, and the CSR transposes are stored once (models/sparse.py). A batch's loss needs
E only at its users and items, so the last layer is computed for those rows alone
((Â E^(L-1))[rows] = Â[rows] E^(L-1)): identical numbers, less sparse work.

Loss on a batch of BPR triples (u, i+, i-):
    bpr = -mean log σ(E_u·E_i+ − E_u·E_i-)
    reg = reg_weight · ½ (‖E⁰_u‖² + ‖E⁰_i+‖² + ‖E⁰_i-‖²) / batch     (on the ego embeddings)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.data import GraphData
from models.sparse import FixedSparse, block


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


# `anchorrec tune`'s grid (models/tune.py): MMRec's LightGCN.yaml searches n_layers {1..4} and
# reg_weight {1e-2 … 1e-6}; lr is searched for every model on one grid (an equal budget).
# lr comes from models.tune.LR_GRID (shared); every name here is a LightGCNConfig field.
SEARCH_SPACE: dict[str, tuple] = {
    "n_layers": (1, 2, 3, 4),
    "reg_weight": (1e-2, 1e-3, 1e-4, 1e-5, 1e-6),
}


def bipartite_blocks(graph: GraphData) -> tuple[FixedSparse, FixedSparse]:
    """(R, Rᵀ): the user–item and item–user blocks of the normalized graph Â = [[0, R], [Rᵀ, 0]]."""
    n_u, n_i = graph.n_users, graph.n_items
    return FixedSparse(block(graph.adj, 0, n_u, n_u, n_u + n_i)), FixedSparse(block(graph.adj, n_u, n_u + n_i, 0, n_u))


def lightgcn_mean(adj: FixedSparse, ego: torch.Tensor, n_layers: int, nodes: torch.Tensor | None = None) -> torch.Tensor:
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
            return (sum_u.index_select(0, users) + r.rows(users, i)) * scale, (sum_i.index_select(0, items) + rt.rows(items, u)) * scale
        u, i = r(i), rt(u)
        sum_u, sum_i = sum_u + u, sum_i + i
    if users is None:
        return sum_u * scale, sum_i * scale
    return sum_u.index_select(0, users) * scale, sum_i.index_select(0, items) * scale


def bpr_loss(u: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    return -F.logsigmoid((u * pos).sum(-1) - (u * neg).sum(-1)).mean()


class LightGCN(nn.Module):
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
