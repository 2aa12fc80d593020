"""The inter-content encoder (ICA, stage 1 of METHOD.md): image + text tokens → one `mm` vector.

AlignRec fuses an item's image and text with a pretrained cross-modality encoder whose
pretraining code was never released. This is a small, readable stand-in:

    tokens = [FUSE, image tokens…, text tokens…]           (pooled vectors = 1 token each)
    token  = W_m · standardize(x) + modality_emb[m] + pos_emb[m][i]
    h      = pre-norm TransformerEncoder(tokens, key_padding_mask = missing tokens)
    mm     = normalize(W_mm · h[FUSE])

One encoder serves three uses, so that what the contrastive term learns is what `mm` reads:
- image alone ([FUSE, image tokens]) → h[FUSE] → image head → z_v  (contrastive)
- text alone  ([FUSE, text tokens])  → h[FUSE] → text head  → z_t  (contrastive)
- both, with a share of one modality's tokens replaced by a learned [MASK] → reconstruction
  heads predict the masked tokens' original (standardized) features, and h[FUSE] → mm.

Losses (weights in `ICAConfig`):
- contrastive: symmetric InfoNCE between z_v and z_t over the batch's items having both,
  logits = exp(logit_scale) · z_v z_tᵀ with a learned, clamped temperature;
- mmm (masked modality modelling): 1 − cos(pred, x) or ‖pred − x‖²/d over the masked tokens;
- fusion: InfoNCE(mm, z_v) and InfoNCE(mm, z_t) over the items having that modality. Not one
  of the two objectives METHOD.md names: without it nothing trains the fusion token's output on
  joint input (the contrastive term only sees single-modality input, the mmm term only the
  masked tokens' outputs). It also lets items with one modality train on what they have.
  `fusion_weight=0` gives the two-objective encoder.

A masked token's value never enters the network: its input row is the [MASK] embedding (plus its
modality and position embeddings), so the output cannot depend on what was hidden.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

MODALITIES = ("image", "text")


@dataclass
class ICAConfig:
    d_model: int = 256
    n_layers: int = 2
    n_heads: int = 4
    ff_mult: int = 4  # feed-forward width = ff_mult · d_model
    dropout: float = 0.1
    max_tokens: int = 16  # tokens per modality the position table holds (pooled vector = 1)
    mask_ratio: float = 0.3  # share of one modality's tokens hidden per item (at least one)
    temperature: float = 0.07  # initial InfoNCE temperature, learned
    min_temperature: float = 0.01  # clamp: logit scale ≤ 1/min_temperature (CLIP's 100)
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_epochs: int = 1  # linear warm-up, then cosine decay to 0 over `epochs`
    epochs: int = 50
    batch_size: int = 256
    seed: int = 0
    contrastive_weight: float = 1.0
    mmm_weight: float = 1.0
    fusion_weight: float = 1.0
    mmm_loss: str = "cosine"  # 'cosine' | 'mse', on the standardized original features
    holdout: float = 0.1  # share of items with both modalities kept out of training for retrieval eval
    patience: int = 10  # epochs without a better `select_metric` before stopping (0 = never stop)
    select_metric: str = "retrieval/mean_recall@10"  # or 'content/recall@20' (needs interactions)
    eval_every: int = 1

    def __post_init__(self) -> None:
        positive = ("d_model", "n_layers", "n_heads", "ff_mult", "max_tokens", "epochs", "batch_size", "eval_every")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ICAConfig.{name} must be ≥ 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"ICAConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ICAConfig.dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.mask_ratio <= 1.0:
            raise ValueError(f"ICAConfig.mask_ratio must be in (0, 1], got {self.mask_ratio}")
        if not 0.0 < self.min_temperature <= self.temperature:
            raise ValueError(
                f"ICAConfig.temperature ({self.temperature}) must be ≥ min_temperature ({self.min_temperature}) > 0"
            )
        if self.lr <= 0:
            raise ValueError(f"ICAConfig.lr must be > 0, got {self.lr}")
        for name in ("weight_decay", "contrastive_weight", "mmm_weight", "fusion_weight", "warmup_epochs", "patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"ICAConfig.{name} must be ≥ 0, got {getattr(self, name)}")
        if self.contrastive_weight + self.mmm_weight + self.fusion_weight <= 0:
            raise ValueError("ICAConfig: contrastive_weight, mmm_weight and fusion_weight are all 0")
        if self.mmm_loss not in ("cosine", "mse"):
            raise ValueError(f"ICAConfig.mmm_loss must be 'cosine' or 'mse', got {self.mmm_loss!r}")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"ICAConfig.holdout must be in [0, 1), got {self.holdout}")
        if self.select_metric not in SELECT_METRICS:
            raise ValueError(f"ICAConfig.select_metric must be one of {SELECT_METRICS}, got {self.select_metric!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ICAConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"ICAConfig: unknown field(s) {sorted(unknown)}")
        return cls(**d)

    def summary(self) -> str:
        """Short description for feature-table metadata (`model`)."""
        return (
            f"ica d{self.d_model} L{self.n_layers} H{self.n_heads} mask{self.mask_ratio} "
            f"{self.mmm_loss} w=({self.contrastive_weight},{self.mmm_weight},{self.fusion_weight}) seed{self.seed}"
        )


SELECT_METRICS = ("retrieval/mean_recall@1", "retrieval/mean_recall@10", "content/recall@20", "content/ndcg@20")


def info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: row i of `a` and row i of `b` are the positive pair, all others negatives."""
    if a.shape[0] < 2:
        return a.sum() * 0.0 + b.sum() * 0.0  # no negatives: no signal, but keep the graph
    logits = logit_scale * (a @ b.T)
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class InterContentEncoder(nn.Module):
    """Tokens in, fused `mm` and per-modality contrastive embeddings out (see module docstring).

    Inputs are (B, T_m, D_m) token tensors with (B, T_m) bool validity masks; an item missing a
    modality has all its tokens invalid (they become key-padding, so attention never sees them).
    Standardization statistics are buffers set from the training catalog (`set_normalization`).
    """

    def __init__(self, image_dim: int, text_dim: int, cfg: ICAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.dims = {"image": int(image_dim), "text": int(text_dim)}
        d = cfg.d_model
        self.proj = nn.ModuleDict({m: nn.Linear(self.dims[m], d) for m in MODALITIES})
        self.modality_emb = nn.ParameterDict({m: nn.Parameter(torch.randn(d) * 0.02) for m in MODALITIES})
        self.pos_emb = nn.ParameterDict({m: nn.Parameter(torch.randn(cfg.max_tokens, d) * 0.02) for m in MODALITIES})
        self.mask_emb = nn.ParameterDict({m: nn.Parameter(torch.randn(d) * 0.02) for m in MODALITIES})
        self.fuse_token = nn.Parameter(torch.randn(d) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d, cfg.n_heads, cfg.ff_mult * d, cfg.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(d)
        self.heads = nn.ModuleDict({m: nn.Linear(d, d) for m in MODALITIES})  # contrastive z_v, z_t
        self.mm_head = nn.Linear(d, d)
        self.recon = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, self.dims[m])) for m in MODALITIES}
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature)))
        for m in MODALITIES:
            self.register_buffer(f"{m}_mean", torch.zeros(self.dims[m]))
            self.register_buffer(f"{m}_std", torch.ones(self.dims[m]))

    # ----- inputs ---------------------------------------------------------------------------
    def set_normalization(self, modality: str, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-dimension statistics of the training catalog; tiny stds are floored to avoid blow-ups."""
        getattr(self, f"{modality}_mean").copy_(torch.as_tensor(mean, dtype=torch.float32))
        getattr(self, f"{modality}_std").copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-4))

    def standardize(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        return (x - getattr(self, f"{modality}_mean")) / getattr(self, f"{modality}_std")

    def temperature(self) -> float:
        return float(1.0 / self.clamped_scale().detach())

    def clamped_scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(1.0 / self.cfg.min_temperature)).exp()

    def _embed(self, m: str, x: torch.Tensor, hidden: torch.Tensor | None) -> torch.Tensor:
        """Token rows of modality m; rows with hidden=True carry the [MASK] embedding instead of x."""
        T = x.shape[1]
        if T > self.cfg.max_tokens:
            raise ValueError(f"{T} {m} tokens per item, but ICAConfig.max_tokens is {self.cfg.max_tokens}")
        tok = self.proj[m](self.standardize(m, x))
        if hidden is not None:
            tok = torch.where(hidden.unsqueeze(-1), self.mask_emb[m].expand_as(tok), tok)
        return tok + self.modality_emb[m] + self.pos_emb[m][:T]

    # ----- the transformer ------------------------------------------------------------------
    def encode(
        self,
        inputs: dict[str, tuple[torch.Tensor, torch.Tensor]],
        hidden: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """{modality: (x (B,T,D), valid (B,T))} → (h[FUSE] (B,d), {modality: token outputs (B,T,d)}).

        Only the modalities in `inputs` enter the sequence: encode({'image': …}) is "image alone".
        """
        hidden = hidden or {}
        B = next(iter(inputs.values()))[0].shape[0]
        seq = [self.fuse_token.expand(B, 1, -1)]
        pad = [torch.zeros(B, 1, dtype=torch.bool, device=self.fuse_token.device)]
        spans = {}
        start = 1
        for m in MODALITIES:
            if m not in inputs:
                continue
            x, valid = inputs[m]
            seq.append(self._embed(m, x, hidden.get(m)))
            pad.append(~valid)
            spans[m] = (start, start + x.shape[1])
            start += x.shape[1]
        h = self.encoder(torch.cat(seq, 1), src_key_padding_mask=torch.cat(pad, 1))
        h = self.final_norm(h)
        return h[:, 0], {m: h[:, a:b] for m, (a, b) in spans.items()}

    def embed_modality(self, m: str, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Contrastive embedding of one modality encoded alone, L2-normalized."""
        fuse, _ = self.encode({m: (x, valid)})
        return F.normalize(self.heads[m](fuse), dim=-1)

    def fuse(
        self,
        inputs: dict[str, tuple[torch.Tensor, torch.Tensor]],
        hidden: dict[str, torch.Tensor] | None = None,
        normalize: bool = True,
    ) -> torch.Tensor:
        """The item's `mm` vector: the fusion token's output over all its tokens, projected."""
        fuse, _ = self.encode(inputs, hidden)
        mm = self.mm_head(fuse)
        return F.normalize(mm, dim=-1) if normalize else mm

    # ----- masked modality modelling ----------------------------------------------------------
    def sample_hidden(self, valid: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Per item, pick one modality and hide ceil-ish(mask_ratio · its tokens) (≥ 1) of them.

        A modality is eligible only if something of the item stays visible to reconstruct from:
        an item with a single pooled token of a single modality is never masked.
        """
        dev = valid["image"].device
        counts = {m: valid[m].sum(1) for m in MODALITIES}
        n_hide = {m: torch.clamp(torch.round(self.cfg.mask_ratio * counts[m]), min=1) * (counts[m] > 0) for m in MODALITIES}
        eligible = {}
        for m in MODALITIES:
            other = [o for o in MODALITIES if o != m][0]
            eligible[m] = (counts[m] > 0) & ((counts[m] - n_hide[m] > 0) | (counts[other] > 0))
        coin = torch.rand(counts["image"].shape, generator=generator, device=dev) < 0.5
        pick_image = eligible["image"] & (coin | ~eligible["text"])
        pick = {"image": pick_image, "text": eligible["text"] & ~pick_image}
        hidden = {}
        for m in MODALITIES:
            scores = torch.rand(valid[m].shape, generator=generator, device=dev).masked_fill(~valid[m], 2.0)
            rank = scores.argsort(1).argsort(1)
            hidden[m] = (rank < n_hide[m].unsqueeze(1)) & valid[m] & pick[m].unsqueeze(1)
        return hidden

    def mmm_loss(self, x: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Per-token reconstruction error against the standardized original features."""
        if self.cfg.mmm_loss == "cosine":
            return 1.0 - F.cosine_similarity(pred, x, dim=-1)
        return ((pred - x) ** 2).mean(-1)

    # ----- the pretraining objective ----------------------------------------------------------
    def forward(
        self,
        image: torch.Tensor,
        image_valid: torch.Tensor,
        text: torch.Tensor,
        text_valid: torch.Tensor,
        hidden: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Pretraining losses of one batch; `hidden` defaults to a fresh sample_hidden()."""
        cfg = self.cfg
        valid = {"image": image_valid, "text": text_valid}
        x = {"image": image, "text": text}
        has = {m: valid[m].any(1) for m in MODALITIES}
        both = has["image"] & has["text"]
        scale = self.clamped_scale()
        zero = image.sum() * 0.0

        # contrastive: each modality encoded alone, only items having both
        z = {m: self.embed_modality(m, x[m], valid[m]) for m in MODALITIES}
        contrastive = info_nce(z["image"][both], z["text"][both], scale) if cfg.contrastive_weight else zero

        # masked modality modelling on the joint sequence
        if hidden is None:
            hidden = self.sample_hidden(valid)
        fuse, tokens = self.encode({m: (x[m], valid[m]) for m in MODALITIES}, hidden)
        errors = []
        for m in MODALITIES:
            if hidden[m].any():
                pred = self.recon[m](tokens[m][hidden[m]])
                errors.append(self.mmm_loss(self.standardize(m, x[m][hidden[m]]), pred))
        n_masked = sum(int(e.numel()) for e in errors)
        mmm = torch.cat(errors).mean() if errors else zero

        # fusion: the fused vector aligned with each modality the item has
        mm = F.normalize(self.mm_head(fuse), dim=-1)
        fusion = zero
        if cfg.fusion_weight:
            terms = [info_nce(mm[has[m]], z[m][has[m]], scale) for m in MODALITIES if has[m].sum() >= 2]
            fusion = torch.stack(terms).mean() if terms else zero

        total = cfg.contrastive_weight * contrastive + cfg.mmm_weight * mmm + cfg.fusion_weight * fusion
        return {
            "loss": total,
            "contrastive": contrastive.detach(),
            "mmm": mmm.detach(),
            "fusion": fusion.detach(),
            "n_pairs": torch.tensor(int(both.sum())),
            "n_masked": torch.tensor(n_masked),
        }
