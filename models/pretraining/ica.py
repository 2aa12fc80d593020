"""The inter-content encoder (ICA, stage 1 of METHOD.md): image + text tokens → one `mm` vector.

AlignRec fuses an item's image and text with a pretrained cross-modality encoder (BEiT-3) whose
pretraining code was never released. This is a small, readable stand-in:

    tokens = [FUSE, image tokens…, text tokens…]      (a pooled vector is the 1-token case)
    token  = W_m · standardize(x) + modality_emb[m] + pos_emb[m][i]
             (text with cfg.text_input='ids': word_emb[id] instead of W_t · standardize(x))
    h      = pre-norm TransformerEncoder(tokens, key_padding_mask = padding / missing modality)
    mm     = normalize(W_mm · h[FUSE])           on both modalities, nothing masked

One encoder serves three uses, so that what the contrastive term learns is what `mm` reads:
- image alone ([FUSE, image tokens]) → h[FUSE] → image head → z_v  (contrastive)
- text alone  ([FUSE, text tokens])  → h[FUSE] → text head  → z_t  (contrastive)
- both, with a share of ONE modality's tokens per item replaced by a learned [MASK] input →
  masked image-token modelling or masked word modelling on the hidden tokens, and h[FUSE] → mm.

Losses (weights in `ICAConfig`; a weight of 0 removes the term, and with it the masking it needs):
- contrastive: symmetric InfoNCE between z_v and z_t over the batch's items having both,
  logits = exp(logit_scale) · z_v z_tᵀ with a learned, clamped temperature;
- mmm (masked image-token modelling; also text when the text input has no tokenizer ids, e.g. a
  pooled vector): 1 − cos(pred, x) or ‖pred − x‖²/d against the hidden tokens' standardized
  features; `mask_ratio` of the image tokens are hidden (at least one);
- mlm (masked word modelling, text token tables with ids): cross-entropy of a softmax head over
  the word pieces of the pretraining catalog (others share one [UNK] row), on the hidden text
  positions only; `text_mask_ratio` of the real tokens, never [CLS]/[SEP]/[PAD];
- fusion: InfoNCE(mm, z_v) and InfoNCE(mm, z_t) over the items having that modality, on the
  masked joint pass. Not one of METHOD.md's objectives, and kept on purpose: without it nothing
  trains the fusion token's output on joint input (the contrastive term only sees one modality at
  a time, the masked terms only the hidden tokens' outputs), so `mm` would be an untrained
  read-out; it also lets items with one modality train on what they have. `fusion_weight=0`
  gives the encoder without it (the ablation switch).

Masked words and contextual states. Extracted text tokens are a language model's CONTEXTUAL
hidden states: each neighbour's state already encodes the hidden word, so with
`text_input='states'` masked word modelling is largely solvable from the text alone and teaches
little about the image. `text_input='ids'` feeds a learned nn.Embedding of the tokenizer ids
(randomly initialised, BEiT-3's choice) instead, so a hidden word can only be recovered from the
visible words and the image. Measured on a synthetic held-out check where the hidden word is a
colour also drawn in the image (tests/test_ica_tokens.py::test_contextual_states_leak_the_hidden_word):
with the image removed, masked-word accuracy is 1.00 from states (the leak) and 0.12 from ids
(chance 0.17); with the image, ids reach 1.00 (the word is learnt from the picture). Default:
'ids' — the masked-word objective then means what it says, and product titles
are short keyword lists that a static word embedding represents well; 'states' keeps the language
model's knowledge and is the ablation's other arm.

A masked token's value never enters the network: its input row is the [MASK] embedding (plus its
modality and position embeddings), so the output cannot depend on what was hidden.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

MODALITIES = ("image", "text")


@dataclass
class ICAConfig:
    d_model: int = 256
    n_layers: int = 2
    n_heads: int = 4
    ff_mult: int = 4  # feed-forward width = ff_mult · d_model
    dropout: float = 0.1
    max_tokens: int = 64  # tokens per modality the position table holds (pooled vector = 1)
    mask_ratio: float = 0.4  # share of an item's image (or pooled/id-less) tokens hidden (at least one)
    text_mask_ratio: float = 0.25  # share of an item's real text tokens hidden for masked word modelling
    text_input: str = "ids"  # text token input: 'ids' (learned word embedding) | 'states' (extracted states)
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
    mlm_weight: float = 1.0  # masked word modelling (text token tables with tokenizer ids)
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
        for name in ("mask_ratio", "text_mask_ratio"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"ICAConfig.{name} must be in (0, 1], got {getattr(self, name)}")
        if self.text_input not in TEXT_INPUTS:
            raise ValueError(f"ICAConfig.text_input must be one of {TEXT_INPUTS}, got {self.text_input!r}")
        if not 0.0 < self.min_temperature <= self.temperature:
            raise ValueError(
                f"ICAConfig.temperature ({self.temperature}) must be ≥ min_temperature ({self.min_temperature}) > 0"
            )
        if self.lr <= 0:
            raise ValueError(f"ICAConfig.lr must be > 0, got {self.lr}")
        weights = ("contrastive_weight", "mmm_weight", "mlm_weight", "fusion_weight")
        for name in ("weight_decay", *weights, "warmup_epochs", "patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"ICAConfig.{name} must be ≥ 0, got {getattr(self, name)}")
        if sum(getattr(self, w) for w in weights) <= 0:
            raise ValueError(f"ICAConfig: {', '.join(weights)} are all 0")
        if self.mmm_loss not in ("cosine", "mse"):
            raise ValueError(f"ICAConfig.mmm_loss must be 'cosine' or 'mse', got {self.mmm_loss!r}")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"ICAConfig.holdout must be in [0, 1), got {self.holdout}")
        if self.select_metric not in SELECT_METRICS:
            raise ValueError(f"ICAConfig.select_metric must be one of {SELECT_METRICS}, got {self.select_metric!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ICAConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"ICAConfig: unknown field(s) {sorted(unknown)}")
        return cls(**d)

    def summary(self) -> str:
        """Short description for feature-table metadata (`model`)."""
        return (
            f"ica d{self.d_model} L{self.n_layers} H{self.n_heads} mask{self.mask_ratio} "
            f"{self.mmm_loss} text={self.text_input} "
            f"w=({self.contrastive_weight},{self.mmm_weight},{self.mlm_weight},{self.fusion_weight}) seed{self.seed}"
        )


TEXT_INPUTS = ("ids", "states")
SELECT_METRICS = ("retrieval/mean_recall@1", "retrieval/mean_recall@10", "content/recall@20", "content/ndcg@20")


def info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: row i of `a` and row i of `b` are the positive pair, all others negatives."""
    if a.shape[0] < 2:
        return a.sum() * 0.0 + b.sum() * 0.0  # no negatives: no signal, but keep the graph
    logits = logit_scale * (a @ b.T)
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class Tokens(NamedTuple):
    """One modality of a batch: (B, T, D) features, (B, T) validity, (B, T) tokenizer ids or None."""

    x: torch.Tensor
    valid: torch.Tensor
    ids: torch.Tensor | None = None


