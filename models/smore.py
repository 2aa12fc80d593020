"""SMORE (Ong & Khong, WSDM 2025): modality fusion in the spectral domain, three item–item views.

"Spectrum-based Modality Representation Fusion Graph Convolutional Network for Multimodal
Recommendation", as MMRec implements it (enoche/MMRec `src/models/smore.py`, from the authors'
repository kennethorq/SMORE):

    projection  f_m = T_m x_m                          (m ∈ t, v; x_m the trained feature tables)
    spectrum    F_m = rfft(f_m) (per item, over the d dims, orthonormal);  w_t, w_v, w_f ∈ C^{d/2+1}
                c_v = irfft(F_v ⊙ w_v), c_t = irfft(F_t ⊙ w_t)     (uni-modal denoising filters)
                c_f = irfft(F_t ⊙ F_v ⊙ w_f)                       (fusion = product of spectra)
    item views  h_m = S_m^L (q ⊙ σ(G_m c_m))   m ∈ t, v, f;  q the item ID embeddings, L = n_layers,
                S_t, S_v the kNN graphs of the raw features (cosine weights, symmetric
                normalization), S_f = max(S_t, S_v) entrywise on the union of their edges
    user views  h_m(u) = R h_m,  R = D_u^-1/2 R D_i^-1/2 (the user–item block of Â)
    content     e = LightGCN mean of layers 0..n_ui_layers on Â, users and items
    preference  side = mean( P_v(e) ⊙ softmax(Q_v h_f) ⊙ h_v,  P_t(e) ⊙ softmax(Q_t h_f) ⊙ h_t,
                             P_f(e) ⊙ h_f )                   (P_m = dropout(σ(linear)), Q_m a
                                                               tanh MLP, softmax over the d dims)
    embeddings  [u; i] = e + side;  score u · i
    loss        BPR(u, i+, i−) + reg_weight · ½(‖u‖² + ‖i+‖² + ‖i−‖²) / B
                + cl_weight · [InfoNCE_τ(side(i+), e(i+)) + InfoNCE_τ(side(u), e(u))]

The feature tables x_m are trained (MMRec wraps them in unfrozen nn.Embeddings); they enter the
score through T_m and the spectral filters, and the kNN graphs are built once from the raw
features. SMORE needs both t and v (MMRec's fuses the two spectra and fails with either
missing); with t = v (one table for both, the text-only setup) S_t = S_v = S_f and the two
feature copies and projections are trained apart, as in MMRec.

Where this file departs from MMRec (tests/test_smore.py checks loss, gradients and scores
against the values MMRec's class prints, benchmarks/parity/smore_parity.py):

- the kNN graphs come from `GraphData.knn_edges` (FAISS, block by block, models/training/graphs.py) — no
  N × N similarity matrix; they are MMRec's `build_knn_normalized_graph(…, 'sym')` (cosine
  weights of the top k, the item itself among them, w_ij / sqrt(d_i d_j) with d the row sums).
  One k for both modalities, the trainer's `knn_k` (default 10, the first value of MMRec's
  image_knn_k / text_knn_k grids {10, 15, 20, 40}); MMRec can set the two apart;
- S_f is built by a sort over the edge keys (no dense union); the same values as MMRec's;
- the LightGCN content view computes only the batch's rows in its last layer (MMRec propagates
  every user and item for each batch), and the fusion/preference block runs on the batch's
  rows only: the same loss and gradients, since the loss reads no other row. The item views
  (h_t, h_v, h_f) are computed for all items, since a batch's users read all their items;
- the preference dropout draws one mask per distinct user/item of the batch (models.bm3's
  row_dropout), MMRec one per row of the full table: the same distribution, not the same draws;
- BPR's regularizer is divided by the batch's size (MMRec: by train_batch_size, which differs
  only for the last, shorter batch of an epoch);
- InfoNCE is computed in its log-sum-exp form (models.anchorrec.info_nce), not exp / sum;
  MMRec's yaml `temperature` is not read by its code (0.2 is hard-coded): here `temperature`
  is read, default 0.2. Unused MMRec options (lambda_coeff) are not carried.

Speed (benchmarks/speed/epoch_speed.py, Sports, one CPU thread): 50.4 s/epoch against LightGCN's
7.1 in the same run. About 70% of it is matrix products (torch profiler: aten::mm / addmm),
mostly over all items for each batch: T_m x_m (18k × 384 → 64) forward and backward into the
trained feature tables, the gates on 18k × 64, and the three item-graph products. That is
exact MMRec semantics: a batch's users read every item they have
interacted with, through kNN neighbours that cover nearly all items, so the item views cannot
be restricted to the batch's rows.

Defaults: MMRec's SMORE.yaml (embedding 64, n_layers 1, cl_loss 0.01 = cl_weight, τ 0.2, lr decay
0.96 per 50 epochs = the trainer's). Its n_ui_layers ∈ {3, 4}, reg_weight ∈ {1e-5, 1e-4} and
dropout_rate ∈ {0, 0.1} are grids searched per dataset with no published single value; the
grids' first values (3, 1e-5, 0) are used here, so a tuned comparison sweeps them (SEARCH_SPACE).

Cold items: an item SMORE never saw has no ID embedding q, so its own views q ⊙ σ(G_m c_m) are
zero whatever its spectrum, and no user–item edge; what its features give it is its row in the
item graphs S_t and S_v. Its vector is those rows applied once to the warm items' FINAL vectors
(models/cold.py): per modality its k cosine neighbours among warm items on the raw features,
weighted s_nj / sqrt(d_n d_j) as S_m is (d_j the warm item's degree in S_m), t and v weighted ½
each. S_f = max(S_t, S_v) is not added as a third graph: on the same neighbours it only repeats
the stronger of the two weights. The paper is silent on cold-start; these choices are ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import cold
from models.backbone import bipartite_blocks, bipartite_lightgcn
from models.blocks import (
    content_modalities,
    id_embeddings,
    projections,
    require_knn,
    row_dropout,
    trained_features,
)
from models.losses import bpr_loss, info_nce, total_loss
from models.training.data import GraphData
from models.training.sparse import FixedSparse

VIEWS = ("v", "t", "f")  # image, text, fusion


@dataclass
class SMOREConfig:
    embedding_dim: int = 64
    n_ui_layers: int = 3  # MMRec grid {3, 4}
    n_layers: int = 1  # item–item propagation steps
    reg_weight: float = 1e-5  # MMRec grid {1e-5, 1e-4}
    cl_weight: float = 0.01  # MMRec's cl_loss
    temperature: float = 0.2
    dropout: float = 0.0  # on the preference gates; MMRec grid {0, 0.1}

    def __post_init__(self) -> None:
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be ≥ 1, got {self.embedding_dim}")
        negative = [n for n in ("n_ui_layers", "n_layers", "reg_weight", "cl_weight") if getattr(self, n) < 0]
        if negative:
            raise ValueError(f"{negative[0]} must be ≥ 0, got {getattr(self, negative[0])}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


# `anchorrec tune`'s grid (models/training/tune.py): MMRec's SMORE.yaml searches n_ui_layers, reg_weight,
# dropout_rate and the two kNN sizes (here the trainer's knn_k, shared by every trial of a study);
# lr is searched for every model on one grid. Other names are SMOREConfig fields.
SEARCH_SPACE: dict[str, tuple] = {
    "n_ui_layers": (3, 4),
    "reg_weight": (1e-5, 1e-4),
    "dropout": (0.0, 0.1),
}


def max_fusion(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...], n: int) -> torch.Tensor:
    """S_f: on the union of two graphs' edges, the larger of the two weights (one where only one has it)."""
    rows, cols, vals = (torch.cat([x, y]) for x, y in zip(a, b))
    keys, inverse = torch.unique(rows * n + cols, return_inverse=True)
    best = vals.new_full((len(keys),), float("-inf")).scatter_reduce(0, inverse, vals, reduce="amax")
    index = torch.stack([keys // n, keys % n])
    return torch.sparse_coo_tensor(index, best, (n, n), check_invariants=False).coalesce()


def sparse_graph(edges: tuple[torch.Tensor, ...], n: int) -> torch.Tensor:
    rows, cols, vals = edges
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, n), check_invariants=False).coalesce()


