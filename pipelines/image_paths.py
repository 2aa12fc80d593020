"""Local image files named by a catalog, recorded relative to the dataset directory.

items.parquet must not name the machine (ARCHITECTURE.md, "A store people operate"): a home that
is copied, moved or built at another path has to give the same bytes and the same cache keys. A
URL names no machine and stays as it is. A local image is recorded as a path relative to the
dataset directory: one already inside it (the generated demo's raw/images/<asin>.jpg, relative
paths in a metadata file in raw/) as it is, one elsewhere (a CSV catalog's image_path) copied into
raw/images/ first, the way a download lands in raw/. The image fetcher resolves these paths
against the dataset directory (pipelines.images).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Iterable

from pipelines.records import Product
from pipelines.sources import is_local, local_path
from store.hashing import file_sha256
from store.layout import DatasetPaths
from store.tables import temp_beside

log = logging.getLogger(__name__)

IMAGES = "images"  # raw/images/: local images copied in, as downloads land in raw/


def rebase_images(products: Iterable[Product], paths: DatasetPaths) -> None:
    """Make each product's local image_url dataset-relative, in place (a relative one is relative to
    raw/, where the metadata file was fetched); URLs and items without an image are left alone.
    Called on the items that survive k-core only, so no removed item's image is copied."""
    missing: list[str] = []
    for p in products:
        if p.image_url and p.image_url.strip() and is_local(p.image_url.strip()):
            given = p.image_url.strip()
            p.image_url, found = recorded_image(p.asin, given, paths)
            if not found:
                missing.append(given)
    if missing:  # said here, where the user's own path may be shown; the audit lists each item
        log.warning(
            "%s: %d local image path(s) name no file (e.g. %s); images/audit.parquet will list them",
            paths.name,
            len(missing),
            missing[0],
        )


def recorded_image(asin: str, value: str, paths: DatasetPaths) -> tuple[str, bool]:
    """(the dataset-relative path items.parquet records for a local image, whether the file exists)."""
    src = local_path(value)
    src = src if src.is_absolute() else paths.raw_dir / src
    try:
        return paths.relative(src), src.is_file()
    except ValueError:  # outside the dataset: copied into raw/images/<asin><suffix>
        pass
    dest = paths.raw_dir / IMAGES / f"{asin}{src.suffix.lower() or '.jpg'}"
    if not src.is_file():
        return paths.relative(dest), False
    _copy_if_changed(src, dest)
    return paths.relative(dest), True


def _copy_if_changed(src: Path, dest: Path) -> None:
    """dest becomes a copy of src (atomically); an identical copy is left alone."""
    if dest.is_file() and dest.stat().st_size == src.stat().st_size and file_sha256(dest) == file_sha256(src):
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(dest)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
