"""The generated demo catalog: a few hundred products in Amazon 2018 file format, made offline.

The main job must run end to end on a fresh machine with no network, and its numbers must mean
something: so the demo is not noise. Every item has a latent factor; its text attributes
(category, adjectives, brand) and its visual attributes (shape, colour) are read off that factor,
and users pick items by their affinity with the same latent space. Content therefore really
predicts interactions, images and text agree with each other, and a multimodal model has
something to find. The files are exactly what Amazon 2018 serves (`meta_<Cat>.json.gz`,
`<Cat>_5.json.gz`), so the demo goes through the same parser, k-core, split and image fetcher as
real data. Everything is deterministic for a seed: same seed, same bytes.
"""

from __future__ import annotations

import gzip
import io
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipelines.demo_draw import BACKGROUNDS, COLOURS, SHAPES, Drawing, jpeg_bytes
from store.hashing import file_sha256
from store.tables import atomic_path

DEMO_CATEGORY = "Demo"
META_FILE = f"meta_{DEMO_CATEGORY}.json.gz"
REVIEWS_FILE = f"{DEMO_CATEGORY}_5.json.gz"
IMAGES_DIR = "images"

# (top-level group, leaf category, the noun a title uses)
CATEGORIES = (
    ("Toys & Games", "Puzzles", "Puzzle"),
    ("Toys & Games", "Building Blocks", "Block Set"),
    ("Home & Kitchen", "Mugs", "Mug"),
    ("Home & Kitchen", "Cushions", "Cushion"),
    ("Sports & Outdoors", "Balls", "Ball"),
    ("Sports & Outdoors", "Water Bottles", "Water Bottle"),
    ("Office Products", "Notebooks", "Notebook"),
    ("Office Products", "Stickers", "Sticker Pack"),
)
BRANDS = ("Lumio", "Brightway", "Kestrel", "Nordhaus", "Pipkin", "Solace", "Trailmark", "Vanta", "Wrenly", "Zephyra")
ADJECTIVES = (
    "cozy",
    "sturdy",
    "playful",
    "elegant",
    "rugged",
    "minimal",
    "vintage",
    "bold",
    "soft",
    "sleek",
    "classic",
    "quirky",
    "compact",
    "deluxe",
    "bright",
    "calm",
)
FIRST_NAMES = (
    "Alex",
    "Sam",
    "Jordan",
    "Taylor",
    "Morgan",
    "Casey",
    "Riley",
    "Jamie",
    "Robin",
    "Avery",
    "Quinn",
    "Dana",
)
SUMMARIES = {
    5: ("Five Stars", "Love it", "Exactly what I wanted"),
    4: ("Four Stars", "Very nice", "Good value"),
    3: ("Three Stars", "It's okay", "Average"),
    2: ("Two Stars", "Disappointed", "Not for me"),
    1: ("One Star", "Returned it", "Poor quality"),
}
OPINIONS = {
    5: "Absolutely love the {adj} look, would buy again.",
    4: "Nice {adj} {noun}, does the job well.",
    3: "The {noun} is fine, nothing special.",
    2: "Expected more from a {adj} {noun}.",
    1: "Did not like this {noun} at all.",
}

_EPOCH_START = int(datetime(2016, 1, 1, tzinfo=timezone.utc).timestamp())
_DAY = 86_400