def gate(d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d), nn.Sigmoid())


def query(d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d, bias=False))


class SMORE(nn.Module):
    COLD_PATH = (
        "final vectors of its k content-kNN warm neighbours in S_t and S_v (cosine, sym-normalised), "
        "the two modalities weighted equally"
    )

    def __init__(self, graph: GraphData, cfg: SMOREConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_users, self.n_items = graph.n_users, graph.n_items
        self.modalities = content_modalities(graph, "SMORE")
        if self.modalities != ("t", "v"):
            raise ValueError(
                f"SMORE fuses the spectra of text and image features and needs both; the graph has only "
                f"{list(self.modalities)}. For text only give one table as both (TrainConfig.features "
                "{'t': name, 'v': name}), as `anchorrec pipeline --image-encoder none` does."
            )
        require_knn(graph, self.modalities, "SMORE")
        self.cold_source = {m: (graph.features[m], graph.knn_edges[m]) for m in self.modalities}  # the cold kit's
        d = cfg.embedding_dim
        self.user_emb, self.item_emb = id_embeddings(self.n_users, self.n_items, d)
        # the features are trained (MMRec: nn.Embedding.from_pretrained(freeze=False)); own copies
        self.feat = trained_features(graph, self.modalities)
        self.trs = projections(graph, self.modalities, d)
        self.query = nn.ModuleDict({m: query(d) for m in ("v", "t")})
        self.gate = nn.ModuleDict({m: gate(d) for m in VIEWS})
        self.prefer = nn.ModuleDict({m: gate(d) for m in VIEWS})
        # complex filters over the d // 2 + 1 frequencies, (real, imaginary) pairs as in MMRec
        self.spectrum = nn.ParameterDict({m: nn.Parameter(torch.randn(1, d // 2 + 1, 2)) for m in VIEWS})
        n, knn = self.n_items, graph.knn_edges
        self.item_graphs = nn.ModuleDict(
            {
                "v": FixedSparse(sparse_graph(knn["v"], n)),
                "t": FixedSparse(sparse_graph(knn["t"], n)),
                "f": FixedSparse(max_fusion(knn["v"], knn["t"], n)),
            }
        )
        self.r, self.rt = bipartite_blocks(graph)

    def spectral(self, f_v: torch.Tensor, f_t: torch.Tensor) -> dict[str, torch.Tensor]:
        """The denoised (v, t) and fused (f) signals: filters applied to the rows' spectra."""
        d = f_v.shape[1]
        spec_v = torch.fft.rfft(f_v, dim=1, norm="ortho")
        spec_t = torch.fft.rfft(f_t, dim=1, norm="ortho")
        w = {m: torch.view_as_complex(self.spectrum[m]) for m in VIEWS}
        back = {"v": spec_v * w["v"], "t": spec_t * w["t"], "f": spec_t * spec_v * w["f"]}
        return {m: torch.fft.irfft(s, n=d, dim=1, norm="ortho") for m, s in back.items()}

    def item_views(self) -> dict[str, torch.Tensor]:
        """h_m = S_m^L (q ⊙ σ(G_m c_m)) for all items (a batch's users read all their items)."""
        conv = self.spectral(self.trs["v"](self.feat["v"]), self.trs["t"](self.feat["t"]))
        q = self.item_emb.weight
        views = {}
        for m in VIEWS:
            h = q * self.gate[m](conv[m])
            for _ in range(self.cfg.n_layers):
                h = self.item_graphs[m](h)
            views[m] = h
        return views

    def fuse(
        self, content: torch.Tensor, views: dict[str, torch.Tensor], ids: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(content + side, side) for these rows; `ids` (the rows' user or item ids) turn the dropout on."""
        agg = {
            "v": F.softmax(self.query["v"](views["f"]), dim=-1) * views["v"],
            "t": F.softmax(self.query["t"](views["f"]), dim=-1) * views["t"],
            "f": views["f"],
        }
        parts = []
        for m in VIEWS:
            p = self.prefer[m](content)
            if ids is not None and self.cfg.dropout > 0:
                p = row_dropout(p, ids, self.cfg.dropout)
            parts.append(p * agg[m])
        side = (parts[0] + parts[1] + parts[2]) / 3
        return content + side, side

    def batch_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg, b = self.cfg, len(users)
        items = torch.cat([pos, neg])
        e_u, e_i = bipartite_lightgcn(
            self.r, self.rt, self.user_emb.weight, self.item_emb.weight, cfg.n_ui_layers, users, items
        )
        views = self.item_views()
        u, side_u = self.fuse(e_u, {m: self.r.rows(users, h) for m, h in views.items()}, users)
        i, side_i = self.fuse(e_i, {m: h.index_select(0, items) for m, h in views.items()}, items)
        out = {"bpr": bpr_loss(u, i[:b], i[b:])}
        if cfg.reg_weight > 0:
            out["reg"] = cfg.reg_weight * 0.5 * (u.pow(2).sum() + i.pow(2).sum()) / b
        if cfg.cl_weight > 0:
            cl = info_nce(side_i[:b], e_i[:b], cfg.temperature) + info_nce(side_u, e_u, cfg.temperature)
            out["cl"] = cfg.cl_weight * cl
        out["loss"] = total_loss(out)
        return out

    @torch.no_grad()
    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        e_u, e_i = bipartite_lightgcn(self.r, self.rt, self.user_emb.weight, self.item_emb.weight, self.cfg.n_ui_layers)
        views = self.item_views()
        u, _ = self.fuse(e_u, {m: self.r(h) for m, h in views.items()}, None)
        i, _ = self.fuse(e_i, views, None)
        return u, i

    @torch.no_grad()
    def cold_kit(self) -> dict[str, Any]:
        """The warm items' raw features, S_t/S_v degrees and final vectors, t and v weighted ½ each."""
        _, items = self.final_embeddings()
        graphs = [cold.graph_entry(m, 0.5, f, items, edges, "cosine") for m, (f, edges) in self.cold_source.items()]
        return cold.graph_kit("smore", graphs, self.cold_source["t"][1], "cosine")


def cold_item_vectors(kit: dict[str, Any], features: dict[str, np.ndarray]) -> np.ndarray:
    """½ (S_t rows + S_v rows) of new items applied to the warm final vectors (see the docstring)."""
    return cold.mixed_propagation(kit, features)
