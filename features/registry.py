"""Encoder spec → a loaded encoder: the one place that knows every encoder class.

Kept apart from features.base, which the encoders themselves import (protocols, spec parsing,
helpers), so no encoder module imports this one back: the import graph has no circle.
"""

from __future__ import annotations

from features.base import Encoder, parse_spec, pick_device


def get_encoder(spec: str, device: str | None = None) -> Encoder:
    """Load the encoder a spec names, on `device` (default: CUDA when present)."""
    parsed = parse_spec(spec)
    device = pick_device(device)
    if parsed.kind == "bert":
        from features.text import BertEncoder

        return BertEncoder(parsed.model, device=device, name=parsed.default_name, spec=parsed.text)
    if parsed.kind == "efficientnet-lite0":
        from features.efficientnet import EfficientNetLite0Encoder

        return EfficientNetLite0Encoder(device=device, name=parsed.default_name, spec=parsed.text)
    from features.clip import ClipImageEncoder, ClipTextEncoder

    cls = ClipImageEncoder if parsed.kind == "clip-image" else ClipTextEncoder
    return cls(parsed.model, parsed.pretrained, device=device, name=parsed.default_name, spec=parsed.text)
