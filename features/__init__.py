"""features room (see ARCHITECTURE.md): encoders and batched extraction into feature tables.

    from features import extract, get_encoder
    extract(paths, "minilm")                 # → features/text-minilm.parquet
    extract(paths, "efficientnet-lite0")     # → features/image-effnet.parquet

`extract` is imported on first use so that parsing specs does not pay for importing torch.
"""
from features.base import (
    Encoder,
    EncoderSpec,
    WeightsUnavailable,
    default_feature_name,
    get_encoder,
    parse_spec,
)

__all__ = [
    "Encoder",
    "EncoderSpec",
    "WeightsUnavailable",
    "default_feature_name",
    "extract",
    "get_encoder",
    "parse_spec",
]


def __getattr__(name: str):
    if name == "extract":
        from features.extract import extract

        return extract
    raise AttributeError(f"module 'features' has no attribute {name!r}")
