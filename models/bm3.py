"""BM3 (Zhou et al., WWW 2023): self-supervised bootstrapping instead of negative sampling.

"Bootstrap Latent Representations for Multi-modal Recommendation", as MMRec implements it
(enoche/MMRec `src/models/bm3.py`, the authors' own code):

    online      [u; i] = LightGCN mean of layers 0..n_layers on D^-1/2 A D^-1/2;  i ← i + q
                (q: the item ID embeddings, counted once more), f_m = T_m x_m  (m ∈ t, v)
    target      ũ, ĩ, f̃_m = dropout(u), dropout(i), dropout(f_m), detached (no gradient)
                — the dropout (rate `dropout`, always on) is BM3's augmentation
    predictor   p(x) = W x + b, one linear map shared by users, items and modalities
    loss        on a batch of training pairs (u, i), with c(a, b) = 1 − mean cos(a, b):
                c(p(u), ĩ) + c(p(i), ũ)
                + reg_weight · (‖U‖_F + ‖I‖_F) / n_items      (MMRec's EmbLoss over ALL users and
                                                              items, Frobenius norms, not squared)
                + cl_weight · Σ_m [ c(p(f_m), ĩ) + c(p(f_m), f̃_m) ]
    score       p(u) · p(i)  on the full graph

No negatives: the trainer's sampled negatives are ignored (MMRec's BM3 sets use_neg_sampling
False; its batches are the training pairs, each once per epoch — what the trainer's positives
are). The feature tables x_m are trained (MMRec wraps them in unfrozen nn.Embeddings); with t = v
(one table for both, the text-only setup) the two copies and their T_m are trained apart, as in
MMRec. Initialization as MMRec's: user/item xavier-uniform, predictor and T_m weights
xavier-normal, biases PyTorch's default.

Where this file departs from MMRec (tests/test_bm3.py checks loss, gradients and scores against
the values MMRec's class prints, benchmarks/parity/bm3_parity.py):

- only the batch's items are projected by T_m and only the batch's rows go through the
  predictor (MMRec does all items for each batch): the same loss and gradients, since the loss
  reads no other row. The LightGCN pass is full when reg_weight > 0 (the norm term reads every
  row) and batch-only (last layer for the batch's rows) when reg_weight = 0;
- the dropout masks are drawn for the batch's distinct users/items and gathered (MMRec draws
  them for every row and gathers): the same distribution — a user or item repeated in a batch
  gets one mask, as in MMRec — from fewer random numbers, so not the same draws;
- the graph is the trainer's D^-1/2 A D^-1/2 without MMRec's 1e-7 in the degrees (a relative
  difference of about 1e-7);
- `feat_embed_dim` is not a field: MMRec's BM3 sets it to embedding_size whatever its yaml says
  (the predictor is shared, so the two must agree).

Speed (benchmarks/speed/epoch_speed.py, Sports, one CPU thread, CPU seconds): 11.1 s/epoch
against LightGCN's 7.0 in the same run; 6.6 with reg_weight 0 (no full LightGCN pass), 5.2 with
cl_weight 0, 14.5 with n_layers 2. The two costs are exact MMRec semantics: the norm term reads
and moves every user and item each batch, and the trained feature tables (N × D per modality) get
a dense gradient that Adam applies to every row (momentum moves rows outside the batch too, as
in MMRec), which a sparse update would change.

Defaults: MMRec's BM3.yaml (embedding 64, cl_weight 2.0). Its n_layers ∈ {1, 2},
dropout ∈ {0.3, 0.5} and reg_weight ∈ {0.1, 0.01} are grids searched per dataset with no
published single value; the grids' first values (1, 0.3, 0.1) are used here, so a tuned
comparison sweeps all three (SEARCH_SPACE).

Cold items: BM3 scores p(u) · p(i) with i = LightGCN(i) + q, all of it ID embeddings; the
features enter only through the contrastive term, which trains p(T_m x_m) to point where the
item's own (target) representation ĩ points. That is the model's own encoder of an item from its
content, so a new item, which has no ID embedding and no edge, gets
    i_new = s · mean_m  p(T_m x_m) / ‖p(T_m x_m)‖,   vector = p(i_new)
with x_m its raw features (the trained per-item feature copies exist only for warm items), and
s the mean norm of the warm items' i (the loss is a cosine, so it fixes the direction only; the
scale is the warm items' so a new item is neither favoured nor buried by its length).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from models.backbone import bipartite_blocks, bipartite_lightgcn
from models.blocks import (
    content_modalities,
    id_embeddings,
    projections,
    row_dropout,
    trained_features,
)
from models.losses import added, cosine_gap, emb_norm_loss, total_loss
from models.training.data import GraphData


@dataclass
class BM3Config:
    embedding_dim: int = 64
    n_layers: int = 1  # MMRec grid {1, 2}
    dropout: float = 0.3  # target augmentation rate; MMRec grid {0.3, 0.5}
    reg_weight: float = 0.1  # MMRec grid {0.1, 0.01}
    cl_weight: float = 2.0

    def __post_init__(self) -> None:
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be ≥ 1, got {self.embedding_dim}")
        if self.n_layers < 0:
            raise ValueError(f"n_layers must be ≥ 0, got {self.n_layers}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for name in ("reg_weight", "cl_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")


# `anchorrec tune`'s grid (models/training/tune.py): MMRec's BM3.yaml searches n_layers, dropout and
# reg_weight; lr is searched for every model on one grid (an equal budget). Other names are BM3Config fields.
SEARCH_SPACE: dict[str, tuple] = {
    "n_layers": (1, 2),
    "dropout": (0.3, 0.5),
    "reg_weight": (0.1, 0.01),
}


class BM3(nn.Module):
    COLD_PATH = (
        "the predictor applied to the mean direction of its projected features p(T_m x_m), "
        "scaled to the warm items' mean norm; ID part zero"
    )

    def __init__(self, graph: GraphData, cfg: BM3Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_users, self.n_items = graph.n_users, graph.n_items
        self.modalities = content_modalities(graph, "BM3")
        d = cfg.embedding_dim
        self.user_emb, self.item_emb = id_embeddings(self.n_users, self.n_items, d)
        self.predictor = nn.Linear(d, d)
        nn.init.xavier_normal_(self.predictor.weight)
        # the features are trained (MMRec: nn.Embedding.from_pretrained(freeze=False)); own copies
        self.feat = trained_features(graph, self.modalities)
        self.trs = projections(graph, self.modalities, d)
        for m in self.modalities:
            nn.init.xavier_normal_(cast(nn.Linear, self.trs[m]).weight)  # ModuleDict items are untyped
        self.r, self.rt = bipartite_blocks(graph)

    def online(
        self, users: torch.Tensor | None = None, items: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, i + q): LightGCN's mean over layers, items plus their ID embedding once more."""
        u, i = bipartite_lightgcn(
            self.r, self.rt, self.user_emb.weight, self.item_emb.weight, self.cfg.n_layers, users, items
        )
        q = self.item_emb.weight if items is None else self.item_emb.weight.index_select(0, items)
        return u, i + q

    def batch_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg, out = self.cfg, {}
        if cfg.reg_weight > 0:  # the norm term reads every row: full pass, then the batch's rows
            u_all, i_all = self.online()
            out["reg"] = cfg.reg_weight * emb_norm_loss(u_all, i_all)
            u, i = u_all.index_select(0, users), i_all.index_select(0, pos)
        else:
            u, i = self.online(users, pos)
        u_target = row_dropout(u.detach(), users, cfg.dropout)
        i_target = row_dropout(i.detach(), pos, cfg.dropout)
        out["ui"] = cosine_gap(self.predictor(u), i_target) + cosine_gap(self.predictor(i), u_target)
        if cfg.cl_weight > 0:
            gaps = []
            for m in self.modalities:
                f = self.trs[m](self.feat[m].index_select(0, pos))
                f_target = row_dropout(f.detach(), pos, cfg.dropout)
                f_online = self.predictor(f)
                gaps += [cosine_gap(f_online, i_target), cosine_gap(f_online, f_target)]
            out["cl"] = cfg.cl_weight * added(gaps)
        out["loss"] = total_loss(out)
        return out

    @torch.no_grad()
    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        u, i = self.online()
        return self.predictor(u), self.predictor(i)

    @torch.no_grad()
    def cold_kit(self) -> dict[str, Any]:
        """T_m and the predictor's weights, and the warm items' mean norm of i."""
        _, i = self.online()

        def linear(layer: Any) -> dict[str, torch.Tensor]:
            return {
                "weight": layer.weight.detach().cpu().float().clone(),
                "bias": layer.bias.detach().cpu().float().clone(),
            }

        return {
            "model": "bm3",
            "trs": {m: linear(self.trs[m]) for m in self.modalities},
            "predictor": linear(self.predictor),
            "scale": float(i.norm(dim=1).mean()),
        }


def _apply(layer: dict[str, torch.Tensor], x: np.ndarray) -> np.ndarray:
    return x @ layer["weight"].numpy().astype(np.float64).T + layer["bias"].numpy()


def cold_item_vectors(kit: dict[str, Any], features: dict[str, np.ndarray]) -> np.ndarray:
    """p(s · mean_m unit(p(T_m x_m))) for the new items (see the docstring)."""
    directions = []
    for m, layer in kit["trs"].items():
        if m not in features:
            raise ValueError(f"cold path of bm3: no {m!r} features for the new items; give {m!r}")
        f = np.asarray(features[m], np.float64)
        if f.ndim != 2 or f.shape[1] != layer["weight"].shape[1]:
            raise ValueError(
                f"cold path of bm3: {m!r} features have shape {f.shape}, T_m expects {layer['weight'].shape[1]}"
            )
        p = _apply(kit["predictor"], _apply(layer, f))
        norms = np.linalg.norm(p, axis=1, keepdims=True)
        directions.append(np.divide(p, norms, out=np.zeros_like(p), where=norms > 0))
    i_new = kit["scale"] * np.mean(directions, axis=0)
    return _apply(kit["predictor"], i_new).astype(np.float32)
