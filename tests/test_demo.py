"""The generated demo catalog: deterministic, Amazon-2018 shaped, real JPEGs, content that predicts."""

from __future__ import annotations

import gzip
import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.demo import (
    CATEGORIES,
    DEMO_CATEGORY,
    IMAGES_DIR,
    META_FILE,
    REVIEWS_FILE,
    DemoConfig,
    build_catalog,
    generate_demo,
)
from pipelines.demo_draw import BACKGROUNDS, COLOURS, SHAPES, Drawing, draw

SMALL = dict(n_items=80, n_users=120)

META_KEYS = {
    "category",
    "tech1",
    "description",
    "fit",
    "title",
    "also_buy",
    "tech2",
    "brand",
    "feature",
    "rank",
    "also_view",
    "details",
    "main_cat",
    "similar_item",
    "date",
    "price",
    "asin",
    "imageURL",
    "imageURLHighRes",
}
REVIEW_KEYS = {
    "overall",
    "verified",
    "reviewTime",
    "reviewerID",
    "asin",
    "reviewerName",
    "reviewText",
    "summary",
    "unixReviewTime",
}


def _lines(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    raw = tmp_path_factory.mktemp("demo") / "raw"
    t0 = time.perf_counter()
    summary = generate_demo(raw, progress=False)
    summary["seconds"] = time.perf_counter() - t0
    return raw, summary


def _file_bytes(raw: Path) -> dict[str, bytes]:
    return {p.relative_to(raw).as_posix(): p.read_bytes() for p in sorted(raw.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = generate_demo(tmp_path / "a", seed=3, progress=False, **SMALL)
    b = generate_demo(tmp_path / "b", seed=3, progress=False, **SMALL)
    assert a["sha256"][REVIEWS_FILE] == b["sha256"][REVIEWS_FILE]
    files_a, files_b = _file_bytes(tmp_path / "a"), _file_bytes(tmp_path / "b")
    assert files_a.keys() == files_b.keys()
    assert len([k for k in files_a if k.endswith(".jpg")]) == a["n_images"] > 60
    assert files_a == files_b  # the gzipped meta too: its image paths are relative, so no root in it
    # Regenerating in place rewrites nothing and gives the same hashes.
    again = generate_demo(tmp_path / "a", seed=3, progress=False, **SMALL)
    assert again["n_images_written"] == 0
    assert again["sha256"] == a["sha256"]
    other = generate_demo(tmp_path / "c", seed=4, progress=False, **SMALL)
    assert other["sha256"][REVIEWS_FILE] != a["sha256"][REVIEWS_FILE]


def test_more_users_do_not_change_items() -> None:
    a = build_catalog(DemoConfig(seed=1, **SMALL))
    b = build_catalog(DemoConfig(seed=1, n_items=80, n_users=200))
    assert np.array_equal(a.shape, b.shape) and np.array_equal(a.colour, b.colour)
    assert np.array_equal(a.item_factors, b.item_factors)


def test_files_have_amazon_2018_format(demo: tuple[Path, dict]) -> None:
    raw, summary = demo
    meta, reviews = _lines(raw / META_FILE), _lines(raw / REVIEWS_FILE)
    assert len(meta) == summary["n_items"] == 300
    assert len(reviews) == summary["n_interactions"]
    for m in meta:
        assert set(m) == META_KEYS
        assert re.fullmatch(r"D\d{9}", m["asin"])
        assert isinstance(m["description"], list) and all(isinstance(d, str) for d in m["description"])
        assert m["category"][0] == DEMO_CATEGORY and m["category"][-1] in {c[1] for c in CATEGORIES}
        assert m["imageURL"] == m["imageURLHighRes"]
        for url in m["imageURL"]:
            assert url == f"images/{m['asin']}.jpg" and (raw / url).is_file()  # relative: no machine path
    # The quirks real files have, so the parser and cleaner are exercised.
    assert sum(m["brand"] == "" for m in meta) == summary["items_without_brand"] > 0
    assert sum(m["imageURL"] == [] for m in meta) == summary["items_without_image"] > 0
    assert any(m["description"] == [] for m in meta)
    assert any("<b>" in d or "&amp;" in d for m in meta for d in m["description"])
    assert any(len(set(m["category"])) < len(m["category"]) for m in meta)
    asins = {m["asin"] for m in meta}
    assert all(a in asins for m in meta for a in m["also_buy"])
    for r in reviews:
        assert set(r) == REVIEW_KEYS
        assert r["asin"] in asins and r["overall"] in {1.0, 2.0, 3.0, 4.0, 5.0}
        assert re.fullmatch(r"A[A-Z0-9]{13}", r["reviewerID"])
        day = datetime.fromtimestamp(r["unixReviewTime"], tz=timezone.utc)
        assert r["reviewTime"] == day.strftime("%m %d, %Y")
    stars = np.bincount([int(r["overall"]) for r in reviews], minlength=6)[1:]
    assert stars.argmax() >= 3 and (stars > 0).all()  # skewed high, every value used


def test_same_fields_as_real_2018_files(demo: tuple[Path, dict], shared_data: Path) -> None:
    real = shared_data / "amazon2018-giftcards"
    with gzip.open(real / "meta_Gift_Cards.json.gz", "rt") as fh:
        real_meta = json.loads(fh.readline())
    with gzip.open(real / "Gift_Cards_5.json.gz", "rt") as fh:
        real_review = json.loads(fh.readline())
    raw, _ = demo
    assert set(_lines(raw / META_FILE)[0]) == set(real_meta)
    review = _lines(raw / REVIEWS_FILE)[0]
    assert set(review) <= set(real_review) | {"style"} and set(review) >= {
        "reviewerID",
        "asin",
        "overall",
        "unixReviewTime",
    }
    for key in review:
        assert type(review[key]) is type(real_review[key]), key


def test_every_user_and_item_has_five_interactions(demo: tuple[Path, dict]) -> None:
    raw, summary = demo
    reviews = _lines(raw / REVIEWS_FILE)
    pairs = {(r["reviewerID"], r["asin"]) for r in reviews}
    assert len(pairs) == len(reviews)  # no duplicate reviews: the ingest's k-core keeps everything
    users = np.unique([r["reviewerID"] for r in reviews], return_counts=True)[1]
    items = np.unique([r["asin"] for r in reviews], return_counts=True)[1]
    assert len(users) == summary["n_users"] == 400 and users.min() >= 5
    assert len(items) == summary["n_items"] and items.min() >= 5


def _dominant_rgb(img: Image.Image) -> np.ndarray:
    """Mean colour of the clearly non-background, non-text pixels of the upper picture."""
    a = np.asarray(img.convert("RGB"), dtype=np.float32)[: int(img.height * 0.75)]
    px = a.reshape(-1, 3)
    sat = px.max(axis=1) - px.min(axis=1)
    return px[sat > 60].mean(axis=0)


def test_images_are_real_jpegs_showing_the_attributes(demo: tuple[Path, dict]) -> None:
    raw, _ = demo
    meta = _lines(raw / META_FILE)
    palette = np.array(list(COLOURS.values()), dtype=np.float32)
    names = list(COLOURS)
    checked = 0
    for m in meta:
        if not m["imageURL"]:
            assert not (raw / IMAGES_DIR / f"{m['asin']}.jpg").exists()
            continue
        path = raw / IMAGES_DIR / f"{m['asin']}.jpg"
        assert path.read_bytes()[:3] == b"\xff\xd8\xff"
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.mode == "RGB" and 224 <= img.width <= 320
            rgb = _dominant_rgb(img)
        nearest = names[int(np.argmin(((palette - rgb) ** 2).sum(axis=1)))]
        assert nearest in m["title"].lower().split(), (m["asin"], m["title"], rgb)
        checked += 1
    assert checked > 250


def test_drawings_differ_by_shape_and_colour() -> None:
    base = np.asarray(draw(Drawing("circle", "red", "Lumio")), dtype=np.int16)
    for other in (
        Drawing("square", "red", "Lumio"),
        Drawing("circle", "blue", "Lumio"),
        Drawing("circle", "red", "Vanta"),
    ):
        diff = np.abs(np.asarray(draw(other), dtype=np.int16) - base).sum(axis=2) > 30
        assert diff.mean() > 0.005, other
    # Shape area ranks as geometry says: a ring covers less than a disc of the same radius.
    cover = {s: (np.asarray(draw(Drawing(s, "blue", "")), dtype=np.int16).sum(axis=2) < 500).mean() for s in SHAPES}
    assert cover["ring"] < cover["circle"] and cover["star"] < cover["hexagon"]
    assert len({round(c, 3) for c in cover.values()}) == len(SHAPES)


def test_drawing_config_is_validated() -> None:
    with pytest.raises(ValueError, match="shape"):
        Drawing("blob", "red", "x")
    with pytest.raises(ValueError, match="colour"):
        Drawing("circle", "teal", "x")
    with pytest.raises(ValueError, match="background"):
        Drawing("circle", "red", "x", background=len(BACKGROUNDS))
    with pytest.raises(ValueError, match="n_items"):
        DemoConfig(n_items=3)
    with pytest.raises(ValueError, match="missing_image_rate"):
        DemoConfig(missing_image_rate=1.5)


def _recall_at_20(scores_fn, user_items: list[np.ndarray], n_items: int, seed: int = 0) -> tuple[float, float]:
    """Hold out 20% of each user's items; Recall@20 of `scores_fn(train_items)` and of random."""
    rng = np.random.default_rng(seed)
    hits, rand = [], []
    for items in user_items:
        items = rng.permutation(items)
        n_test = max(1, len(items) // 5)
        test, train = items[:n_test], items[n_test:]
        s = scores_fn(train).astype(np.float64)
        s[train] = -np.inf
        top = np.argpartition(-s, 20)[:20]
        hits.append(np.isin(test, top).mean())
        rand.append(20 / (n_items - len(train)))
    return float(np.mean(hits)), float(np.mean(rand))


def _users(reviews: list[dict], index: dict[str, int]) -> list[np.ndarray]:
    by_user: dict[str, list[int]] = {}
    for r in reviews:
        by_user.setdefault(r["reviewerID"], []).append(index[r["asin"]])
    return [np.array(v) for v in by_user.values()]


def test_text_alone_predicts_held_out_interactions(demo: tuple[Path, dict]) -> None:
    """Bag of words of title + categories + brand, profile = mean of the user's training items."""
    raw, _ = demo
    meta, reviews = _lines(raw / META_FILE), _lines(raw / REVIEWS_FILE)
    index = {m["asin"]: i for i, m in enumerate(meta)}
    vocab: dict[str, int] = {}
    rows = []
    for m in meta:
        words = set(re.findall(r"[a-z]+", " ".join([m["title"], m["brand"], *m["category"][1:]]).lower()))
        rows.append([vocab.setdefault(w, len(vocab)) for w in words])
    x = np.zeros((len(meta), len(vocab)))
    for i, cols in enumerate(rows):
        x[i, cols] = 1.0
    x *= np.log(len(meta) / x.sum(axis=0))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    users = _users(reviews, index)
    content, random = _recall_at_20(lambda tr: x @ x[tr].mean(axis=0), users, len(meta))
    counts = np.bincount(np.concatenate(users), minlength=len(meta)).astype(float)
    popular, _ = _recall_at_20(lambda tr: counts.copy(), users, len(meta))
    assert random == pytest.approx(0.069, abs=0.01)
    assert content > 4 * random, (content, random)
    assert content > popular + 0.05, (content, popular)


def test_images_alone_predict_held_out_interactions(demo: tuple[Path, dict]) -> None:
    """A 4×4×4 colour histogram plus a coarse silhouette of each image, nothing else."""
    raw, _ = demo
    meta, reviews = _lines(raw / META_FILE), _lines(raw / REVIEWS_FILE)
    index = {m["asin"]: i for i, m in enumerate(meta)}
    feats = np.zeros((len(meta), 64 + 64))
    for i, m in enumerate(meta):
        path = raw / IMAGES_DIR / f"{m['asin']}.jpg"
        if not path.exists():
            continue
        with Image.open(path) as img:
            a = np.asarray(img.convert("RGB").resize((64, 64)), dtype=np.int32)[:48]
        mask = (a.max(axis=2) - a.min(axis=2)) > 60
        bins = (a[mask] // 64) @ np.array([16, 4, 1])
        feats[i, :64] = np.bincount(bins, minlength=64) / max(1, mask.sum())
        silhouette = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((8, 8)), dtype=float) / 255
        feats[i, 64:] = 0.5 * silhouette.reshape(-1)
    norm = np.linalg.norm(feats, axis=1, keepdims=True)
    feats = np.divide(feats, norm, out=np.zeros_like(feats), where=norm > 0)
    image, random = _recall_at_20(lambda tr: feats @ feats[tr].mean(axis=0), _users(reviews, index), len(meta))
    assert image > 3 * random, (image, random)


def test_defaults_are_fast(demo: tuple[Path, dict]) -> None:
    _, summary = demo
    assert summary["seconds"] < 10, summary["seconds"]
