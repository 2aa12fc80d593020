"""AnchorRec (stage 2): anchored alignment of gated modality branches on a LightGCN backbone.

Read top to bottom: the gating, the config, then the model (the loss terms are in
models/losses.py, the LightGCN backbone in models/backbone.py). The math follows
../shared/specs/METHOD.md ("Stage 2 — AnchorRec") and the authors' released code
(hun9008/AnchorRec_SIGIR26) where the spec leaves details open:

    ID view       LightGCN over users + items on the sym-normalized user–item graph, mean of layers
    branch m      e_m = item_id ⊙ σ(G_m(W_m f_m)), m ∈ {mm, t, v}; z_m = K_m^L e_m over the
                  modality's kNN graph K_m; users get R z_m (R: the user–item block of the graph)
    score         user = lightgcn_u + z_mm,u + z_t,u
                  item = lightgcn_i + z_mm,i + z_t,i + recover_lambda · D(P_mm(z_mm,i))
    losses        BPR + L2, UIA margin, AAL (anchor alignment in the projection domain),
                  AMP (structure preservation), graph smoothing — see `batch_loss`.

Where this file computes less than the reference, the value is the same (tests check it):

- LightGCN runs on the two blocks R, Rᵀ of the bipartite graph (no users+items concatenation),
  and only the batch's rows of its last layer and of the user lift are computed;
- modalities that share raw features and kNN graph (the reference run uses one table for all
  three) are gated by one product and propagated as one wider matrix (`branches`), v included
  when its AMP term needs it; the gating is one autograd function (`_GatedIds`) that reuses
  its buffers instead of autograd's chain of N × kd temporaries;
- InfoNCE's log-sum-exp has its own backward (`_CosineLogSumExp`): three passes over the B × B
  matrix instead of about eight;
- the mm and t branches are lifted to users and gathered for the batch as their sum (the lift is
  linear), and the positives' feature rows are gathered once per shared table;
- the projection heads P_* and the recovery decoder D see only the batch's items (the
  reference projects every item's raw features for every batch);
- AMP's ‖EEᵀ − S‖_F is computed through Gram matrices (ᵀE E, ᵀE F, ᵀF F: O(B·d·D + B·D²))
  instead of two B × B matrices, with S from row-normalized features prepared once;
- graph smoothing over all kNN edges uses Σ w_ij‖z_i − z_j‖² = Σ_i (r_i + c_i)‖z_i‖² − 2⟨Z, KZ⟩
  (one sparse product) instead of gathering both ends of every edge;
- the v branch is computed only when its AMP term is on (it enters the model only there).

Ablation: `mm_branch=False` trains the model without the mm branch — the score is
LightGCN + z_t, and every term that needs z_mm goes with it: the recovery term D(P_mm(z_mm)),
AAL (its anchor is P_mm(z_mm)), AMP's mm term and graph smoothing over the mm kNN edges. The
graph then needs only t and v; if it has mm anyway, the mm modules are built (one state_dict
layout) but get no gradient and the score does not read the mm features. `t_branch=False` drops
z_t from the score only (every loss term stays): where t is the mm table itself (MMRec Sports
runs one text table as mm, t and v) z_mm + z_t is one branch counted twice with two gates.
`uia_detach=False` lets UIA's gradient reach the user anchor too.

Cold items: the model's own forward, run for an item with its features and nothing else. Its ID
embedding does not exist (zero), so its LightGCN part is zero (no ego vector, no user–item edge)
and so is its own gated input e_m = item_id ⊙ σ(G_m(W_m f_m)) in every branch. What its
features decide is its row in each scored branch's kNN graph K_m (mm, and t unless
`t_branch=False`): its k cosine neighbours among warm items on that modality's raw features,
weighted s_nj / sqrt(d_n d_j) as K_m is (d_j the warm item's degree in the trained K_m). So
z_m = Σ_j K_m,nj z_m,j^(L−1) (the warm branch one layer before the last), and the item vector is
z_mm + z_t + recover_lambda · D(P_mm(z_mm)) — the anchored mm branch and its recovery head are
applied to the new item exactly as `final_embeddings` applies them to a warm one (models/cold.py;
no self-loop, the item's own e being zero; with n_layers 0 no feature reaches the vector and the
model reports no cold path). The v branch is not in the score, so not in the cold vector either.
This is where the modality-preserving design is tested on new items: the mm neighbours come
from the inter-content (ICA) features, the t neighbours from the text's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import cold
from models.backbone import bipartite_blocks, bipartite_lightgcn
from models.blocks import (
    feature_groups,
    mlp,
    require_modalities,
    same_matrix,
    user_lift,
)
from models.losses import (
    bpr_loss,
    gram_sq,
    info_nce,
    l2_loss,
    similarity_gap,
    smoothing_loss,
    uia_margin_loss,
)
from models.training.data import GraphData
from models.training.sparse import FixedSparse

MODALITIES = ("mm", "t", "v")


# ----------------------------------------------------------------------------- gating


class _GatedIds(torch.autograd.Function):
    """e[:, k] = ids ⊙ σ(f w_kᵀ + b_k) for k gates at once, in one buffer per pass.

    Autograd would make three N × kd temporaries in the forward (pre-activation, σ, product)
    and three more in the backward; here the pre-activation is squashed in place and the backward reuses one
    buffer: t = g ⊙ s gives ∂ids = Σ_k t_k, then t ⊙ ids ⊙ (1 − s) is ∂a, from which
    ∂w = ∂aᵀ f and ∂b = Σ_rows ∂a. f is a constant (the raw features): no gradient flows to it.
    """

    @staticmethod
    def forward(ctx, f: torch.Tensor, w: torch.Tensor, b: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        n, d = ids.shape
        s = torch.addmm(b, f, w.T).sigmoid_().view(n, -1, d)
        ctx.save_for_backward(f, s, ids)
        return (s * ids[:, None, :]).view(n, -1)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[None, torch.Tensor, torch.Tensor, torch.Tensor]:
        f, s, ids = ctx.saved_tensors
        t = g.reshape(s.shape) * s
        grad_ids = t.sum(1)
        t.mul_(ids[:, None, :])
        t.addcmul_(t, s, value=-1.0)  # t ⊙ (1 − s)
        grad_a = t.view(len(ids), -1)
        return None, grad_a.T @ f, grad_a.sum(0), grad_ids


# ----------------------------------------------------------------------------- config


@dataclass
class AnchorRecConfig:
    embedding_dim: int = 64
    n_ui_layers: int = 2  # LightGCN layers
    n_layers: int = 3  # item–item kNN propagation steps per modality branch
    lambda_weight: float = 0.01  # L2 on the batch's final embeddings
    uia_weight: float = 0.01
    uia_margin: float = 0.2
    aal_loss: float = 1e-3  # anchor alignment weight
    tau: float = 0.05  # AAL temperature
    aal_v_share: float = 0.25  # mix = share·P_v(v) + (1 − share)·P_t(t)
    amp_loss: float = 0.1  # structure preservation weight
    amp_modality_weights: tuple[float, float, float] = (1.0, 0.03, 0.01)  # mm, t, v
    smooth_weight: float = 0.1  # graph smoothing over the mm kNN edges
    recover_lambda: float = 0.5  # item += recover_lambda · D(P_mm(z_mm)); 0.0005 in the released config
    proj_dim: int = 64  # width of the projection heads P_* (and input of the decoder D)
    finetune_features: bool = False  # True: train copies of the raw features as branch inputs (the reference does)
    user_lift: str = "sym"  # 'sym' (reference) or 'mean'
    mm_branch: bool = True  # False: ablation without the mm branch (no recovery, AAL, mm AMP, smoothing)
    t_branch: bool = True  # False: ablation without z_t in the score (it duplicates z_mm where t is mm, as on Sports)
    uia_detach: bool = True  # False: ablation with the gradient of UIA's user anchor (the spec detaches it)

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "proj_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("n_ui_layers", "n_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        for name in (
            "lambda_weight",
            "uia_weight",
            "uia_margin",
            "aal_loss",
            "amp_loss",
            "smooth_weight",
            "recover_lambda",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if not 0.0 <= self.aal_v_share <= 1.0:
            raise ValueError(f"aal_v_share must be in [0, 1], got {self.aal_v_share}")
        weights = tuple(float(w) for w in self.amp_modality_weights)
        if len(weights) != 3 or min(weights) < 0:
            raise ValueError(f"amp_modality_weights must be 3 weights ≥ 0 (mm, t, v), got {weights}")
        self.amp_modality_weights = (weights[0], weights[1], weights[2])
        if not (self.mm_branch or self.t_branch):
            raise ValueError(
                "mm_branch and t_branch are both False: AnchorRec needs at least one content branch in its score"
            )
        if self.user_lift not in ("sym", "mean"):
            raise ValueError(f"user_lift must be 'sym' or 'mean', got {self.user_lift!r}")


# `anchorrec tune`'s grid (models/training/tune.py), the authors' (METHOD.md): lr {5e-3 … 1e-4},
# aal/amp {0, 1e-4 … 1}, tau {0.05 … 1}, n_layers {1, 2, 3}; plus the L2 strength, which the
# report found 10× AlignRec's. lr comes from models.training.tune.LR_GRID (shared); every name here is an AnchorRecConfig field.
SEARCH_SPACE: dict[str, tuple] = {
    "aal_loss": (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0),
    "amp_loss": (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0),
    "tau": (0.05, 0.1, 0.2, 0.5, 1.0),
    "n_layers": (1, 2, 3),
    "lambda_weight": (1e-2, 1e-3, 1e-4),
}


# ----------------------------------------------------------------------------- model


class AnchorRec(nn.Module):
    COLD_PATH = (
        "its rows of the mm and t kNN graphs (k content neighbours among warm items, cosine, sym-normalised) "
        "applied to the warm gated branches, plus the recovery head D(P_mm(z_mm)); ID and LightGCN parts zero"
    )
    mm_deg_sum: torch.Tensor  # buffer, registered when the graph has an mm kNN graph

    def __init__(self, graph: GraphData, cfg: AnchorRecConfig) -> None:
        super().__init__()
        require_modalities(graph, MODALITIES if cfg.mm_branch else ("t", "v"), "AnchorRec")
        # the modalities with modules and buffers: mm may be absent when the mm branch is off
        self.modalities = tuple(m for m in MODALITIES if m in graph.features and m in graph.knn)
        self.cfg = cfg
        self.n_users, self.n_items = graph.n_users, graph.n_items
        d = cfg.embedding_dim
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))

        # graphs (constant)
        self.r, self.rt = bipartite_blocks(graph)  # the graph is [[0, R], [Rᵀ, 0]]
        self.lift = self.r if cfg.user_lift == "sym" else FixedSparse(user_lift(graph, cfg.user_lift))
        self.knn = nn.ModuleDict({m: FixedSparse(graph.knn[m]) for m in self.modalities})
        self.cold_edges = {m: graph.knn_edges[m] for m in self.modalities}  # K_m's edges: the cold kit's
        if "mm" in self.knn:
            knn_mm = self._knn("mm")
            self.register_buffer("mm_deg_sum", knn_mm.row_sums() + knn_mm.col_sums(), persistent=False)

        # raw features (constant): AAL projects them, AMP compares against their cosine matrix
        self.groups = feature_groups(graph.features, self.modalities)
        self.knn_groups = {
            m: next(o for o in self.modalities if same_matrix(self._knn(o), self._knn(m))) for m in self.modalities
        }
        for m in self.modalities:
            f = graph.features[m].float()
            self.register_buffer(f"raw_{m}", f, persistent=False)
            self.register_buffer(f"unit_{m}", F.normalize(f, dim=1), persistent=False)
        # branch inputs: trainable copies of the features, as in the reference, or the raw ones
        if cfg.finetune_features:
            self.feat = nn.ParameterDict({m: nn.Parameter(graph.features[m].float().clone()) for m in self.modalities})
        self.trs = nn.ModuleDict({m: nn.Linear(graph.features[m].shape[1], d) for m in self.modalities})
        self.gate = nn.ModuleDict({m: nn.Linear(d, d) for m in self.modalities})

        # projection domain (AAL) and the recovery decoder D
        p = cfg.proj_dim
        self.proj = nn.ModuleDict(
            {
                "id": mlp(d, p, p),
                "mm": mlp(d, p, p),
                "t": mlp(graph.features["t"].shape[1], p, p),
                "v": mlp(graph.features["v"].shape[1], p, p),
            }
        )
        self.recover = mlp(p, d, d)

    # --- typed access to the ModuleDicts (their items are typed as plain Modules)

    def _knn(self, m: str) -> FixedSparse:
        return cast(FixedSparse, self.knn[m])

    def _trs(self, m: str) -> nn.Linear:
        return cast(nn.Linear, self.trs[m])

    def _gate(self, m: str) -> nn.Linear:
        return cast(nn.Linear, self.gate[m])

    # --- forward pieces

    @property
    def scored(self) -> tuple[str, ...]:
        """The branches in the score: mm and t, or one of them in the no-mm / no-t ablations."""
        return tuple(m for m, on in (("mm", self.cfg.mm_branch), ("t", self.cfg.t_branch)) if on)

    def lightgcn(self) -> torch.Tensor:
        """The LightGCN view of every user then every item."""
        return torch.cat(bipartite_lightgcn(self.r, self.rt, self.user_emb, self.item_emb, self.cfg.n_ui_layers))

    def branch(self, m: str) -> torch.Tensor:
        """z_m for all items: gated ID embeddings propagated n_layers times over the kNN graph."""
        e = self.gated(m)
        for _ in range(self.cfg.n_layers):
            e = self.knn[m](e)
        return e

    def branches(self, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """{m: branch(m)} with one gate product and one propagation per group of modalities.

        Modalities that share their raw features and their kNN graph (the reference run uses
        one table for all three) are gated by one N × D by D × kd product and propagated as
        one N × kd matrix: the same numbers as k separate branches, in fewer, wider products.
        """
        out: dict[str, torch.Tensor] = {}
        for members in self.fusable(names):
            if len(members) == 1:
                out[members[0]] = self.branch(members[0])
                continue
            d, f = self.cfg.embedding_dim, getattr(self, f"raw_{members[0]}")
            w = torch.cat([self._gate(m).weight @ self._trs(m).weight for m in members])
            b = torch.cat([self._gate(m).weight @ self._trs(m).bias + self._gate(m).bias for m in members])
            e = _GatedIds.apply(f, w, b, self.item_emb)  # N × kd: [ids ⊙ σ(gate_m) for m in members]
            for _ in range(self.cfg.n_layers):
                e = self.knn[members[0]](e)
            out.update(zip(members, torch.split(e, d, dim=1)))  # its backward is one cat, not k zero-padded copies
        return out

    def fused_v(self) -> tuple[str, ...]:
        """("v",) when AMP needs z_v and it can ride in a scored branch's products, else ()."""
        cfg = self.cfg
        if cfg.amp_loss == 0 or cfg.amp_modality_weights[2] == 0:
            return ()
        return ("v",) if any("v" in g and len(g) > 1 for g in self.fusable(self.scored + ("v",))) else ()

    def fusable(self, names: tuple[str, ...]) -> list[tuple[str, ...]]:
        """`names` in groups that share raw features and kNN graph (never with trainable features)."""
        groups: dict[tuple[str, str], list[str]] = {}
        for m in names:
            key = (m, m) if self.cfg.finetune_features else (self.groups[m], self.knn_groups[m])
            groups.setdefault(key, []).append(m)
        return [tuple(v) for v in groups.values()]

    def gated(self, m: str, items: torch.Tensor | None = None) -> torch.Tensor:
        """item_id ⊙ σ(G_m(W_m f_m)) for all items or for `items`.

        G_m(W_m f) = f (G_m W_m)ᵀ + (G_m b_W + b_G): the two linear maps are multiplied first
        (d × d × D) so the N × D features meet one d × D matrix instead of two maps in a row.
        """
        f: torch.Tensor = self.feat[m] if self.cfg.finetune_features else getattr(self, f"raw_{m}")
        ids: torch.Tensor = self.item_emb
        if items is not None:
            f, ids = f[items], ids[items]
        trs, gate = self._trs(m), self._gate(m)
        return ids * torch.sigmoid(F.linear(f, gate.weight @ trs.weight, gate.weight @ trs.bias + gate.bias))

    def branch_rows(self, m: str, rows: torch.Tensor) -> torch.Tensor:
        """z_m[rows], gating and propagating only the items `rows` reach in n_layers steps.

        Falls back to the full branch when that neighbourhood is most (> 80%) of the catalogue.
        """
        knn, reach = self._knn(m), [rows]
        for _ in range(self.cfg.n_layers):
            reach.append(torch.unique(knn.row_cols(reach[-1])))
            if len(reach[-1]) * 5 > 4 * self.n_items:
                return self.branch(m)[rows]
        e = self.gated(m, reach[-1])
        for layer in range(self.cfg.n_layers, 0, -1):
            e = knn.rows(reach[layer - 1], e, cols=reach[layer])
        return e

    def recovery(self, h_mm: torch.Tensor) -> torch.Tensor:
        """recover_lambda · D(P_mm(z_mm)), given the projected P_mm(z_mm)."""
        return self.cfg.recover_lambda * self.recover(h_mm)

    # --- the protocol

    def batch_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor | float]:
        """The loss terms and their sum 'loss'; 'amp' is the float 0.0 when `amp` has no term on."""
        cfg, n_b = self.cfg, len(users)
        # the positives' feature rows, gathered once per shared table
        pos_rows: dict[tuple[str, str], torch.Tensor] = {}
        items = torch.cat([pos, neg])
        lg_u, lg_i = bipartite_lightgcn(self.r, self.rt, self.user_emb, self.item_emb, cfg.n_ui_layers, users, items)
        lg_p = lg_i[:n_b]
        z = self.branches(self.scored + self.fused_v())

        z_sum = (
            z[self.scored[0]] if len(self.scored) == 1 else z["mm"] + z["t"]
        )  # the lift is linear: lift both at once
        u = lg_u + self.lift.rows(users, z_sum)
        i = lg_i + z_sum.index_select(0, items)  # index_select: its backward is one index_add
        need_h_mm = cfg.mm_branch and (cfg.recover_lambda > 0 or cfg.aal_loss > 0)
        h_mm = self.proj["mm"](z["mm"].index_select(0, items)) if need_h_mm else None
        if cfg.mm_branch and cfg.recover_lambda > 0:
            assert h_mm is not None, "need_h_mm holds when the mm branch and recovery are on"
            i = i + self.recovery(h_mm)
        p, n = i[:n_b], i[n_b:]

        out: dict[str, torch.Tensor | float] = {"bpr": bpr_loss(u, p, n)}
        if cfg.lambda_weight > 0:
            out["reg"] = cfg.lambda_weight * l2_loss(u, p, n)
        if cfg.uia_weight > 0:
            out["uia"] = cfg.uia_weight * uia_margin_loss(u, p, n, cfg.uia_margin, detach=cfg.uia_detach)
        if cfg.mm_branch and cfg.aal_loss > 0:
            assert h_mm is not None, "need_h_mm holds when the mm branch and AAL are on"
            h_mm_p = h_mm[:n_b]
            mix = cfg.aal_v_share * self.proj["v"](self.feature_rows("raw", "v", pos, pos_rows)) + (
                1 - cfg.aal_v_share
            ) * self.proj["t"](self.feature_rows("raw", "t", pos, pos_rows))
            aal = info_nce(h_mm_p, self.proj["id"](lg_p), cfg.tau) + info_nce(h_mm_p.detach(), mix, cfg.tau)
            out["aal"] = cfg.aal_loss * aal
        if cfg.amp_loss > 0 and max(cfg.amp_modality_weights) > 0:
            out["amp"] = cfg.amp_loss * self.amp(pos, z, pos_rows)
        if cfg.mm_branch and cfg.smooth_weight > 0:
            out["smooth"] = cfg.smooth_weight * smoothing_loss(z["mm"].contiguous(), self._knn("mm"), self.mm_deg_sum)
        out["loss"] = sum(out.values())
        return out

    def feature_rows(
        self, kind: str, m: str, idx: torch.Tensor, cache: dict[tuple[str, str], torch.Tensor]
    ) -> torch.Tensor:
        """raw_m[idx] or unit_m[idx]; `cache` (one per batch and idx) gathers a shared table once."""
        key = (kind, self.groups[m])
        if key not in cache:
            cache[key] = getattr(self, f"{kind}_{self.groups[m]}")[idx]
        return cache[key]

    def amp(
        self,
        pos: torch.Tensor,
        z: dict[str, torch.Tensor],
        pos_rows: dict[tuple[str, str], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Σ_m w_m ‖E_m E_mᵀ − S_m‖_F / B over the batch's positive items (a zero tensor when no term
        is on: the trainer logs every loss term with .detach())."""
        total: torch.Tensor | float = 0.0
        shared: dict[str, torch.Tensor] = {}
        pos_rows = {} if pos_rows is None else pos_rows
        for m, w in zip(MODALITIES, self.cfg.amp_modality_weights):
            if w == 0 or (m == "mm" and not self.cfg.mm_branch):
                continue
            emb = z[m].index_select(0, pos) if m in z else self.branch_rows(m, pos)
            unit = self.feature_rows("unit", m, pos, pos_rows)
            g = self.groups[m]
            if g not in shared:
                shared[g] = gram_sq(unit)
            total = total + w * similarity_gap(emb, unit, shared[g])
        return total if isinstance(total, torch.Tensor) else torch.zeros((), device=pos.device)

    @torch.no_grad()
    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users, items) with score = users @ items.T: the vectors the evaluator and the store use."""
        lg = self.lightgcn()
        z = self.branches(self.scored)
        z_total = sum(z[m] for m in self.scored)
        assert isinstance(z_total, torch.Tensor), "scored is never empty (AnchorRecConfig)"
        z_sum = z_total.contiguous()
        users = lg[: self.n_users] + self.lift(z_sum)
        items = lg[self.n_users :] + z_sum
        if self.cfg.mm_branch and self.cfg.recover_lambda > 0:
            items = items + self.recovery(self.proj["mm"](z["mm"].contiguous()))
        return users, items

    @torch.no_grad()
    def cold_kit(self) -> dict[str, Any] | None:
        """Per scored branch: the warm raw features, K_m's degrees and z_m one layer before the last;
        the mm projection and recovery heads."""
        if self.cfg.n_layers == 0:
            return None  # z_m = e_m = item_id ⊙ gate: nothing of a new item's features reaches its vector
        graphs = []
        for m in self.scored:
            e = self.gated(m)
            for _ in range(self.cfg.n_layers - 1):
                e = self.knn[m](e)
            graphs.append(cold.graph_entry(m, 1.0, getattr(self, f"raw_{m}"), e, self.cold_edges[m], "cosine"))
        heads = None
        if self.cfg.mm_branch and self.cfg.recover_lambda > 0:
            heads = {
                name: [cold.as_tensor(layer.weight) for layer in net.modules() if isinstance(layer, nn.Linear)]
                + [cold.as_tensor(layer.bias) for layer in net.modules() if isinstance(layer, nn.Linear)]
                for name, net in (("proj_mm", self.proj["mm"]), ("recover", self.recover))
            }
        return cold.graph_kit(
            "anchorrec",
            graphs,
            self.cold_edges[self.scored[0]],
            "cosine",
            heads=heads,
            recover_lambda=float(self.cfg.recover_lambda),
        )


def _mlp(params: list[torch.Tensor], x: np.ndarray) -> np.ndarray:
    """models.blocks.mlp's Linear → ReLU → Linear, from [w1, w2, b1, b2]."""
    w1, w2, b1, b2 = (p.numpy().astype(np.float64) for p in params)
    return np.maximum(x @ w1.T + b1, 0.0) @ w2.T + b2


def cold_item_vectors(kit: dict[str, Any], features: dict[str, np.ndarray]) -> np.ndarray:
    """z_mm + z_t (+ recover_lambda · D(P_mm(z_mm))) from the new items' kNN rows; LightGCN part zero."""
    parts = dict(zip((g["modality"] for g in kit["graphs"]), cold.propagate_graphs(kit, features)))
    items = np.sum([p.astype(np.float64) for p in parts.values()], axis=0)
    if kit.get("heads") is not None:
        z_mm = parts["mm"].astype(np.float64)
        items = items + kit["recover_lambda"] * _mlp(kit["heads"]["recover"], _mlp(kit["heads"]["proj_mm"], z_mm))
    return items.astype(np.float32)
