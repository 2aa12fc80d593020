"""Real data: MiniLM text and EfficientNet image vectors for Amazon 2018 gift cards (real photos)."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from features.extract import extract
from store import schemas
from store.hashing import file_sha256
from store.layout import dataset_paths
from store.tables import write_table
from store.vectors import read_features

pytestmark = pytest.mark.integration

N_WITH_IMAGE = 16
N_WITHOUT_IMAGE = 4


@pytest.fixture(scope="module")
def giftcards(shared_data, tmp_path_factory):
    """A small items.parquet built from the real meta file; the photos copied into images/."""
    src = shared_data / "amazon2018-giftcards"
    photos = {p.stem for p in (src / "images").glob("*.jpg")}
    rows, with_image, without_image = [], 0, 0
    with gzip.open(src / "meta_Gift_Cards.json.gz", "rt") as fh:
        for line in fh:
            d = json.loads(line)
            has = d["asin"] in photos
            if (has and with_image < N_WITH_IMAGE) or (not has and without_image < N_WITHOUT_IMAGE):
                with_image += has
                without_image += not has
                rows.append(d)
            if with_image == N_WITH_IMAGE and without_image == N_WITHOUT_IMAGE:
                break
    paths = dataset_paths("giftcards", home=tmp_path_factory.mktemp("home"))
    paths.images_dir.mkdir(parents=True)
    for d in rows:
        if d["asin"] in photos:
            shutil.copy(src / "images" / f"{d['asin']}.jpg", paths.image(d["asin"]))
    n = len(rows)
    texts = [
        " ".join([d.get("title") or "", d.get("brand") or "", " ".join(d.get("description") or [])]).strip()
        for d in rows
    ]
    items = pa.table(
        {
            "item_id": pa.array(range(n), pa.int32()),
            "asin": [d["asin"] for d in rows],
            "title": [d.get("title") for d in rows],
            "description": [" ".join(d.get("description") or []) or None for d in rows],
            "brand": [d.get("brand") or None for d in rows],
            "categories": pa.array([d.get("category") or [] for d in rows], pa.list_(pa.string())),
            "image_url": [(d.get("imageURLHighRes") or [None])[0] for d in rows],
            "text": texts,
        }
    )
    write_table(items, paths.items, schemas.ITEMS)
    return paths, rows, texts, photos


def test_giftcards_text_and_image_features_end_to_end(giftcards):
    paths, rows, texts, photos = giftcards
    asins = [d["asin"] for d in rows]

    text = extract(paths, "minilm", device="cpu", batch_size=16, progress=False)
    image = extract(paths, "efficientnet-lite0", device="cpu", batch_size=8, workers=2, progress=False)
    assert paths.feature_names() == ["image-effnet", "text-minilm"]

    t = read_features(paths.feature("text-minilm"))
    assert t.asins == asins and t.valid.all() and text["n_vectors"] == len(rows)
    assert np.isfinite(t.vectors).all()
    np.testing.assert_allclose(np.linalg.norm(t.vectors, axis=1), 1.0, atol=1e-5)
    # different product texts → different vectors
    distinct_texts = len(set(texts))
    assert len({v.tobytes() for v in t.vectors}) == distinct_texts

    im = read_features(paths.feature("image-effnet"))
    assert im.asins == asins
    has_photo = np.array([a in photos for a in asins])
    assert im.valid.tolist() == has_photo.tolist()
    assert image["n_vectors"] == N_WITH_IMAGE and image["reasons"] == {"no image": N_WITHOUT_IMAGE}
    assert all(r == "no image" for r, ok in zip(im.reasons, im.valid) if not ok)
    photo_vectors = im.vectors[im.valid]
    assert np.isfinite(photo_vectors).all() and (np.linalg.norm(photo_vectors, axis=1) > 1.0).all()
    # distinct photo files → distinct vectors; identical files → identical vectors
    file_hash = [file_sha256(paths.image(a)) for a in np.array(asins)[has_photo]]
    for i in range(len(file_hash)):
        for j in range(i + 1, len(file_hash)):
            same = np.allclose(photo_vectors[i], photo_vectors[j], atol=1e-4)
            assert same == (file_hash[i] == file_hash[j]), (i, j)
    assert len(set(file_hash)) > N_WITH_IMAGE // 2


def test_effnet_preprocessing_matches_the_weights_training_statistics(giftcards):
    """The stem BatchNorm's running statistics record what the network saw in training; our
    preprocessing of real photos must land near them (the torchvision ImageNet mean/std would
    give ~5x the variance: the packaged weights come from TF-lite, trained on (x-127)/128)."""
    from features.decode import load_image
    from features.registry import get_encoder

    paths, rows, _, photos = giftcards
    enc = get_encoder("efficientnet-lite0", device="cpu")
    files = [paths.image(d["asin"]) for d in rows if d["asin"] in photos]
    x = torch.stack([enc.preprocess(load_image(f, enc.decode_size)) for f in files])
    with torch.inference_mode():
        y = enc.net._conv_stem(x)
    bn = enc.net._bn0
    live = bn.running_var > 1e-6
    var_ratio = (y.var(dim=(0, 2, 3)) / bn.running_var)[live]
    assert 0.5 < float(var_ratio.median()) < 2.5
    mean_err = ((y.mean(dim=(0, 2, 3)) - bn.running_mean) ** 2 / bn.running_var)[live].mean()
    assert float(mean_err) < 0.5


def test_draft_mode_decodes_large_jpegs_smaller_but_never_below_need(giftcards, tmp_path):
    paths, rows, _, photos = giftcards
    src = next(paths.image(d["asin"]) for d in rows if d["asin"] in photos)
    big = tmp_path / "big.jpg"
    Image.open(src).convert("RGB").resize((1600, 1200)).save(big, quality=90)
    from features.decode import load_image as load

    assert load(big, 256, draft=False).size == (1600, 1200)
    drafted = load(big, 256)
    assert drafted.size == (400, 300)  # 1/4 scale: the shorter side 300 ≥ 256, 1/8 would be 150
    assert min(load(src, 256).size) >= min(256, min(Image.open(src).size))
