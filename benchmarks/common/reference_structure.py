"""AnchorRec computed the way the authors' code computes it: the speed benchmark's baseline.

Same parameters as models.anchorrec.AnchorRec (it subclasses it, so one state_dict fits both),
same loss values, but per batch it does what hun9008/AnchorRec_SIGIR26 does in
`calculate_loss`: the full forward pass over every user and item with torch.sparse.mm on COO
matrices, all three modality branches, the projection heads and the recovery decoder over
every item, the raw features' B × B cosine matrices rebuilt (normalization included) for each
batch, and graph smoothing by gathering both ends of every kNN edge.

Not used by the project's training; only benchmarks/speed/bench_train_speed.py imports it.
"""

from __future__ import annotations

import torch

from models.anchorrec import AnchorRec, AnchorRecConfig
from models.blocks import user_lift
from models.losses import bpr_loss, l2_loss, uia_margin_loss
from models.training.data import GraphData


def build_sim(x: torch.Tensor) -> torch.Tensor:
    x = x / torch.norm(x, p=2, dim=-1, keepdim=True)
    return x @ x.T


def info_nce(view1: torch.Tensor, view2: torch.Tensor, temperature: float) -> torch.Tensor:
    """The reference's InfoNCE: B × B logits divided by τ, exp, row sums, log of the ratio."""
    view1 = view1 / view1.norm(dim=1, keepdim=True).clamp_min(1e-12)
    view2 = view2 / view2.norm(dim=1, keepdim=True).clamp_min(1e-12)
    pos = torch.exp((view1 * view2).sum(dim=-1) / temperature)
    total = torch.exp(view1 @ view2.T / temperature).sum(dim=1)
    return torch.mean(-torch.log(pos / total))


def sim_loss(emb: torch.Tensor, sim: torch.Tensor) -> torch.Tensor:
    """MMRec EmbLoss on the gap: ‖E Eᵀ − S‖_F / B."""
    return torch.norm(emb @ emb.T - sim.detach(), p=2) / emb.shape[0]


class ReferenceStructureAnchorRec(AnchorRec):
    def __init__(self, graph: GraphData, cfg: AnchorRecConfig) -> None:
        super().__init__(graph, cfg)
        self.adj_coo = graph.adj.coalesce()
        self.lift_coo = user_lift(graph, cfg.user_lift).coalesce()
        self.knn_coo = {m: graph.knn[m].coalesce() for m in ("mm", "t", "v")}

    def _apply(self, fn, recurse=True):  # keep the COO copies on the model's device
        out = super()._apply(fn, recurse)
        self.adj_coo = fn(self.adj_coo)
        self.lift_coo = fn(self.lift_coo)
        self.knn_coo = {m: fn(a) for m, a in self.knn_coo.items()}
        return out

    def forward_all(self):
        cfg = self.cfg
        ego = torch.cat([self.user_emb, self.item_emb])
        layers, h = [ego], ego
        for _ in range(cfg.n_ui_layers):
            h = torch.sparse.mm(self.adj_coo, h)
            layers.append(h)
        content = torch.stack(layers).mean(0)
        z = {}
        for m in ("mm", "t", "v"):
            f = self.feat[m] if cfg.finetune_features else getattr(self, f"raw_{m}")
            e = self.item_emb * torch.sigmoid(self.gate[m](self.trs[m](f)))
            for _ in range(cfg.n_layers):
                e = torch.sparse.mm(self.knn_coo[m], e)
            z[m] = (torch.sparse.mm(self.lift_coo, e), e)
        rec = self.recover(self.proj["mm"](z["mm"][1]))
        users = content[: self.n_users] + z["mm"][0] + z["t"][0]
        items = content[self.n_users :] + z["mm"][1] + z["t"][1] + cfg.recover_lambda * rec
        return users, items, content[self.n_users :], {m: z[m][1] for m in z}

    def batch_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        ua, ia, content_items, z = self.forward_all()
        u, p, n = ua[users], ia[pos], ia[neg]
        out = {"bpr": bpr_loss(u, p, n)}
        out["reg"] = cfg.lambda_weight * l2_loss(u, p, n)
        out["uia"] = cfg.uia_weight * uia_margin_loss(u, p, n, cfg.uia_margin)
        h_id = self.proj["id"](content_items)
        h_mm = self.proj["mm"](z["mm"])
        mix = cfg.aal_v_share * self.proj["v"](self.raw_v) + (1 - cfg.aal_v_share) * self.proj["t"](self.raw_t)
        out["aal"] = cfg.aal_loss * (
            info_nce(h_mm[pos], h_id[pos], cfg.tau) + info_nce(h_mm[pos].detach(), mix[pos], cfg.tau)
        )
        w_mm, w_t, w_v = cfg.amp_modality_weights
        amp = (
            w_mm * sim_loss(z["mm"][pos], build_sim(self.raw_mm[pos]))
            + w_t * sim_loss(z["t"][pos], build_sim(self.raw_t[pos]))
            + w_v * sim_loss(z["v"][pos], build_sim(self.raw_v[pos]))
        )
        out["amp"] = cfg.amp_loss * amp
        (row, col), w = self.knn_coo["mm"].indices(), self.knn_coo["mm"].values()
        zi, zj = z["mm"][row], z["mm"][col]
        out["smooth"] = cfg.smooth_weight * (((zi - zj) ** 2).sum(1) * w).mean()
        out["loss"] = sum(out.values())
        return out
