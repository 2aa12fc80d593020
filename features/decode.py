"""Image files → model-ready tensors, in DataLoader worker processes.

Decoding is the part of image extraction the model does not pay for, so it runs in workers while
the model runs in the main process. JPEGs are decoded with PIL's draft mode, which lets libjpeg
produce a 1/2, 1/4 or 1/8 scale image straight from the DCT coefficients: a 1500 px photo needed
at 256 px decodes several times faster. Draft never goes below the size the transform needs, so
the result is the transform's input at full quality.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from PIL import Image

UNDECODABLE = "undecodable image"


def load_image(path: str | Path, min_side: int | None = None, draft: bool = True) -> Image.Image:
    """Open and fully decode an image as RGB; with `draft`, at the smallest JPEG scale whose
    shorter side is still ≥ min_side."""
    with Image.open(path) as img:
        if draft and min_side and img.format == "JPEG":
            img.draft("RGB", (min_side, min_side))
        out = img.convert("RGB")
        out.load()
    return out


class ImageFiles(torch.utils.data.Dataset):
    """Item i → (i, tensor or None, reason or None); a bad file is a reason, never an exception,
    so one broken JPEG cannot kill a million-image run."""

    def __init__(
        self, paths: Sequence[str | Path], preprocess: Callable[[Image.Image], torch.Tensor], min_side: int | None, draft: bool = True
    ) -> None:
        self.paths = [str(p) for p in paths]
        self.preprocess = preprocess
        self.min_side = min_side
        self.draft = draft

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.preprocess(load_image(self.paths[i], self.min_side, self.draft)), None
        except Exception as exc:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, …)
            return i, None, f"{UNDECODABLE}: {type(exc).__name__}: {exc}"


def collate(rows):
    """→ (positions of decoded images, their stacked tensor or None, [(position, reason)])."""
    ok = [(i, x) for i, x, _ in rows if x is not None]
    failed = [(i, reason) for i, x, reason in rows if x is None]
    batch = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], batch, failed


def image_batches(
    paths: Sequence[str | Path],
    preprocess: Callable[[Image.Image], torch.Tensor],
    *,
    min_side: int | None,
    batch_size: int,
    workers: int,
    draft: bool = True,
    pin_memory: bool = False,
) -> Iterator[tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]]:
    """Decoded batches in order, prepared by `workers` processes ahead of the consumer."""
    loader = torch.utils.data.DataLoader(
        ImageFiles(paths, preprocess, min_side, draft),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
    )
    yield from loader