@dataclass(frozen=True)
class DemoConfig:
    """How the catalog is generated; defaults give a few hundred items that load in seconds.

    `affinity_weight` and `popularity_weight` set how much users follow their taste versus what
    is popular; `latent_noise` is how far items stray from their topic (more noise, weaker
    content signal).
    """

    n_items: int = 300
    n_users: int = 400
    seed: int = 0
    latent_dim: int = 8
    n_topics: int = 8
    latent_noise: float = 0.6
    affinity_weight: float = 3.0
    popularity_weight: float = 0.8
    min_interactions: int = 5
    mean_extra_interactions: float = 7.0
    missing_image_rate: float = 0.04
    missing_brand_rate: float = 0.1
    image_size: int = 256

    def __post_init__(self) -> None:
        if self.n_items < 20:
            raise ValueError(f"n_items must be >= 20, got {self.n_items}")
        if self.n_users < self.min_interactions:
            raise ValueError(f"n_users must be >= min_interactions ({self.min_interactions}), got {self.n_users}")
        if not 1 <= self.min_interactions <= self.n_items // 4:
            raise ValueError(f"min_interactions must be in 1..n_items/4, got {self.min_interactions}")
        if self.latent_dim < 2 or self.n_topics < 2:
            raise ValueError("latent_dim and n_topics must be >= 2")
        if self.latent_noise < 0 or self.affinity_weight < 0 or self.popularity_weight < 0:
            raise ValueError("latent_noise, affinity_weight and popularity_weight must be >= 0")
        if self.mean_extra_interactions < 0:
            raise ValueError(f"mean_extra_interactions must be >= 0, got {self.mean_extra_interactions}")
        for name in ("missing_image_rate", "missing_brand_rate"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 64 <= self.image_size <= 1024:
            raise ValueError(f"image_size must be in 64..1024, got {self.image_size}")


@dataclass
class DemoCatalog:
    """The generated world in memory: latent factors, attributes and interactions.

    Attribute arrays hold indices into SHAPES / COLOURS / CATEGORIES / BRANDS / ADJECTIVES;
    `brand` is -1 for items sold without a brand. Interactions are parallel arrays.
    """

    config: DemoConfig
    asins: list[str]
    item_factors: np.ndarray
    topic: np.ndarray
    shape: np.ndarray
    colour: np.ndarray
    category: np.ndarray
    brand: np.ndarray
    adjectives: np.ndarray
    has_image: np.ndarray
    popularity: np.ndarray
    reviewer_ids: list[str]
    user_factors: np.ndarray
    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray

    @property
    def n_interactions(self) -> int:
        return int(len(self.user))

    def attribute_matrix(self) -> np.ndarray:
        """One-hot item attributes (shape, colour, category, brand, adjectives): what content shows."""
        blocks = [
            np.eye(len(SHAPES))[self.shape],
            np.eye(len(COLOURS))[self.colour],
            np.eye(len(CATEGORIES))[self.category],
            np.eye(len(BRANDS) + 1)[self.brand + 1][:, 1:],
            np.eye(len(ADJECTIVES))[self.adjectives].sum(axis=1),
        ]
        return np.concatenate(blocks, axis=1).astype(np.float32)


_STREAMS = ("world", "items", "users", "interactions", "meta", "reviews", "drawings")


def _streams(seed: int) -> dict[str, np.random.Generator]:
    """Independent streams, so changing n_users never changes the items (and vice versa)."""
    seqs = np.random.SeedSequence(seed).spawn(len(_STREAMS))
    return {name: np.random.default_rng(s) for name, s in zip(_STREAMS, seqs)}


def _argmax_attr(prototypes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """The attribute whose prototype the factor leans to most, relative to the catalog's spread.

    Standardizing each prototype's scores first keeps every value in use (raw argmax lets a
    few prototypes take most items).
    """
    scores = factors @ prototypes.T
    scores = (scores - scores.mean(axis=0)) / (scores.std(axis=0) + 1e-9)
    return np.argmax(scores, axis=1)


def _reviewer_id(rng: np.random.Generator) -> str:
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    return "A" + "".join(rng.choice(alphabet, size=13))


def build_catalog(config: DemoConfig) -> DemoCatalog:
    """Sample the latent world and the interactions (no files)."""
    rngs = _streams(config.seed)
    world, items_rng, users_rng, inter_rng = (rngs[k] for k in ("world", "items", "users", "interactions"))
    d, t = config.latent_dim, config.n_topics
    centers = world.normal(size=(t, d))
    protos = {
        name: world.normal(size=(n, d))
        for name, n in (
            ("shape", len(SHAPES)),
            ("colour", len(COLOURS)),
            ("category", len(CATEGORIES)),
            ("brand", len(BRANDS)),
            ("adjective", len(ADJECTIVES)),
        )
    }

    n = config.n_items
    topic = items_rng.integers(0, t, size=n)
    z = centers[topic] + config.latent_noise * items_rng.normal(size=(n, d))
    adj_scores = z @ protos["adjective"].T
    adj_scores = (adj_scores - adj_scores.mean(axis=0)) / (adj_scores.std(axis=0) + 1e-9)
    adjectives = np.argsort(-adj_scores, axis=1)[:, :2]
    brand = _argmax_attr(protos["brand"], z)
    brand[items_rng.random(n) < config.missing_brand_rate] = -1
    has_image = items_rng.random(n) >= config.missing_image_rate
    log_pop = items_rng.normal(scale=0.7, size=n)

    m = config.n_users
    reviewer_ids: list[str] = []
    seen: set[str] = set()
    while len(reviewer_ids) < m:
        rid = _reviewer_id(users_rng)
        if rid not in seen:
            seen.add(rid)
            reviewer_ids.append(rid)
    # A user's taste: a mix of one or two topics, plus a personal direction.
    fav = users_rng.integers(0, t, size=(m, 2))
    mix = users_rng.dirichlet([1.0, 1.0], size=m)
    mix[users_rng.random(m) < 0.5] = [1.0, 0.0]
    u = mix[:, :1] * centers[fav[:, 0]] + mix[:, 1:] * centers[fav[:, 1]]
    u = u + 0.4 * users_rng.normal(size=(m, d))

    user, item, affinity = _sample_interactions(config, u, z, log_pop, inter_rng)
    # Ratings skew high as Amazon's do; liked-more items get more stars.
    centred = affinity - affinity.mean()
    rating = np.clip(np.rint(4.1 + 1.0 * centred + 0.9 * inter_rng.normal(size=len(user))), 1, 5)
    timestamp = _timestamps(user, m, inter_rng)
    return DemoCatalog(
        config=config,
        asins=[f"D{i + 1:09d}" for i in range(n)],
        item_factors=z.astype(np.float32),
        topic=topic,
        shape=_argmax_attr(protos["shape"], z),
        colour=_argmax_attr(protos["colour"], z),
        category=_argmax_attr(protos["category"], z),
        brand=brand,
        adjectives=adjectives,
        has_image=has_image,
        popularity=np.exp(log_pop),
        reviewer_ids=reviewer_ids,
        user_factors=u.astype(np.float32),
        user=user,
        item=item,
        rating=rating.astype(np.float32),
        timestamp=timestamp,
    )


def _sample_interactions(
    config: DemoConfig, u: np.ndarray, z: np.ndarray, log_pop: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each user draws items without replacement, P ∝ exp(β·affinity + γ·log popularity).

    Gumbel top-k gives the without-replacement draw in one vectorized pass. Items left with fewer
    than `min_interactions` then get the users who like them most, so the data is already a
    5-core and the ingest's k-core keeps it whole.
    """
    m, n = u.shape[0], z.shape[0]
    aff = u @ z.T / math.sqrt(u.shape[1])
    aff = (aff - aff.mean()) / (aff.std() + 1e-9)
    logits = config.affinity_weight * aff + config.popularity_weight * log_pop[None, :]
    keys = logits + rng.gumbel(size=(m, n))
    order = np.argsort(-keys, axis=1, kind="stable")
    k = config.min_interactions + rng.poisson(config.mean_extra_interactions, size=m)
    k = np.minimum(k, n // 2)
    taken = np.zeros((m, n), dtype=bool)
    for row in range(m):
        taken[row, order[row, : k[row]]] = True
    need = config.min_interactions - taken.sum(axis=0)
    for col in np.flatnonzero(need > 0):
        candidates = np.flatnonzero(~taken[:, col])
        best = candidates[np.argsort(-keys[candidates, col], kind="stable")[: need[col]]]
        taken[best, col] = True
    user, item = np.nonzero(taken)
    return user.astype(np.int64), item.astype(np.int64), aff[user, item]


def _timestamps(user: np.ndarray, n_users: int, rng: np.random.Generator) -> np.ndarray:
    """Day-resolution review times (as Amazon's are): each user starts somewhen, then spaces reviews."""
    start = rng.integers(0, 700, size=n_users)
    gaps = rng.exponential(20.0, size=len(user)).astype(np.int64) + 1
    order = np.argsort(user, kind="stable")
    su, sg = user[order], gaps[order]
    cum = np.cumsum(sg)
    first = np.searchsorted(su, su, side="left")  # index of each user's first row
    days = np.empty(len(user), dtype=np.int64)
    days[order] = start[su] + cum - cum[first] + sg[first]
    return _EPOCH_START + days * _DAY


# ---------------------------------------------------------------- Amazon 2018 records


def _title(cat: DemoCatalog, i: int) -> str:
    adj = " ".join(ADJECTIVES[a].capitalize() for a in cat.adjectives[i])
    colour = list(COLOURS)[cat.colour[i]].capitalize()
    shape = SHAPES[cat.shape[i]].capitalize()
    noun = CATEGORIES[cat.category[i]][2]
    brand = BRANDS[cat.brand[i]] + " " if cat.brand[i] >= 0 else ""
    return f"{brand}{adj} {colour} {shape} {noun}"


def _description(cat: DemoCatalog, i: int, rng: np.random.Generator) -> list[str]:
    a1, a2 = (ADJECTIVES[a] for a in cat.adjectives[i])
    colour, shape = list(COLOURS)[cat.colour[i]], SHAPES[cat.shape[i]]
    noun = CATEGORIES[cat.category[i]][2].lower()
    lines = [
        f"A <b>{a1}</b> {noun} in {colour} with a {shape} print &amp; a {a2} finish.",
        f"Part of our {a2} {shape} collection.<br>Great as a gift.",
    ]
    if cat.brand[i] >= 0:
        lines.append(f"Designed by {BRANDS[cat.brand[i]]}.")
    r = rng.random()
    if r < 0.06:
        return []  # real catalogs have empty descriptions
    return lines[:1] if r < 0.3 else lines


def meta_record(cat: DemoCatalog, i: int, image_url: str | None, rng: np.random.Generator) -> dict:
    """One line of meta_Demo.json.gz, with the fields (and quirks) of Amazon 2018 metadata."""
    group, leaf, _ = CATEGORIES[cat.category[i]]
    category = [DEMO_CATEGORY, group, leaf]
    if rng.random() < 0.15:
        category = [DEMO_CATEGORY, DEMO_CATEGORY, group, leaf]  # duplicated entries, as in real files
    same_topic = np.flatnonzero(cat.topic == cat.topic[i])
    same_topic = same_topic[same_topic != i]
    also: np.ndarray | list[int] = (
        rng.choice(same_topic, size=min(len(same_topic), int(rng.integers(0, 5))), replace=False)
        if len(same_topic)
        else []
    )
    price = "" if rng.random() < 0.1 else f"${5 + 45 * rng.random():.2f}"
    urls = [image_url] if image_url else []
    return {
        "category": category,
        "tech1": "",
        "description": _description(cat, i, rng),
        "fit": "",
        "title": _title(cat, i),
        "also_buy": [cat.asins[j] for j in sorted(int(x) for x in also)],
        "tech2": "",
        "brand": BRANDS[cat.brand[i]] if cat.brand[i] >= 0 else "",
        "feature": [
            f"{list(COLOURS)[cat.colour[i]].capitalize()} colour",
            f"{SHAPES[cat.shape[i]].capitalize()} design",
        ],
        "rank": [],
        "also_view": [],
        "details": {"ASIN: ": cat.asins[i]},
        "main_cat": group,
        "similar_item": "",
        "date": "",
        "price": price,
        "asin": cat.asins[i],
        "imageURL": urls,
        "imageURLHighRes": list(urls),
    }


def review_record(cat: DemoCatalog, row: int, rng: np.random.Generator) -> dict:
    """One line of Demo_5.json.gz, as in the Amazon 2018 5-core review files."""
    u, i = int(cat.user[row]), int(cat.item[row])
    stars = int(cat.rating[row])
    ts = int(cat.timestamp[row])
    adj = ADJECTIVES[cat.adjectives[i][0]]
    noun = CATEGORIES[cat.category[i]][2].lower()
    colour = list(COLOURS)[cat.colour[i]]
    summaries = SUMMARIES[stars]
    name = f"{FIRST_NAMES[u % len(FIRST_NAMES)]} {chr(65 + (u * 7) % 26)}."
    return {
        "overall": float(stars),
        "verified": bool(rng.random() < 0.85),
        "reviewTime": datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%m %d, %Y"),
        "reviewerID": cat.reviewer_ids[u],
        "asin": cat.asins[i],
        "reviewerName": name,
        "reviewText": f"The {colour} {noun} arrived quickly. " + OPINIONS[stars].format(adj=adj, noun=noun),
        "summary": summaries[int(rng.integers(0, len(summaries)))],
        "unixReviewTime": ts,
    }


def drawing_for(cat: DemoCatalog, i: int, rng: np.random.Generator) -> Drawing:
    """The picture of item i: its shape and colour, its brand (or noun) printed, small jitter."""
    word = BRANDS[cat.brand[i]] if cat.brand[i] >= 0 else CATEGORIES[cat.category[i]][2]
    return Drawing(
        shape=SHAPES[cat.shape[i]],
        colour=list(COLOURS)[cat.colour[i]],
        word=word,
        background=int(cat.adjectives[i][0]) % len(BACKGROUNDS),
        size=cat.config.image_size,
        rotation=float(rng.uniform(-20, 20)),
        scale=float(rng.uniform(0.85, 1.1)),
        dx=int(rng.integers(-12, 13)),
        dy=int(rng.integers(-8, 9)),
    )


# ---------------------------------------------------------------- files


def _gzip_lines(records: list[dict]) -> bytes:
    """Gzip without a name or timestamp in the header, so the same records give the same bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz:
        for rec in records:
            gz.write((json.dumps(rec) + "\n").encode("utf-8"))
    return buf.getvalue()


def _write_if_changed(path: Path, data: bytes) -> bool:
    """Atomic write, skipped when the file already holds these bytes (keeps mtimes and caches)."""
    if path.exists() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return True


def generate_demo(
    raw_dir: Path, *, n_items: int = 300, n_users: int = 400, seed: int = 0, progress: bool = True
) -> dict:
    """Write meta_Demo.json.gz, Demo_5.json.gz and images/<asin>.jpg into `raw_dir`.

    Image URLs are the drawn JPEGs' paths relative to `raw_dir` (images/<asin>.jpg), so the files
    name no machine and a copied home gives the same bytes; ingest records them relative to the
    dataset (raw/images/…) and the ordinary image fetcher "downloads" them from there. Returns a
    summary: counts, paths and the sha256 of each file.
    """
    config = DemoConfig(n_items=n_items, n_users=n_users, seed=seed)
    cat = build_catalog(config)
    raw_dir = Path(raw_dir)
    images_dir = raw_dir / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    rngs = _streams(seed)
    meta_rng, review_rng, draw_rng = rngs["meta"], rngs["reviews"], rngs["drawings"]

    written = 0
    image_paths: list[Path] = []
    for i in tqdm(range(n_items), desc="demo images", unit="img", disable=not progress):
        drawing = drawing_for(cat, i, draw_rng)  # drawn for every item so the stream never shifts
        if cat.has_image[i]:
            path = images_dir / f"{cat.asins[i]}.jpg"
            written += _write_if_changed(path, jpeg_bytes(drawing))
            image_paths.append(path)
    keep = {p.name for p in image_paths}
    for stale in images_dir.glob("D*.jpg"):
        if stale.name not in keep:
            stale.unlink()

    meta = [
        meta_record(cat, i, f"{IMAGES_DIR}/{cat.asins[i]}.jpg" if cat.has_image[i] else None, meta_rng)
        for i in range(n_items)
    ]
    order = np.lexsort((cat.timestamp, cat.item))  # grouped by item, oldest first, as in the 2018 files
    reviews = [review_record(cat, int(r), review_rng) for r in order]
    meta_path, reviews_path = raw_dir / META_FILE, raw_dir / REVIEWS_FILE
    _write_if_changed(meta_path, _gzip_lines(meta))
    _write_if_changed(reviews_path, _gzip_lines(reviews))

    return {
        "category": DEMO_CATEGORY,
        "seed": seed,
        "n_items": n_items,
        "n_users": n_users,
        "n_interactions": cat.n_interactions,
        "n_images": len(image_paths),
        "n_images_written": written,
        "items_without_image": int((~cat.has_image).sum()),
        "items_without_brand": int((cat.brand < 0).sum()),
        "meta": str(meta_path),
        "reviews": str(reviews_path),
        "images_dir": str(images_dir),
        "sha256": {META_FILE: file_sha256(meta_path), REVIEWS_FILE: file_sha256(reviews_path)},
    }
