"""ingest end to end: real Gift Cards files over a real (and faulty) HTTP server, the demo,
and the clear errors (unknown category, unreachable URL, nothing half-written)."""

from __future__ import annotations

import gzip
import json
import socket
from collections import Counter
from pathlib import Path

import pytest

from pipelines import catalog
from pipelines import ingest as ingest_mod
from pipelines.download import DownloadError
from pipelines.ingest import ingest
from pipelines.prepare import format_summary
from store import schemas
from store.hashing import file_sha256
from store.layout import dataset_paths
from store.tables import read_table

META = "meta_Gift_Cards.json.gz"
REVIEWS = "Gift_Cards_5.json.gz"

# Gift Cards 2018, 5-core: obtained once by running ingest on ../shared/data/amazon2018-giftcards
# (2,972 reviews → 7 same user+item duplicates removed → 5-core in 2 iterations) and confirmed
# by `independent_counts` below, which every run recomputes without numpy or our code.
GIFT_CARDS_PARSED = {"interactions": 2972, "users": 458, "items": 148}
GIFT_CARDS_DEDUP = {"interactions": 2965, "users": 458, "items": 148}
GIFT_CARDS_5CORE = {"interactions": 2941, "users": 453, "items": 147}


def independent_counts(reviews_gz: Path, k: int = 5) -> tuple[int, dict[str, int]]:
    """Duplicates removed and the k-core sizes, by the plainest possible Python."""
    latest: dict[tuple[str, str], int] = {}
    for line in gzip.open(reviews_gz, "rt", encoding="utf-8"):
        r = json.loads(line)
        latest[(r["reviewerID"], r["asin"])] = r["unixReviewTime"]
    n_lines = sum(1 for _ in gzip.open(reviews_gz, "rt"))
    edges = set(latest)
    while True:
        du = Counter(u for u, _ in edges)
        di = Counter(i for _, i in edges)
        kept = {(u, i) for u, i in edges if du[u] >= k and di[i] >= k}
        if kept == edges:
            break
        edges = kept
    counts = {"interactions": len(edges), "users": len({u for u, _ in edges}), "items": len({i for _, i in edges})}
    return n_lines - len(latest), counts


def step(report: dict, name: str) -> dict[str, int]:
    (s,) = [s for s in report["steps"] if s["step"] == name]
    return {k: s[k] for k in ("interactions", "users", "items")}


@pytest.mark.integration
def test_gift_cards_over_a_faulty_http_server(shared_data: Path, http_server, home: Path) -> None:
    src = shared_data / "amazon2018-giftcards"
    http_server.serve(src)
    http_server.fault(REVIEWS, "status", times=1, code=500)  # a 500, then success
    http_server.fault(META, "cut", times=1, after=100_000)  # connection dropped mid-file
    report = ingest(
        "giftcards",
        "2018",
        meta=http_server.url_for(META),
        reviews=http_server.url_for(REVIEWS),
        home=home,
        progress=False,
        backoff=0.01,
        timeout=10,
    )

    # the faults really happened, and the cut download resumed from where it stopped
    assert [r["fault"] for r in http_server.requests_for(REVIEWS)] == ["status", None]
    meta_requests = http_server.requests_for(META)
    assert meta_requests[0]["fault"] == "cut" and meta_requests[-1]["range"] == "bytes=100000-"
    paths = dataset_paths("giftcards", home)
    for name in (META, REVIEWS):  # raw/ holds the files exactly as served
        assert file_sha256(paths.raw_dir / name) == file_sha256(src / name)
    manifest = json.loads(paths.manifest.read_text())
    assert manifest[META]["bytes"] == (src / META).stat().st_size
    assert report["sources"]["reviews"]["sha256"] == file_sha256(src / REVIEWS)

    assert step(report, "parsed") == GIFT_CARDS_PARSED
    assert step(report, "deduplicated") == GIFT_CARDS_DEDUP
    assert step(report, "5-core") == GIFT_CARDS_5CORE
    duplicates, core = independent_counts(src / REVIEWS)
    assert report["duplicates_removed"] == duplicates == 7
    assert core == GIFT_CARDS_5CORE
    assert report["kcore"]["users_removed"] == 5 and report["kcore"]["items_removed"] == 1
    assert report["bad_records"]["total"] == 0
    assert report["metadata"]["products_read"] == 1547

    items = read_table(paths.items, schemas.ITEMS)
    inter = read_table(paths.interactions, schemas.INTERACTIONS)
    users = read_table(paths.users, schemas.USERS)
    assert (items.num_rows, users.num_rows, inter.num_rows) == (147, 453, 2941)
    assert report["missing"]["metadata"] == 0
    assert report["missing"]["image"] == items.column("image_url").null_count
    assert all(len(c) == len(set(c)) for c in items.column("categories").to_pylist())
    texts = items.column("text").to_pylist()
    assert all(t and "<" not in t and "&amp;" not in t and "  " not in t for t in texts)
    assert sum(report["split"]["sizes"].values()) == 2941
    assert "2,941 interactions" in format_summary(report)


