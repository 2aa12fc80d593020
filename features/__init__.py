"""features room (see ARCHITECTURE.md): encoders and batched extraction into feature tables.

    from features.extract import extract
    extract(paths, "minilm")                 # → features/text-minilm.parquet
    extract(paths, "efficientnet-lite0")     # → features/image-effnet.parquet

Only the light spec/interface names are re-exported here, so parsing a spec does not import torch.
"""

from features.base import (
    Encoder,
    EncoderSpec,
    WeightsUnavailable,
    default_feature_name,
    parse_spec,
)
from features.registry import get_encoder

__all__ = ["Encoder", "EncoderSpec", "WeightsUnavailable", "default_feature_name", "get_encoder", "parse_spec"]
