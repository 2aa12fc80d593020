"""CLIP image and text towers through open_clip.

Weights come from a pretrained tag (downloaded to / read from the Hugging Face cache, e.g.
ViT-B-32 / laion2b_s34b_b79k), a local checkpoint file, or an open_clip 'local-dir:'/'hf-hub:'
name. `require_pretrained=True` is always passed: a CLIP with random weights produces vectors
that look fine and mean nothing, so failing to load is an error that names the model, where we
looked and the offline alternatives.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from features.base import Modality, WeightsUnavailable, autocast, to_numpy


def _hub_cache() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - open_clip depends on huggingface_hub
        return "~/.cache/huggingface/hub"


def _register_config(model: str) -> str:
    """A model given as a path to an open_clip config .json is registered under its file stem."""
    import open_clip

    if model.endswith(".json"):
        path = Path(model).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"open_clip model config {path} does not exist")
        open_clip.add_model_config(path)
        return path.stem
    return model


def load_clip(model: str, pretrained: str | None, device: str):
    """(model, image transform, tokenizer, where the weights came from)."""
    import open_clip

    model_name = _register_config(model)
    if pretrained and _looks_like_path(pretrained):
        if not Path(pretrained).expanduser().is_file():
            raise WeightsUnavailable(model, pretrained, "checkpoint file does not exist")
        pretrained = str(Path(pretrained).expanduser().resolve())
        where = pretrained
    elif model_name.startswith(("hf-hub:", "local-dir:")):
        where = model_name
    else:
        known = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained not in known:
            raise ValueError(
                f"open_clip model {model_name!r} has no pretrained tag {pretrained!r}; "
                f"known tags: {known or 'none'} (or pass a checkpoint path)"
            )
        where = f"open_clip tag {pretrained!r} via the Hugging Face hub (cache {_hub_cache()})"
    try:
        net, _, transform = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, device=device, require_pretrained=True
        )
    except (RuntimeError, OSError, FileNotFoundError) as exc:
        raise WeightsUnavailable(f"{model_name}:{pretrained}" if pretrained else model_name, where, exc) from exc
    tokenizer = open_clip.get_tokenizer(model_name)
    return net.eval(), transform, tokenizer, where


def _looks_like_path(pretrained: str) -> bool:
    return os.path.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))


class _ClipBase:
    def __init__(self, model: str, pretrained: str | None, *, device: str, name: str, spec: str) -> None:
        self.net, self.preprocess, self.tokenizer, self.weights = load_clip(model, pretrained, device)
        self.model = f"{model}:{pretrained}" if pretrained and not _looks_like_path(pretrained) else model
        self.device = device
        self.name = name
        self.spec = spec
        self.dim = self._probe_dim()
        size = getattr(self.net.visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.decode_size = self.image_size  # open_clip resizes the shorter side to image_size

    def _probe_dim(self) -> int:
        """The joint embedding width, read off one forward pass (configs name it differently)."""
        with torch.inference_mode():
            return int(self.net.encode_text(self.tokenizer(["a"]).to(self.device)).shape[-1])


class ClipImageEncoder(_ClipBase):
    """Unit-norm CLIP image embeddings; `preprocess` is open_clip's own eval transform."""

    modality: Modality = "image"

    def encode(self, batch: torch.Tensor) -> np.ndarray:
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode(), autocast(self.device):
            out = self.net.encode_image(batch.to(self.device, non_blocking=True), normalize=True)
        return to_numpy(out)

    def encode_image_tokens(self, batch: torch.Tensor, grid: int = 4) -> np.ndarray:
        """(n, grid², dim) float32: the ViT's patch tokens (after ln_post, through the same
        projection as the pooled embedding, not normalized), average-pooled to grid × grid."""
        return self.encode_with_tokens(batch, grid)[1]

    def encode_with_tokens(self, batch: torch.Tensor, grid: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """(`encode`'s unit-norm embeddings, `encode_image_tokens`' tokens) from one pass of the
        ViT: with output_tokens on, the tower returns its pooled output beside the patch tokens."""
        visual = self.net.visual
        if not hasattr(visual, "output_tokens") or not hasattr(visual, "grid_size"):
            raise ValueError(f"CLIP model {self.model!r} has no ViT image tower: patch tokens need a ViT model")
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32), np.zeros((0, grid * grid, self.dim), dtype=np.float32)
        before = visual.output_tokens
        visual.output_tokens = True
        try:
            with torch.inference_mode(), autocast(self.device):
                embedding, tokens = visual(batch.to(self.device, non_blocking=True))
                embedding = torch.nn.functional.normalize(embedding, dim=-1)  # what encode_image(normalize=True) does
                if visual.proj is not None:
                    tokens = tokens @ visual.proj
                gh, gw = visual.grid_size
                fmap = tokens.transpose(1, 2).reshape(len(tokens), -1, gh, gw)
                pooled = torch.nn.functional.adaptive_avg_pool2d(fmap.float(), grid)
        finally:
            visual.output_tokens = before
        return to_numpy(embedding), to_numpy(pooled.flatten(2).transpose(1, 2))


class ClipTextEncoder(_ClipBase):
    """Unit-norm CLIP text embeddings (the tokenizer truncates to the model's context length)."""

    modality: Modality = "text"

    def encode(self, batch: list[str]) -> np.ndarray:
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokens = self.tokenizer(list(batch)).to(self.device)
        with torch.inference_mode(), autocast(self.device):
            out = self.net.encode_text(tokens, normalize=True)
        return to_numpy(out)
