"""Image files → model-ready tensors, decoded in background threads.

Decoding is the part of image extraction the model does not pay for, so it runs in workers while
the model runs in the main process. JPEGs are decoded with PIL's draft mode, which lets libjpeg
produce a 1/2, 1/4 or 1/8 scale image straight from the DCT coefficients: a 1500 px photo needed
at 256 px decodes several times faster. Draft never goes below the size the transform needs, so
the result is the transform's input at full quality.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
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
        self,
        paths: Sequence[str | Path],
        preprocess: Callable[[Image.Image], torch.Tensor],
        min_side: int | None,
        draft: bool = True,
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
    """Decoded batches in order, prepared `workers` threads ahead of the consumer.

    Threads, not processes: PIL's decoder and resampler release the GIL, so threads decode in
    parallel, and unlike forked DataLoader workers they are safe inside Prefect's and Dask's
    worker threads (a forked worker there dies on the parent's exit hooks).
    """
    files = ImageFiles(paths, preprocess, min_side, draft)
    starts = list(range(0, len(files), batch_size))

    def load(start: int):
        batch = collate([files[i] for i in range(start, min(start + batch_size, len(files)))])
        if pin_memory and batch[1] is not None:
            return batch[0], batch[1].pin_memory(), batch[2]
        return batch

    if workers == 0:
        for start in starts:
            yield load(start)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        ahead: deque = deque(pool.submit(load, s) for s in starts[: 2 * workers])
        for nxt in starts[2 * workers :] + [None] * len(ahead):
            batch = ahead.popleft().result()
            if nxt is not None:
                ahead.append(pool.submit(load, nxt))
            yield batch
