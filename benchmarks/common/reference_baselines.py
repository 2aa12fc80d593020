"""FREEDOM and LATTICE computed the way MMRec computes them: the speed benchmark's baselines.

Each class subclasses our model (models/freedom.py, models/lattice.py), so one state_dict fits
both and the math is the same (tests/test_reference_baselines.py checks loss and gradients on a
tiny input); only the computation's structure is MMRec's (enoche/MMRec `src/models/freedom.py`,
`src/models/lattice.py`, `src/common/trainer.py`, re-created here, not copied):

FREEDOM, per batch
    the full forward over every user and item: S·q with torch.sparse.mm on the item–item COO
    matrix, then LightGCN with torch.sparse.mm on the concatenated (users + items)² COO matrix
    of the pruned graph, the mean of the stacked layers, then the batch's rows gathered; both
    projections T_m f_m over all items for the feature BPR term.
FREEDOM, per epoch
    degree-sensitive pruning: torch.multinomial over the edges, the kept edges renormalized
    through torch.sparse.sum, and the two directions concatenated into an uncoalesced COO matrix
    (MMRec's `pre_epoch_processing`).
LATTICE, per batch
    both projections T_m f_m over all items (MMRec computes them in every forward, used or not),
    the item side as a dense N × N product with the epoch's item graph (detached after the
    epoch's first batch), LightGCN on the concatenated D^-1 (A + I) with torch.sparse.mm.
LATTICE, the epoch's first batch
    the learned graph rebuilt densely: N × N cosine matrix per modality, torch.topk, the top-k
    scattered into a dense N × N matrix, the modalities mixed, symmetric normalization, mixed
    with the dense fixed graphs (kept as dense N × N matrices, as MMRec loads them), all with
    gradients. MMRec normalizes with two dense products diag(d) · A · diag(d) (N³ each, and two
    more per product in the backward pass); `laplacian="diagflat"` does exactly that,
    `laplacian="scale"` scales rows and columns instead (the same numbers, N² work): the speed
    benchmark uses "scale" at full size and measures the N³ products apart (see
    benchmarks/speed/bench_baseline_speed.py), since one epoch's four-to-six 18k³ products take tens of
    minutes on the benchmark's CPU.

Not used by the project's training; only the benchmark and its test import it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.freedom import EPS, FREEDOM, FREEDOMConfig, item_graph
from models.lattice import LATTICE, LATTICEConfig
from models.losses import bpr_loss, l2_loss
from models.training.data import GraphData

LAPLACIANS = ("diagflat", "scale")


def _moved(module: torch.nn.Module, fn, names: tuple[str, ...]) -> None:
    """Apply `.to(...)`'s fn to plain tensor attributes too (they are no buffers: MMRec's aren't)."""
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, torch.Tensor):
            setattr(module, name, fn(value))
        elif isinstance(value, dict):
            setattr(module, name, {k: fn(v) for k, v in value.items()})