@pytest.mark.integration
def test_local_path_and_file_url_give_the_same_tables(shared_data: Path, home: Path) -> None:
    src = shared_data / "amazon2018-giftcards"
    a = ingest("a", "2018", meta=str(src / META), reviews=(src / REVIEWS).as_uri(), home=home, progress=False)
    b = ingest("b", "2018", meta=str(src / META), reviews=str(src / REVIEWS), home=home, progress=False)
    assert step(a, "5-core") == GIFT_CARDS_5CORE
    assert a["split"]["hash"] == b["split"]["hash"]
    c = ingest("c", "2018", meta=str(src / META), reviews=str(src / REVIEWS), home=home, progress=False, seed=1)
    assert c["split"]["hash"] != a["split"]["hash"]


@pytest.mark.integration
def test_catalog_mirror_is_used_when_the_main_host_is_down(
    shared_data: Path, http_server, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    http_server.serve(shared_data / "amazon2018-giftcards")
    dead = f"http://127.0.0.1:{closed_port()}"

    def resolve(release: str, category: str) -> list[catalog.RemoteFile]:
        assert (release, category) == ("2018", "Gift_Cards")
        return [
            catalog.RemoteFile("meta", f"{dead}/{META}", [http_server.url_for(META)], META),
            catalog.RemoteFile("reviews", f"{dead}/{REVIEWS}", [http_server.url_for(REVIEWS)], REVIEWS),
        ]

    monkeypatch.setattr(ingest_mod.catalog, "resolve", resolve)
    report = ingest("gc", "2018", "Gift_Cards", home=home, progress=False, retries=0, timeout=5)
    assert step(report, "5-core") == GIFT_CARDS_5CORE
    assert report["sources"]["meta"]["url"] == http_server.url_for(META)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unknown_category_is_a_clear_error(home: Path) -> None:
    with pytest.raises(ValueError, match="Gift_Cards") as err:
        ingest("x", "2018", "Gift_Crads", home=home, progress=False)
    assert "unknown category" in str(err.value)
    assert not dataset_paths("x", home).raw_dir.exists()  # nothing fetched, nothing written


def test_unknown_release_and_missing_sources(home: Path) -> None:
    with pytest.raises(ValueError, match="release"):
        ingest("x", "2019", "Gift_Cards", home=home)
    with pytest.raises(ValueError, match="category"):
        ingest("x", "2018", home=home, meta="m.json.gz")  # reviews alone are an ID-only dataset (test_ingest_shapes)


def test_unreachable_url_names_the_url_and_writes_no_table(tmp_path: Path, home: Path) -> None:
    meta = tmp_path / META
    meta.write_bytes(gzip.compress(b'{"asin": "A"}\n'))
    url = f"http://127.0.0.1:{closed_port()}/{REVIEWS}"
    with pytest.raises(DownloadError) as err:
        ingest("x", "2018", meta=str(meta), reviews=url, home=home, progress=False, retries=0, timeout=2)
    assert url in str(err.value)
    paths = dataset_paths("x", home)
    assert not paths.items.exists() and not paths.interactions.exists()


def test_broken_reviews_keep_the_old_tables(tmp_path: Path, home: Path) -> None:
    good_meta = tmp_path / "meta_T.json.gz"
    good_meta.write_bytes(
        gzip.compress(b"".join(json.dumps({"asin": f"I{j}", "title": f"T{j}"}).encode() + b"\n" for j in range(6)))
    )
    good = tmp_path / "T_5.json.gz"
    good.write_bytes(
        gzip.compress(
            b"".join(
                json.dumps(
                    {"reviewerID": f"U{u}", "asin": f"I{j}", "overall": 5.0, "unixReviewTime": u * 10 + j}
                ).encode()
                + b"\n"
                for u in range(6)
                for j in range(6)
            )
        )
    )
    report = ingest("t", "2018", meta=str(good_meta), reviews=str(good), home=home, progress=False)
    assert step(report, "5-core") == {"interactions": 36, "users": 6, "items": 6}
    paths = dataset_paths("t", home)
    before = paths.interactions.read_bytes()

    broken = tmp_path / "broken_5.json.gz"
    broken.write_bytes(gzip.compress(b'{"reviewerID": "U1", "asin"\nnot json\n'))
    with pytest.raises(ValueError, match="no usable reviews"):
        ingest("t", "2018", meta=str(good_meta), reviews=str(broken), home=home, progress=False)
    assert paths.interactions.read_bytes() == before


def test_demo_ingest_end_to_end(home: Path) -> None:
    report = ingest("demo", "demo", home=home, progress=False)
    paths = dataset_paths("demo", home)
    items = read_table(paths.items, schemas.ITEMS)
    inter = read_table(paths.interactions, schemas.INTERACTIONS)
    assert items.num_rows == report["output"]["items"] > 100
    assert inter.num_rows == report["output"]["interactions"]
    assert report["bad_records"]["total"] == 0
    urls = [u for u in items.column("image_url").to_pylist() if u is not None]
    assert len(urls) == items.num_rows - report["missing"]["image"] > 0
    assert all(u.startswith("raw/images/") and (paths.root / u).is_file() for u in urls)  # dataset-relative
    again = ingest("demo", "demo", home=home, progress=False)  # raw files reused, same result
    assert again["split"]["hash"] == report["split"]["hash"]
