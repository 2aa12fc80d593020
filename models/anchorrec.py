"""AnchorRec (stage 2): anchored alignment of gated modality branches on a LightGCN backbone.

Read top to bottom: the loss functions, the config, then the model. The math follows
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

- only the batch's rows of the last LightGCN layer and of the user lift are computed;
- the projection heads P_* and the recovery decoder D see only the batch's items (the
  reference projects every item's raw features for every batch);
- AMP's ‖EEᵀ − S‖_F is computed through Gram matrices (ᵀE E, ᵀE F, ᵀF F: O(B·d·D + B·D²))
  instead of two B × B matrices, with S from row-normalized features prepared once;
- graph smoothing over all kNN edges uses Σ w_ij‖z_i − z_j‖² = Σ_i (r_i + c_i)‖z_i‖² − 2⟨Z, KZ⟩
  (one sparse product) instead of gathering both ends of every edge;
- the v branch is computed only when its AMP term is on (it enters the model only there).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.data import GraphData
from models.sparse import FixedSparse, block

MODALITIES = ("mm", "t", "v")


# ----------------------------------------------------------------------------- losses


def bpr_loss(u: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """−mean log σ(u·p − u·n)."""
    return -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()


def l2_loss(*embeddings: torch.Tensor) -> torch.Tensor:
    """½ Σ‖e‖² over the batch's embeddings, per batch row (the reference's BPR regularizer)."""
    return sum(0.5 * (e**2).sum() for e in embeddings) / embeddings[0].shape[0]


def info_nce(anchor: torch.Tensor, other: torch.Tensor, tau: float) -> torch.Tensor:
    """One-directional InfoNCE on cosine similarity: row i of `anchor` should pick row i of `other`."""
    logits = F.normalize(anchor, dim=1) @ F.normalize(other, dim=1).T / tau
    return F.cross_entropy(logits, torch.arange(len(anchor), device=anchor.device))


def uia_margin_loss(u: torch.Tensor, p: torch.Tensor, n: torch.Tensor, margin: float) -> torch.Tensor:
    """relu(margin + (1 − cos(u, p)) − (1 − cos(u, n))), mean; u is the (detached) anchor."""
    u = u.detach()
    return F.relu(margin + (1 - F.cosine_similarity(u, p, dim=-1)) - (1 - F.cosine_similarity(u, n, dim=-1))).mean()


def gram_sq(x: torch.Tensor) -> torch.Tensor:
    """‖x xᵀ‖_F² = ‖xᵀ x‖_F², through whichever Gram matrix is smaller."""
    g = x.T @ x if x.shape[1] <= x.shape[0] else x @ x.T
    return (g**2).sum()


def similarity_gap(emb: torch.Tensor, feat_unit: torch.Tensor, feat_gram_sq: torch.Tensor | None = None) -> torch.Tensor:
    """‖E Eᵀ − S‖_F / B with S = F Fᵀ the raw features' cosine matrix (F rows of unit norm).

    This is MMRec's EmbLoss on the B × B gap (the norm, not its square, over the batch size), as
    the reference computes it. Expanded, ‖EEᵀ − FFᵀ‖² = ‖EᵀE‖² − 2‖EᵀF‖² + ‖FᵀF‖², so no B × B
    matrix is formed. `feat_gram_sq` (= ‖FFᵀ‖²) may be passed in when modalities share features.
    """
    if feat_gram_sq is None:
        feat_gram_sq = gram_sq(feat_unit)
    sq = gram_sq(emb) - 2 * ((emb.T @ feat_unit) ** 2).sum() + feat_gram_sq
    return torch.sqrt(torch.clamp(sq, min=1e-12)) / emb.shape[0]


def smoothing_loss(z: torch.Tensor, knn: FixedSparse, deg_sum: torch.Tensor) -> torch.Tensor:
    """mean over the kNN edges (i, j, w) of w‖z_i − z_j‖², all edges, without gathering them.

    Σ_ij w_ij‖z_i − z_j‖² = Σ_i (r_i + c_i)‖z_i‖² − 2 Σ_i z_i·(K z)_i with r, c the row and
    column sums of K (`deg_sum` = r + c).
    """
    total = (deg_sum * (z**2).sum(1)).sum() - 2 * (z * knn(z)).sum()
    return total / knn.nnz


def lightgcn_mean(adj: FixedSparse, ego: torch.Tensor, n_layers: int, nodes: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of LightGCN layers E⁰..E^L (users then items); only rows `nodes` when given.

    With `nodes`, the last layer is computed for those rows only: the batch needs no more.
    """
    layers, h = [ego], ego
    for layer in range(n_layers):
        if nodes is not None and layer == n_layers - 1:
            return torch.stack([x[nodes] for x in layers] + [adj.rows(nodes, h)]).mean(0)
        h = adj(h)
        layers.append(h)
    out = torch.stack(layers).mean(0)
    return out if nodes is None else out[nodes]


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

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "proj_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("n_ui_layers", "n_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        for name in ("lambda_weight", "uia_weight", "uia_margin", "aal_loss", "amp_loss", "smooth_weight", "recover_lambda"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if self.tau <= 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if not 0.0 <= self.aal_v_share <= 1.0:
            raise ValueError(f"aal_v_share must be in [0, 1], got {self.aal_v_share}")
        self.amp_modality_weights = tuple(float(w) for w in self.amp_modality_weights)
        if len(self.amp_modality_weights) != 3 or min(self.amp_modality_weights) < 0:
            raise ValueError(f"amp_modality_weights must be 3 weights ≥ 0 (mm, t, v), got {self.amp_modality_weights}")
        if self.user_lift not in ("sym", "mean"):
            raise ValueError(f"user_lift must be 'sym' or 'mean', got {self.user_lift!r}")


# ----------------------------------------------------------------------------- model


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
        groups[m] = next((o for o in groups if features[o].shape == features[m].shape and torch.equal(features[o], features[m])), m)
    return groups


class AnchorRec(nn.Module):
    def __init__(self, graph: GraphData, cfg: AnchorRecConfig) -> None:
        super().__init__()
        require_modalities(graph, MODALITIES, "AnchorRec")
        self.cfg = cfg
        self.n_users, self.n_items = graph.n_users, graph.n_items
        d = cfg.embedding_dim
        self.user_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_users, d)))
        self.item_emb = nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.n_items, d)))

        # graphs (constant)
        self.adj = FixedSparse(graph.adj)
        self.lift = FixedSparse(user_lift(graph, cfg.user_lift))
        self.knn = nn.ModuleDict({m: FixedSparse(graph.knn[m]) for m in MODALITIES})
        self.register_buffer("mm_deg_sum", self.knn["mm"].row_sums() + self.knn["mm"].col_sums(), persistent=False)

        # raw features (constant): AAL projects them, AMP compares against their cosine matrix
        self.groups = feature_groups(graph.features, MODALITIES)
        for m in MODALITIES:
            f = graph.features[m].float()
            self.register_buffer(f"raw_{m}", f, persistent=False)
            self.register_buffer(f"unit_{m}", F.normalize(f, dim=1), persistent=False)
        # branch inputs: trainable copies of the features, as in the reference, or the raw ones
        if cfg.finetune_features:
            self.feat = nn.ParameterDict({m: nn.Parameter(graph.features[m].float().clone()) for m in MODALITIES})
        self.trs = nn.ModuleDict({m: nn.Linear(graph.features[m].shape[1], d) for m in MODALITIES})
        self.gate = nn.ModuleDict({m: nn.Linear(d, d) for m in MODALITIES})

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

    # --- forward pieces

    def lightgcn(self, nodes: torch.Tensor | None = None) -> torch.Tensor:
        return lightgcn_mean(self.adj, torch.cat([self.user_emb, self.item_emb]), self.cfg.n_ui_layers, nodes)

    def branch(self, m: str) -> torch.Tensor:
        """z_m for all items: gated ID embeddings propagated n_layers times over the kNN graph."""
        f = self.feat[m] if self.cfg.finetune_features else getattr(self, f"raw_{m}")
        e = self.item_emb * torch.sigmoid(self.gate[m](self.trs[m](f)))
        for _ in range(self.cfg.n_layers):
            e = self.knn[m](e)
        return e

    def recovery(self, h_mm: torch.Tensor) -> torch.Tensor:
        """recover_lambda · D(P_mm(z_mm)), given the projected P_mm(z_mm)."""
        return self.cfg.recover_lambda * self.recover(h_mm)

    # --- the protocol

    def batch_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg, n_b = self.cfg, len(users)
        nodes = torch.cat([users, self.n_users + pos, self.n_users + neg])
        lg = self.lightgcn(nodes)
        lg_u, lg_p, lg_n = lg[:n_b], lg[n_b : 2 * n_b], lg[2 * n_b :]
        z = {m: self.branch(m) for m in ("mm", "t")}
        items = torch.cat([pos, neg])

        u = lg_u + self.lift.rows(users, z["mm"]) + self.lift.rows(users, z["t"])
        i = torch.cat([lg_p, lg_n]) + z["mm"][items] + z["t"][items]
        need_h_mm = cfg.recover_lambda > 0 or cfg.aal_loss > 0
        h_mm = self.proj["mm"](z["mm"][items]) if need_h_mm else None
        if cfg.recover_lambda > 0:
            i = i + self.recovery(h_mm)
        p, n = i[:n_b], i[n_b:]

        out = {"bpr": bpr_loss(u, p, n)}
        if cfg.lambda_weight > 0:
            out["reg"] = cfg.lambda_weight * l2_loss(u, p, n)
        if cfg.uia_weight > 0:
            out["uia"] = cfg.uia_weight * uia_margin_loss(u, p, n, cfg.uia_margin)
        if cfg.aal_loss > 0:
            h_mm_p = h_mm[:n_b]
            mix = cfg.aal_v_share * self.proj["v"](self.raw_v[pos]) + (1 - cfg.aal_v_share) * self.proj["t"](self.raw_t[pos])
            aal = info_nce(h_mm_p, self.proj["id"](lg_p), cfg.tau) + info_nce(h_mm_p.detach(), mix, cfg.tau)
            out["aal"] = cfg.aal_loss * aal
        if cfg.amp_loss > 0 and max(cfg.amp_modality_weights) > 0:
            out["amp"] = cfg.amp_loss * self.amp(pos, z)
        if cfg.smooth_weight > 0:
            out["smooth"] = cfg.smooth_weight * smoothing_loss(z["mm"], self.knn["mm"], self.mm_deg_sum)
        out["loss"] = sum(out.values())
        return out

    def amp(self, pos: torch.Tensor, z: dict[str, torch.Tensor]) -> torch.Tensor:
        """Σ_m w_m ‖E_m E_mᵀ − S_m‖_F / B over the batch's positive items."""
        total, shared = 0.0, {}
        for m, w in zip(MODALITIES, self.cfg.amp_modality_weights):
            if w == 0:
                continue
            if m not in z:
                z[m] = self.branch(m)
            unit = getattr(self, f"unit_{m}")[pos]
            g = self.groups[m]
            if g not in shared:
                shared[g] = gram_sq(unit)
            total = total + w * similarity_gap(z[m][pos], unit, shared[g])
        return total

    @torch.no_grad()
    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users, items) with score = users @ items.T: the vectors the evaluator and the store use."""
        lg = self.lightgcn()
        z_mm, z_t = self.branch("mm"), self.branch("t")
        users = lg[: self.n_users] + self.lift(z_mm) + self.lift(z_t)
        items = lg[self.n_users :] + z_mm + z_t
        if self.cfg.recover_lambda > 0:
            items = items + self.recovery(self.proj["mm"](z_mm))
        return users, items