def lightgcn_concat(
    adj: torch.Tensor, e_u: torch.Tensor, e_i: torch.Tensor, n_layers: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """MMRec's LightGCN: layers of torch.sparse.mm over [users; items], stacked and averaged, split."""
    ego = torch.cat([e_u, e_i])
    layers = [ego]
    for _ in range(n_layers):
        ego = torch.sparse.mm(adj, ego)
        layers.append(ego)
    mean = torch.stack(layers, dim=1).mean(dim=1)
    return torch.split(mean, [e_u.shape[0], e_i.shape[0]])


class ReferenceFREEDOM(FREEDOM):
    """FREEDOM with MMRec's per-batch full forward and per-epoch COO pruning (see the module doc)."""

    TENSORS = ("norm_adj", "mm_coo", "masked_adj")

    def __init__(self, graph: GraphData, cfg: FREEDOMConfig) -> None:
        self.masked_adj = None  # the pruned graph; None: the full graph (dropout 0)
        super().__init__(graph, cfg)
        self.norm_adj = graph.adj.coalesce()  # D^-1/2 A D^-1/2 over users + items
        self.mm_coo = item_graph(graph, self.modalities, cfg.mm_image_weight)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        _moved(self, fn, self.TENSORS)
        return out

    def resample_edges(self) -> None:
        """MMRec's pre_epoch_processing: the same draw as ours (same probabilities, same order)."""
        if self.cfg.dropout <= 0:
            self.masked_adj = None
            return
        n_keep = int(len(self.edge_prob) * (1.0 - self.cfg.dropout))
        keep = torch.multinomial(self.edge_prob, n_keep)
        self.use_edges(self.edge_users[keep], self.edge_items[keep])

    def use_edges(self, users: torch.Tensor, items: torch.Tensor) -> None:
        """The kept edges renormalized via torch.sparse.sum, both directions in one uncoalesced COO."""
        kept = torch.stack([users, items])
        counts = torch.sparse_coo_tensor(kept, torch.ones_like(users), (self.n_users, self.n_items))
        row_sum = EPS + torch.sparse.sum(counts, -1).to_dense()
        col_sum = EPS + torch.sparse.sum(counts.t(), -1).to_dense()
        values = row_sum.pow(-0.5)[users] * col_sum.pow(-0.5)[items]
        shifted = torch.stack([users, items + self.n_users])
        indices = torch.cat([shifted, torch.flip(shifted, [0])], 1)
        n = self.n_users + self.n_items
        self.masked_adj = torch.sparse_coo_tensor(indices, torch.cat([values, values]), (n, n))

    def forward_all(self, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.item_emb.weight
        for _ in range(self.cfg.n_mm_layers):
            h = torch.sparse.mm(self.mm_coo, h)
        u, i = lightgcn_concat(adj, self.user_emb.weight, self.item_emb.weight, self.cfg.n_ui_layers)
        return u, i + h

    def batch_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        ua, ia = self.forward_all(self.norm_adj if self.masked_adj is None else self.masked_adj)
        u = ua[users]
        out = {"bpr": bpr_loss(u, ia[pos], ia[neg])}
        if self.cfg.reg_weight > 0:
            feats = [self.trs[m](self.feat[m]) for m in self.modalities]  # every item, every batch
            out["feat_bpr"] = self.cfg.reg_weight * sum(bpr_loss(ua[users], f[pos], f[neg]) for f in feats)
        out["loss"] = sum(out.values())
        return out

    @torch.no_grad()
    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_all(self.norm_adj)


def dense_cosine(x: torch.Tensor) -> torch.Tensor:
    """The N × N cosine matrix of the rows of x (MMRec's build_sim)."""
    unit = x.div(torch.norm(x, p=2, dim=-1, keepdim=True))
    return torch.mm(unit, unit.t())


def dense_topk(sim: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's k largest entries scattered into an otherwise zero N × N matrix."""
    values, index = torch.topk(sim, k, dim=-1)
    return torch.zeros_like(sim).scatter_(-1, index, values)


def dense_normalized(adj: torch.Tensor, laplacian: str) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of a dense A (D = row sums, 0 where a row sum is 0)."""
    inv = torch.pow(torch.sum(adj, -1), -0.5)
    inv = inv.masked_fill(torch.isinf(inv), 0.0)
    if laplacian == "diagflat":  # MMRec: two dense N × N × N products
        d = torch.diagflat(inv)
        return torch.mm(torch.mm(d, adj), d)
    return adj * inv[:, None] * inv[None, :]


class ReferenceLATTICE(LATTICE):
    """LATTICE with MMRec's dense N × N item graph (see the module doc)."""

    TENSORS = ("norm_adj", "original", "dense_adj")

    def __init__(self, graph: GraphData, cfg: LATTICEConfig, laplacian: str = "diagflat") -> None:
        super().__init__(graph, cfg)
        if laplacian not in LAPLACIANS:
            raise ValueError(f"laplacian must be one of {LAPLACIANS}, got {laplacian!r}")
        if not self.knn_self:
            raise ValueError(
                "the reference's dense topk keeps each item among its neighbours: build the graph with knn_self=True"
            )
        self.laplacian = laplacian
        self.norm_adj = self_loop_adjacency(graph)
        n = self.n_items
        # the fixed graphs O_m as MMRec holds them: dense N × N, one per modality
        self.original = {}
        for m in self.modalities:
            rows, cols, vals = graph.knn_edges[m]
            self.original[m] = torch.zeros(n, n, device=vals.device).index_put_((rows, cols), vals, accumulate=True)
        self.dense_adj: torch.Tensor | None = None

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        _moved(self, fn, self.TENSORS)
        return out

    def dense_item_graph(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """(1 − λ) · normalized(Σ w_m topk(cos(T_m f_m))) + λ · Σ w_m O_m, dense, with gradients."""
        w = self.mix_weights()
        learned = {m: dense_topk(dense_cosine(feats[m]), self.knn_k) for m in self.modalities}
        if len(self.modalities) == 1:
            (m,) = self.modalities
            mixed, original = learned[m], self.original[m]
        else:
            mixed = w["v"] * learned["v"] + w["t"] * learned["t"]
            original = w["v"] * self.original["v"] + w["t"] * self.original["t"]
        lam = self.cfg.lambda_coeff
        return (1 - lam) * dense_normalized(mixed, self.laplacian) + lam * original

    def forward_all(self, build: bool) -> tuple[torch.Tensor, torch.Tensor]:
        feats = {m: self.trs[m](self.feat[m]) for m in self.modalities}  # MMRec: every forward
        if build or self.dense_adj is None:
            self.dense_adj = self.dense_item_graph(feats)
            adj = self.dense_adj
        else:
            adj = self.dense_adj = self.dense_adj.detach()
        h = self.item_emb.weight
        for _ in range(self.cfg.n_layers):
            h = torch.mm(adj, h)
        u, i = lightgcn_concat(self.norm_adj, self.user_emb.weight, self.item_emb.weight, self.cfg.n_ui_layers)
        return u, i + F.normalize(h, p=2, dim=1)

    def batch_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        ua, ia = self.forward_all(self.rebuild_next)
        self.rebuild_next = False
        u, p, n = ua[users], ia[pos], ia[neg]
        out = {"bpr": bpr_loss(u, p, n)}
        if self.cfg.reg_weight > 0:
            out["reg"] = self.cfg.reg_weight * l2_loss(u, p, n)
        out["loss"] = sum(out.values())
        return out

    @torch.no_grad()
    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_all(True)


def self_loop_adjacency(graph: GraphData) -> torch.Tensor:
    """D^-1 (A + I) over users + items as one coalesced COO matrix (MMRec's LATTICE norm_adj)."""
    users, items = graph.ui.coalesce().indices()
    n_u, n = graph.n_users, graph.n_users + graph.n_items
    nodes = torch.arange(n, device=users.device)
    rows = torch.cat([users, items + n_u, nodes])
    cols = torch.cat([items + n_u, users, nodes])
    inv = 1.0 / (torch.bincount(rows, minlength=n).float())  # degree + 1: the self-loop is among the rows
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), inv[rows], (n, n)).coalesce()
