"""VBPR (He & McAuley, AAAI 2016): matrix factorization whose items also carry a content part.

The baseline as MMRec implements it (enoche/MMRec `src/models/vbpr.py`, the version the
multimodal-recommendation papers compare against):

    item i      e_i = [ q_i ; W [f_t,i ; f_v,i] + b ]        q_i ∈ R^d learned, W: (D_t + D_v) → d
    user u      p_u ∈ R^{2d}                                  (one vector against both halves)
    score       p_u · e_i
    loss        −mean log σ(p_u·e_i+ − p_u·e_i−)
                + reg_weight · (‖P_B‖ + ‖E_B+‖ + ‖E_B−‖) / B  (Frobenius norms of the batch rows,
                                                                MMRec's EmbLoss: not squared)

Initialization as MMRec's: p and q xavier-uniform, W xavier-normal, b = 0. Text and image
features enter as one concatenated vector, t first; with t = v (one table for both, the
text-only setup) that is the same table twice, as MMRec gives it.

Where this file departs from MMRec (tests/test_vbpr.py checks loss, gradients and scores
against the values MMRec's class prints, benchmarks/parity/mmrec_parity.py):

- MMRec projects every item's features for every batch; here only the batch's items are
  projected (the loss reads no other row, so loss and gradients are the same numbers);
- W is applied per modality (W_t f_t + W_v f_v = W [f_t; f_v]) so the concatenated N × (D_t + D_v)
  table is never built; with t = v the one table is multiplied by W_t + W_v (same value, same
  gradient for both halves) and stored once;
- the BPR term is −log σ(x) in its stable form (`logsigmoid`); MMRec's BPRLoss adds 1e-10
  inside the log, a difference below float32 resolution unless σ(x) < 1e-6;
- MMRec's `forward(dropout)` hook is always called with dropout 0 there, so it is left out.

Speed (benchmarks/speed/epoch_speed.py, Sports, one CPU thread): 2.0 s/epoch, LightGCN 7.1.

Default: MMRec's VBPR.yaml publishes no single value, only the grid
reg_weight ∈ {2.0, 1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-5} searched per dataset; 1e-4 is used here (the
regularization weight of this project's LightGCN), so a tuned comparison sweeps `reg_weight`.

Cold items: e_i = [q_i ; W [f_t ; f_v] + b] with q_i the only part learned per item. A new item
has no q (zero: no interaction ever moved it, and no graph to borrow one from), and its content
term is the trained W and b applied to its own features: e_new = [0 ; W [f_t ; f_v] + b]. Its
score p_u · e_new is then exactly VBPR's visual/content preference term, the part the paper
introduces for items with few or no interactions. An item with a warm item's features gets that
item's content half, and zeros where the warm item has its ID half.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from models.blocks import content_modalities, feature_groups
from models.losses import added, bpr_loss, emb_norm_loss, total_loss
from models.training.data import GraphData


@dataclass
class VBPRConfig:
    embedding_dim: int = 64  # d: item ID part and content part each; users have 2d
    reg_weight: float = 1e-4  # MMRec grid {2.0 … 1e-5}; see the module docstring

    def __post_init__(self) -> None:
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be ≥ 1, got {self.embedding_dim}")
        if self.reg_weight < 0:
            raise ValueError(f"reg_weight must be ≥ 0, got {self.reg_weight}")


# `anchorrec tune`'s grid (models/training/tune.py): MMRec's VBPR.yaml searches reg_weight; lr is searched
# for every model on one grid (an equal budget). Other names are VBPRConfig fields.
SEARCH_SPACE: dict[str, tuple] = {
    "reg_weight": (2.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5),
}


class VBPR(nn.Module):
    COLD_PATH = "the content term W [f_t; f_v] + b of its own features, the item-ID half zero"

    def __init__(self, graph: GraphData, cfg: VBPRConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_users, self.n_items = graph.n_users, graph.n_items
        d = cfg.embedding_dim
        names = content_modalities(graph, "VBPR")
        self.modalities = names  # W's column blocks, in order: the cold kit's
        groups = feature_groups(graph.features, names)
        self.tables = tuple(dict.fromkeys(groups.values()))  # distinct feature tables
        # (table, column range of W) per modality: W [f_t; f_v] = Σ_m W[:, cols_m] f_m
        self.slices: list[tuple[str, int, int]] = []
        start = 0
        for m in names:
            width = graph.features[m].shape[1]
            self.slices.append((groups[m], start, start + width))
            start += width
        for name in self.tables:
            self.register_buffer(f"feat_{name}", graph.features[name].float(), persistent=False)
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, 2 * d)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))
        self.item_linear = nn.Linear(start, d)
        nn.init.xavier_normal_(self.item_linear.weight)
        nn.init.zeros_(self.item_linear.bias)

    def content(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """W [f_t; f_v] + b for `items` (all items when None), one product per distinct table."""
        w = self.item_linear.weight
        out: torch.Tensor | None = None
        for name in self.tables:
            w_m = added([w[:, a:b] for table, a, b in self.slices if table == name])
            f = getattr(self, f"feat_{name}")
            f = f if items is None else f.index_select(0, items)
            out = f @ w_m.T if out is None else out + f @ w_m.T
        assert out is not None  # a VBPR has at least one content table
        return out + self.item_linear.bias

    def items(self, items: torch.Tensor | None = None) -> torch.Tensor:
        ids = self.item_emb if items is None else self.item_emb.index_select(0, items)
        return torch.cat([ids, self.content(items)], 1)

    def batch_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        b = len(users)
        u = self.user_emb.index_select(0, users)
        e = self.items(torch.cat([pos, neg]))
        p, n = e[:b], e[b:]
        out = {"bpr": bpr_loss(u, p, n)}
        if self.cfg.reg_weight > 0:
            out["reg"] = self.cfg.reg_weight * emb_norm_loss(u, p, n)
        out["loss"] = total_loss(out)
        return out

    @torch.no_grad()
    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_emb.detach().clone(), self.items()

    @torch.no_grad()
    def cold_kit(self) -> dict[str, Any]:
        """W's column block per modality, b, and the ID half's width."""
        w = self.item_linear.weight
        slices = [(m, a, b) for m, (_, a, b) in zip(self.modalities, self.slices)]
        return {
            "model": "vbpr",
            "id_dim": self.cfg.embedding_dim,
            "weights": {m: w[:, a:b].detach().cpu().float().clone() for m, a, b in slices},
            "bias": self.item_linear.bias.detach().cpu().float().clone(),
        }


def cold_item_vectors(kit: dict[str, Any], features: dict[str, np.ndarray]) -> np.ndarray:
    """[0 ; Σ_m W_m f_m + b] for the new items (see the docstring)."""
    content = None
    for m, w in kit["weights"].items():
        if m not in features:
            raise ValueError(f"cold path of vbpr: no {m!r} features for the new items; give {m!r}")
        f = np.asarray(features[m], np.float64)
        if f.ndim != 2 or f.shape[1] != w.shape[1]:
            raise ValueError(f"cold path of vbpr: {m!r} features have shape {f.shape}, W expects {w.shape[1]} dims")
        part = f @ w.numpy().astype(np.float64).T
        content = part if content is None else content + part
    content = content + kit["bias"].numpy()
    return np.concatenate([np.zeros((len(content), kit["id_dim"])), content], 1).astype(np.float32)