def _tokens(t: Tokens | tuple) -> Tokens:
    return t if isinstance(t, Tokens) else Tokens(*t)


class InterContentEncoder(nn.Module):
    """Tokens in, fused `mm` and per-modality contrastive embeddings out (see module docstring).

    Inputs are (B, T_m, D_m) token tensors with (B, T_m) bool validity masks (and, for text token
    tables, (B, T_t) tokenizer ids); an item missing a modality has all its tokens invalid (they
    become key-padding, so attention never sees them). Standardization statistics are buffers
    set from the training catalog (`set_normalization`). `vocab_ids` are the tokenizer ids the
    word embedding / masked-word head cover (the pretraining catalog's); `special_ids` are never
    masked. Both are buffers too, so a checkpoint carries everything needed to apply it.
    """

    vocab_ids: torch.Tensor  # buffers registered in __init__ (declared for their type)
    special_ids: torch.Tensor

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        cfg: ICAConfig,
        vocab_ids: Sequence[int] | None = None,
        special_ids: Sequence[int] = (),
    ) -> None:
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
        vocab = sorted({int(i) for i in vocab_ids or ()} - {int(i) for i in special_ids})
        self.register_buffer("vocab_ids", torch.tensor(vocab, dtype=torch.long))
        self.register_buffer("special_ids", torch.tensor(sorted({int(i) for i in special_ids}), dtype=torch.long))
        n_rows = len(vocab) + 1  # row 0: [UNK], every id outside the vocabulary
        self.word_emb = nn.Embedding(n_rows, d) if vocab and cfg.text_input == "ids" else None
        self.mlm_head = (
            nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d), nn.Linear(d, n_rows))
            if vocab and cfg.mlm_weight > 0
            else None
        )

    # ----- inputs ---------------------------------------------------------------------------
    def set_normalization(self, modality: str, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-dimension statistics of the training catalog; tiny stds are floored to avoid blow-ups."""
        getattr(self, f"{modality}_mean").copy_(torch.as_tensor(mean, dtype=torch.float32))
        getattr(self, f"{modality}_std").copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-4))

    def standardize(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - getattr(self, f"{modality}_mean")) / getattr(self, f"{modality}_std")

    def temperature(self) -> float:
        return float(1.0 / self.clamped_scale().detach())

    def clamped_scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(1.0 / self.cfg.min_temperature)).exp()

    def word_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Tokenizer ids → rows of the word embedding / masked-word head (0 = [UNK])."""
        if not len(self.vocab_ids):
            return torch.zeros_like(ids, dtype=torch.long)
        ids = ids.long().contiguous()
        pos = torch.searchsorted(self.vocab_ids, ids).clamp(max=len(self.vocab_ids) - 1)
        return torch.where(self.vocab_ids[pos] == ids, pos + 1, 0)

    def _embed(self, m: str, tok: Tokens, hidden: torch.Tensor | None) -> torch.Tensor:
        """Token rows of modality m; rows with hidden=True carry the [MASK] embedding instead of x."""
        T = tok.x.shape[1]
        if T > self.cfg.max_tokens:
            raise ValueError(f"{T} {m} tokens per item, but ICAConfig.max_tokens is {self.cfg.max_tokens}")
        if m == "text" and self.word_emb is not None:
            if tok.ids is None:
                raise ValueError("ICAConfig.text_input='ids' needs the text tokens' tokenizer ids (a token table)")
            rows = self.word_emb(self.word_rows(tok.ids))
        else:
            rows = self.proj[m](self.standardize(m, tok.x))
        if hidden is not None:
            rows = torch.where(hidden.unsqueeze(-1), self.mask_emb[m].expand_as(rows), rows)
        return rows + self.modality_emb[m] + self.pos_emb[m][:T]

    # ----- the transformer ------------------------------------------------------------------
    def encode(
        self,
        inputs: Mapping[str, Tokens | tuple],
        hidden: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """{modality: (x (B,T,D), valid (B,T)[, ids])} → (h[FUSE] (B,d), {modality: token outputs (B,T,d)}).

        Only the modalities in `inputs` enter the sequence: encode({'image': …}) is "image alone".
        """
        hidden = hidden or {}
        B = _tokens(next(iter(inputs.values()))).x.shape[0]
        seq = [self.fuse_token.expand(B, 1, -1)]
        pad = [torch.zeros(B, 1, dtype=torch.bool, device=self.fuse_token.device)]
        spans = {}
        start = 1
        for m in MODALITIES:
            if m not in inputs:
                continue
            tok = _tokens(inputs[m])
            seq.append(self._embed(m, tok, hidden.get(m)))
            pad.append(~tok.valid)
            spans[m] = (start, start + tok.x.shape[1])
            start += tok.x.shape[1]
        h = self.encoder(torch.cat(seq, 1), src_key_padding_mask=torch.cat(pad, 1))
        h = self.final_norm(h)
        return h[:, 0], {m: h[:, a:b] for m, (a, b) in spans.items()}

    def embed_modality(
        self, m: str, x: torch.Tensor, valid: torch.Tensor, ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Contrastive embedding of one modality encoded alone, L2-normalized."""
        fuse, _ = self.encode({m: Tokens(x, valid, ids)})
        return F.normalize(self.heads[m](fuse), dim=-1)

    def fuse(
        self,
        inputs: Mapping[str, Tokens | tuple],
        hidden: dict[str, torch.Tensor] | None = None,
        normalize: bool = True,
    ) -> torch.Tensor:
        """The item's `mm` vector: the fusion token's output over all its tokens, projected."""
        fuse, _ = self.encode(inputs, hidden)
        mm = self.mm_head(fuse)
        return F.normalize(mm, dim=-1) if normalize else mm

    # ----- masked modelling -------------------------------------------------------------------
    def masks_words(self, text: Tokens) -> bool:
        """Text's masked objective is word modelling (ids + a head), not feature regression."""
        return self.mlm_head is not None and text.ids is not None

    def masking_active(self, text: Tokens) -> dict[str, bool]:
        """Which modalities get hidden tokens: only those whose masked objective has a weight."""
        text_weight = self.cfg.mlm_weight if self.masks_words(text) else self.cfg.mmm_weight
        return {"image": self.cfg.mmm_weight > 0, "text": text_weight > 0}

    def maskable(self, inputs: dict[str, Tokens]) -> dict[str, torch.Tensor]:
        """Real tokens that may be hidden: [CLS]/[SEP]/[PAD] ids never are (trivial to predict)."""
        out = {m: inputs[m].valid for m in MODALITIES}
        ids = inputs["text"].ids
        if ids is not None and len(self.special_ids):
            out["text"] = out["text"] & ~torch.isin(ids.long(), self.special_ids)
        return out

    def sample_hidden(
        self,
        valid: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
        active: dict[str, bool] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per item, pick one modality and hide round(ratio · its tokens) (≥ 1) of them.

        The ratio is `mask_ratio` for image tokens and `text_mask_ratio` for text. A modality is
        eligible only if its objective is `active` and something of the item stays visible to
        reconstruct from: an item with a single pooled token of a single modality is never masked.
        """
        active = active or {m: True for m in MODALITIES}
        ratio = {"image": self.cfg.mask_ratio, "text": self.cfg.text_mask_ratio}
        dev = valid["image"].device
        counts = {m: valid[m].sum(1) for m in MODALITIES}
        n_hide = {m: torch.clamp(torch.round(ratio[m] * counts[m]), min=1) * (counts[m] > 0) for m in MODALITIES}
        eligible = {}
        for m in MODALITIES:
            other = [o for o in MODALITIES if o != m][0]
            eligible[m] = (counts[m] > 0) & ((counts[m] - n_hide[m] > 0) | (counts[other] > 0)) & active[m]
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

    def _regression(self, x: dict[str, Tokens], tokens: dict[str, torch.Tensor], hidden: dict[str, torch.Tensor]):
        """Masked feature modelling over the hidden tokens of modalities without a word head."""
        errors = []
        for m in MODALITIES:
            if hidden[m].any() and not (m == "text" and self.masks_words(x[m])):
                pred = self.recon[m](tokens[m][hidden[m]]).float()
                errors.append(self.mmm_loss(self.standardize(m, x[m].x[hidden[m]]), pred))
        n = sum(int(e.numel()) for e in errors)
        return (torch.cat(errors).mean() if errors else None), n

    def _mlm(self, text: Tokens, out: torch.Tensor, hidden: torch.Tensor):
        """Masked word modelling: cross-entropy (and accuracy) over the hidden text positions only."""
        if not self.masks_words(text) or not hidden.any():
            return None, None, 0
        assert self.mlm_head is not None and text.ids is not None  # masks_words said so
        logits = self.mlm_head(out[hidden]).float()
        target = self.word_rows(text.ids[hidden])
        acc = (logits.argmax(-1) == target).float().mean()
        return F.cross_entropy(logits, target), acc, int(target.numel())

    # ----- the pretraining objective ----------------------------------------------------------
    def forward(
        self,
        image: torch.Tensor,
        image_valid: torch.Tensor,
        text: torch.Tensor,
        text_valid: torch.Tensor,
        hidden: dict[str, torch.Tensor] | None = None,
        text_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Pretraining losses of one batch; `hidden` defaults to a fresh sample_hidden()."""
        cfg = self.cfg
        x = {"image": Tokens(image, image_valid), "text": Tokens(text, text_valid, text_ids)}
        has = {m: x[m].valid.any(1) for m in MODALITIES}
        both = has["image"] & has["text"]
        scale = self.clamped_scale()
        zero = self.logit_scale * 0.0

        # contrastive: each modality encoded alone, only items having both
        z = (
            {m: self.embed_modality(m, *x[m]) for m in MODALITIES}
            if cfg.contrastive_weight or cfg.fusion_weight
            else {}
        )
        contrastive = info_nce(z["image"][both], z["text"][both], scale) if cfg.contrastive_weight else zero

        # masked image-token / word modelling on the joint sequence
        mmm = mlm = acc = None
        n_masked = n_words = 0
        fusion = zero
        if cfg.mmm_weight or cfg.mlm_weight or cfg.fusion_weight:
            if hidden is None:
                hidden = self.sample_hidden(self.maskable(x), active=self.masking_active(x["text"]))
            fuse, tokens = self.encode(x, hidden)
            mmm, n_masked = self._regression(x, tokens, hidden)
            mlm, acc, n_words = self._mlm(x["text"], tokens["text"], hidden["text"])
            # fusion: the fused vector aligned with each modality the item has
            if cfg.fusion_weight:
                mm = F.normalize(self.mm_head(fuse).float(), dim=-1)
                terms = [info_nce(mm[has[m]], z[m][has[m]].float(), scale) for m in MODALITIES if has[m].sum() >= 2]
                fusion = torch.stack(terms).mean() if terms else zero
        mmm = zero if mmm is None else mmm
        mlm = zero if mlm is None else mlm

        total = (
            cfg.contrastive_weight * contrastive
            + cfg.mmm_weight * mmm
            + cfg.mlm_weight * mlm
            + cfg.fusion_weight * fusion
        )
        return {
            "loss": total,
            "contrastive": contrastive.detach(),
            "mmm": mmm.detach(),
            "mlm": mlm.detach(),
            "fusion": fusion.detach(),
            "mlm_acc": (zero if acc is None else acc).detach(),
            "n_pairs": torch.tensor(int(both.sum())),
            "n_masked": torch.tensor(n_masked),
            "n_words": torch.tensor(n_words),
        }
