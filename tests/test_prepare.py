"""prepare: dedup, k-core to a fixed point, contiguous ids, the METHOD.md split, item text."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipelines import prepare as P
from pipelines.records import BadRecords, Product, Review
from store import schemas
from store.layout import dataset_paths
from store.tables import read_json, read_metadata, read_table


# --- text -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw, clean",
    [
        ("Tom &amp; Jerry", "Tom & Jerry"),
        ("<b>Bold</b><br/>next&nbsp;line", "Bold next line"),
        ("&lt;p&gt;escaped tags&lt;/p&gt;", "escaped tags"),
        ("double &amp;amp; escaped", "double & escaped"),
        ("size < 5 and > 3, I <3 it", "size < 5 and > 3, I <3 it"),
        ('<script type="x">var a = 1;</script>Real text', "Real text"),
        ("  lots \n\t of   space  ", "lots of space"),
        ("<div>\n</div>", None),
        ("", None),
        (None, None),
    ],
)
def test_clean_html(raw: str | None, clean: str | None) -> None:
    assert P.clean_html(raw) == clean


def test_categories_are_cleaned_and_deduplicated_in_order() -> None:
    assert P.clean_categories(["Gift Cards", "Toys &amp; Games", "Gift Cards", "", "</span>", "Toys & Games"]) == [
        "Gift Cards",
        "Toys & Games",
    ]


def test_item_text_layout_and_truncation() -> None:
    assert P.item_text("Robot.", "RoboCo", ["Toys", "Robots"], "It walks.") == (
        "Robot. Brand: RoboCo. Categories: Toys, Robots. It walks."
    )
    assert P.item_text(None, None, [], "Only description") == "Only description"
    assert P.item_text(None, None, [], None) is None
    long = P.item_text("T", None, [], "word " * 1000, max_chars=100)
    assert len(long) <= 100 and long.startswith("T. word") and not long.endswith(" ")


# --- k-core ---------------------------------------------------------------------------------
def test_kcore_hand_computed_cascade() -> None:
    # users A=0 B=1 C=2 D=3, items 1..4 → 0..3; k=2.
    # iteration 1: item 4 has one rating (D)  → drop D-4
    # iteration 2: D is left with one        → drop D-3
    # iteration 3: item 3 is left with one   → drop C-3
    # iteration 4: C is left with one        → drop C-2
    # fixed point: A-1 A-2 B-1 B-2
    edges = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 1), (2, 2), (3, 2), (3, 3)]
    u = np.array([e[0] for e in edges])
    i = np.array([e[1] for e in edges])
    keep, iterations = P.kcore_filter(u, i, 2)
    assert [e for e, k in zip(edges, keep) if k] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [it["interactions_removed"] for it in iterations] == [1, 1, 1, 1]
    assert [it["interactions"] for it in iterations] == [7, 6, 5, 4]
    assert iterations[-1]["users"] == 2 and iterations[-1]["items"] == 2
    assert iterations[0]["items_below_k"] == 1 and iterations[0]["users_below_k"] == 0


def naive_kcore(edges: set[tuple[int, int]], k: int) -> set[tuple[int, int]]:
    """Remove one under-k vertex at a time until none is left (the k-core is unique)."""
    edges = set(edges)
    while True:
        du = Counter(u for u, _ in edges)
        di = Counter(i for _, i in edges)
        weak = next(((u, i) for u, i in sorted(edges) if du[u] < k or di[i] < k), None)
        if weak is None:
            return edges
        u, i = weak
        edges = {e for e in edges if not ((du[u] < k and e[0] == u) or (di[i] < k and e[1] == i))}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kcore_matches_naive_fixed_point(seed: int) -> None:
    rng = random.Random(seed)
    edges = {(rng.randrange(60), int(rng.paretovariate(1.2)) % 40) for _ in range(700)}
    ordered = sorted(edges)
    u = np.array([e[0] for e in ordered])
    i = np.array([e[1] for e in ordered])
    keep, _ = P.kcore_filter(u, i, 4)
    got = {e for e, k in zip(ordered, keep) if k}
    assert got == naive_kcore(edges, 4)
    assert 0 < len(got) < len(edges)


# --- dedup ----------------------------------------------------------------------------------
def test_dedup_keeps_the_latest_review_then_the_last_line() -> None:
    u = np.array([0, 0, 0, 1, 1, 0])
    i = np.array([5, 5, 5, 5, 5, 6])
    ts = np.array([5, 9, 7, 3, 3, 1])
    assert P.dedup_latest(u, i, ts).tolist() == [1, 4, 5]


# --- split ----------------------------------------------------------------------------------
def test_split_rule_sizes_and_last_by_time() -> None:
    rows = []  # (user, item, ts)
    rows += [(0, j, 100 + j) for j in range(5)]  # small user: distinct times
    rows += [(1, j, 0) for j in range(20)]  # 20 → 16/2/2
    rows += [(2, j, 0) for j in range(15)]  # 15 → 12/1/2
    rows += [(3, j, 0) for j in range(10)]  # 10 → 8/1/1
    rows += [(4, j, 7) for j in range(2)]  # too few to hold out: all train
    u, i, ts = (np.array(c) for c in zip(*rows))
    split = P.assign_split(u, ts, i, seed=0)
    counts = {user: tuple(np.bincount(split[u == user], minlength=3)) for user in range(5)}
    assert counts == {0: (3, 1, 1), 1: (16, 2, 2), 2: (12, 1, 2), 3: (8, 1, 1), 4: (2, 0, 0)}
    small = split[u == 0]
    assert small[4] == 2 and small[3] == 1  # latest is test, the one before is valid


def test_split_ties_are_broken_by_the_seed_and_order_does_not_matter() -> None:
    u = np.zeros(6, dtype=np.int64)
    i = np.arange(6)
    ts = np.full(6, 42)
    test_items = {int(i[P.assign_split(u, ts, i, seed=s) == 2][0]) for s in range(12)}
    assert len(test_items) > 1  # tie-break really depends on the seed
    perm = np.random.default_rng(3).permutation(6)
    a = P.assign_split(u, ts, i, seed=5)
    b = P.assign_split(u[perm], ts[perm], i[perm], seed=5)
    assert (a[perm] == b).all()  # same rows, other order → same split


# --- prepare end to end on a tiny catalog -------------------------------------------------
def tiny_reviews() -> list[Review]:
    rng = random.Random(0)
    reviews = []
    for u in range(30):
        for j in rng.sample(range(12), 6 + u % 7):
            reviews.append(Review(f"user{u:03d}", f"item{j:02d}", float(rng.randint(1, 5)), 1000 + rng.randrange(50)))
    reviews.append(Review("user000", reviews[0].asin, 1.0, 10**9))  # a later duplicate
    reviews.append(Review("loner", "item00", 5.0, 1))  # vanishes under 5-core
    reviews.append(Review("user001", "rare", None, 1))  # item vanishes under 5-core
    return reviews


def tiny_products() -> list[Product]:
    out = [
        Product(
            f"item{j:02d}",
            f"Item <b>{j}</b>",
            "Nice &amp; useful",
            "Brand",
            ["A", "A", "B"],
            f"http://img/{j}.jpg" if j % 3 else None,
        )
        for j in range(11)  # item11 has no metadata
    ]
    out.append(Product("item00", "duplicate row"))
    return out


def test_prepare_writes_valid_tables_and_report(home: Path) -> None:
    paths = dataset_paths("tiny", home)
    bad = BadRecords()
    bad.add("r.json.gz", 3, "malformed line (not JSON)", "{")
    reviews = tiny_reviews()
    report = P.prepare(paths, iter(reviews), iter(tiny_products()), kcore=5, seed=0, bad=bad)

    items = read_table(paths.items, schemas.ITEMS)
    users = read_table(paths.users, schemas.USERS)
    inter = read_table(paths.interactions, schemas.INTERACTIONS)
    # contiguous, deterministic ids: sorted asin / reviewer id
    asins = items.column("asin").to_pylist()
    assert items.column("item_id").to_pylist() == list(range(len(asins))) and asins == sorted(asins)
    rids = users.column("reviewer_id").to_pylist()
    assert users.column("user_id").to_pylist() == list(range(len(rids))) and rids == sorted(rids)
    assert "loner" not in rids and "rare" not in asins and len(rids) == 30 and len(asins) == 12
    uid = inter.column("user_id").to_numpy()
    iid = inter.column("item_id").to_numpy()
    assert uid.min() == 0 and uid.max() == 29 and iid.max() == 11
    assert len(set(zip(uid.tolist(), iid.tolist()))) == inter.num_rows  # no duplicates left

    # the duplicate kept the later review (rating 1.0, ts 1e9)
    first = reviews[0]
    row = (uid == rids.index("user000")) & (iid == asins.index(first.asin))
    assert inter.column("timestamp").to_numpy()[row].tolist() == [10**9]
    assert inter.column("rating").to_numpy()[row].tolist() == [1.0]

    # item content: cleaned, categories deduplicated, text assembled; missing metadata counted
    it1 = items.slice(1, 1).to_pylist()[0]
    assert it1["asin"] == "item01" and it1["title"] == "Item 1" and it1["description"] == "Nice & useful"
    assert it1["categories"] == ["A", "B"]
    assert it1["text"] == "Item 1. Brand: Brand. Categories: A, B. Nice & useful"
    assert items.slice(0, 1).to_pylist()[0]["title"] == "Item 0"  # first metadata row wins
    last = items.slice(11, 1).to_pylist()[0]
    assert last["asin"] == "item11" and last["title"] is None and last["text"] is None

    n = len(reviews)
    assert report["steps"][0] == {"step": "parsed", "interactions": n, "users": 31, "items": 13}
    assert report["duplicates_removed"] == 1
    assert report["steps"][1]["interactions"] == n - 1
    assert report["steps"][2]["interactions"] == n - 3 == inter.num_rows
    assert report["kcore"]["users_removed_examples"] == ["loner"]
    assert report["kcore"]["items_removed_examples"] == ["rare"]
    md = report["metadata"]
    assert (md["products_read"], md["duplicate_products"], md["duplicate_asins"]) == (12, 1, 1)
    assert md["duplicates_replaced_by_more_complete"] == 0 and md["duplicate_policy"] == P.DUPLICATE_POLICY
    assert md["meta_check"] == "not checked" and md["matched_items"] == 11 and md["items"] == 12
    assert report["text_cleaning"]["title"]["cleaned"] == 11  # 'Item <b>j</b>'
    assert report["text_cleaning"]["description"] == {"values": 11, "cleaned": 11, "emptied": 0}
    assert report["missing"]["metadata"] == 1 and report["missing"]["title"] == 1
    assert report["missing"]["image"] == 1 + 4  # item11 + items 0, 3, 6, 9
    assert report["bad_records"]["by_reason"] == {"malformed line (not JSON)": 1}
    sizes = report["split"]["sizes"]
    assert sum(sizes.values()) == inter.num_rows and sizes["test"] >= 30 and sizes["valid"] >= 30
    assert Counter(inter.column("split").to_pylist()) == {k: v for k, v in sizes.items() if v}

    # the report on disk is the one returned; the seed and split hash travel with the table
    assert read_json(paths.prepare_report)["split"] == report["split"]
    meta = read_metadata(paths.interactions)
    assert meta["split_hash"] == report["split"]["hash"] and meta["split_seed"] == "0"

    text = P.format_summary(report)
    assert f"{n:,} interactions" in text and "duplicates removed: 1" in text
    assert "malformed line (not JSON): 1" in text and "r.json.gz:3" in text


def test_prepare_is_deterministic_and_seed_sensitive(home: Path) -> None:
    reviews = tiny_reviews()
    a = P.prepare(dataset_paths("a", home), reviews, tiny_products())
    shuffled = reviews[:]
    random.Random(1).shuffle(shuffled)
    b = P.prepare(dataset_paths("b", home), shuffled, tiny_products())
    c = P.prepare(dataset_paths("c", home), reviews, tiny_products(), seed=1)
    assert a["split"]["hash"] == b["split"]["hash"]
    assert a["split"]["hash"] != c["split"]["hash"]


def test_kcore_that_removes_everything_writes_nothing(home: Path) -> None:
    paths = dataset_paths("empty", home)
    with pytest.raises(ValueError, match="removed every interaction"):
        P.prepare(paths, tiny_reviews(), tiny_products(), kcore=50)
    assert not paths.items.exists() and not paths.interactions.exists() and not paths.users.exists()


def test_a_failed_prepare_leaves_the_previous_tables(home: Path) -> None:
    paths = dataset_paths("keep", home)
    P.prepare(paths, tiny_reviews(), tiny_products())
    before = {p: p.read_bytes() for p in (paths.items, paths.users, paths.interactions, paths.prepare_report)}

    def products_that_fail():
        yield Product("item00", "x")
        raise OSError("disk went away while reading metadata")

    with pytest.raises(OSError):
        P.prepare(paths, tiny_reviews(), products_that_fail(), seed=3)
    assert {p: p.read_bytes() for p in before} == before
    assert not list(paths.root.glob(".*.tmp"))


def test_no_reviews_is_a_clear_error(home: Path) -> None:
    bad = BadRecords()
    bad.add("r.gz", 1, "malformed line (not JSON)")
    with pytest.raises(ValueError, match="no usable reviews.*1 line"):
        P.prepare(dataset_paths("none", home), [], [], bad=bad)


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="kcore"):
        P.PrepareConfig(kcore=0)
    with pytest.raises(ValueError, match="seed"):
        P.PrepareConfig(seed=-1)
