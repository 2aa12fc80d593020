"""Real Gift Cards files made to carry the quirks of other 2018 dumps: titles that are cut HTML
fragments, CSS in price and description, a third of the metadata lines repeated (some repeats
less complete), and metadata that matches no reviewed item."""

from __future__ import annotations

import gzip
import html
import json
import re
from pathlib import Path

import pytest

from pipelines import amazon
from pipelines.html_text import first_sentence
from pipelines.ingest import ingest
from pipelines.prepare import DUPLICATE_POLICY, _items_table
from pipelines.records import BadRecords
from store import schemas
from store.layout import dataset_paths
from store.tables import read_json, read_table

pytestmark = pytest.mark.integration

SPAN = '<span class="a-size-medium a-color-secondary"'
MARKUP = re.compile(r"<[A-Za-z/!?][^<>]*>|<[A-Za-z][\w-]*\s+[\w-]+=|<span|\{[^{}]*:[^{}]*\}|&amp;|&[a-z]+;")


def _lines(shared_data: Path, name: str) -> list[dict]:
    with gzip.open(shared_data / "amazon2018-giftcards" / name, "rt") as fh:
        return [json.loads(line) for line in fh]


def _write(path: Path, rows: list[dict]) -> Path:
    with gzip.open(path, "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def _reviewed(shared_data: Path) -> list[str]:
    return sorted({r["asin"] for r in _lines(shared_data, "Gift_Cards_5.json.gz")})


def test_quirky_2018_metadata(shared_data: Path, tmp_path: Path, home: Path) -> None:
    rows = _lines(shared_data, "meta_Gift_Cards.json.gz")
    css = next(r["price"] for r in rows if "{" in r.get("price", ""))  # the real CSS in price
    reviewed = _reviewed(shared_data)
    by_asin = {r["asin"]: r for r in rows}
    only_markup = [a for a in reviewed if by_asin[a].get("brand")][:5]
    cut_tail = reviewed[40:45]
    css_desc = reviewed[50:53]
    for a in only_markup:
        by_asin[a]["title"] = SPAN
    for a in cut_tail:
        by_asin[a]["title"] = by_asin[a]["title"] + " " + SPAN
    for a in css_desc:
        by_asin[a]["description"] = [css]
    for r in rows:
        r["price"] = css if r["asin"] in reviewed[::7] else r.get("price", "")
    # a third of the lines repeated; every other repeat of a reviewed item is a stripped copy put
    # *before* the complete one, so the complete record must win even when it comes second
    out: list[dict] = []
    stripped_first: list[str] = []
    repeats = 0
    for k, r in enumerate(rows):
        if k % 3 == 0:
            repeats += 1
            poor = {"asin": r["asin"], "title": r.get("title", "")}
            if r["asin"] in reviewed and len(stripped_first) < 10:
                stripped_first.append(r["asin"])
                out += [poor, r]
            else:
                out += [r, poor if k % 2 else dict(r)]
        else:
            out.append(r)
    meta = _write(tmp_path / "meta_Gift_Cards.json.gz", out)
    report = ingest(
        "quirks",
        "2018",
        meta=str(meta),
        home=home,
        progress=False,
        reviews=str(shared_data / "amazon2018-giftcards" / "Gift_Cards_5.json.gz"),
    )

    md = report["metadata"]
    assert md["products_read"] == len(out) == len(rows) + repeats
    assert md["duplicate_products"] == repeats and md["duplicate_asins"] == repeats
    assert md["duplicate_policy"] == DUPLICATE_POLICY and md["meta_check"] == "passed"
    items = read_table(dataset_paths("quirks", home).items, schemas.ITEMS).to_pylist()
    by_item = {it["asin"]: it for it in items}
    kept_stripped = [a for a in stripped_first if a in by_item]
    assert kept_stripped and md["duplicates_replaced_by_more_complete"] == len(kept_stripped)
    for a in kept_stripped:  # the complete copy won: its brand and description are there
        assert by_item[a]["categories"] == list(dict.fromkeys(by_asin[a]["category"]))
        assert by_item[a]["image_url"] == amazon._first_url(by_asin[a]["imageURLHighRes"], by_asin[a]["imageURL"])

    tc = report["text_cleaning"]
    fallback = [a for a in only_markup if a in by_item]
    assert tc["title"]["emptied"] == len(fallback)
    assert tc["title"]["markup_title_to_description"] + tc["title"]["markup_title_to_brand"] == len(fallback)
    for a in fallback:  # the description's first sentence names the item; the brand only when there is none
        want = (first_sentence(by_item[a]["description"]) or "").rstrip(" .") or by_item[a]["brand"]
        assert want and by_item[a]["title"] == want and by_item[a]["text"].startswith(want)
    for a in cut_tail:
        if a in by_item:
            assert by_item[a]["title"] == html.unescape(by_asin[a]["title"].replace(SPAN, "")).strip()
    kept_css = [a for a in css_desc if a in by_item]
    assert kept_css and all(by_item[a]["description"] is None for a in kept_css)
    assert tc["description"]["emptied"] == len(kept_css)
    for it in items:
        assert it["text"] and not MARKUP.search(it["text"]), it
    assert read_json(dataset_paths("quirks", home).prepare_report)["text_cleaning"] == tc


def test_no_markup_in_text_for_the_whole_real_catalog(shared_data: Path) -> None:
    meta = shared_data / "amazon2018-giftcards" / "meta_Gift_Cards.json.gz"
    products = {p.asin: p for p in amazon.read_products(meta, "2018", BadRecords())}
    table, missing, cleaning = _items_table(sorted(products), products, 2000)
    texts = table.column("text").to_pylist()
    assert len(texts) == 1547 and missing["text"] == 0
    assert [t for t in texts if MARKUP.search(t)] == []
    assert cleaning["description"]["cleaned"] >= 80  # '<div class="aplus"> …' descriptions
    assert cleaning["categories"]["emptied"] >= 5  # '</span></span></span>' categories


def test_metadata_matching_no_item_is_refused_unless_allowed(shared_data: Path, tmp_path: Path, home: Path) -> None:
    reviews = str(shared_data / "amazon2018-giftcards" / "Gift_Cards_5.json.gz")
    good = ingest(
        "gc",
        "2018",
        meta=str(shared_data / "amazon2018-giftcards" / "meta_Gift_Cards.json.gz"),
        reviews=reviews,
        home=home,
        progress=False,
    )
    paths = dataset_paths("gc", home)
    before = paths.items.read_bytes()
    reviewed = set(_reviewed(shared_data))
    other = [r for r in _lines(shared_data, "meta_Gift_Cards.json.gz") if r["asin"] not in reviewed]
    wrong = _write(tmp_path / "meta_Other.json.gz", other)
    n = good["output"]["items"]
    with pytest.raises(ValueError, match=rf"meta_Other.json.gz matched metadata for 0 of {n} items \(0%") as e:
        ingest("gc", "2018", meta=str(wrong), reviews=reviews, home=home, progress=False)
    assert "--allow-missing-meta" in str(e.value) and "same category as --reviews" in str(e.value)
    assert paths.items.read_bytes() == before  # the previous tables stay

    broken = tmp_path / "meta_Broken.json.gz"
    with gzip.open(broken, "wt") as fh:
        fh.write("not json\n{also not\n")
    with pytest.raises(ValueError, match=r"0 records parsed from meta_Broken.json.gz, 2 bad line"):
        ingest("gc", "2018", meta=str(broken), reviews=reviews, home=home, progress=False)

    report = ingest("gc", "2018", meta=str(wrong), reviews=reviews, home=home, progress=False, allow_missing_meta=True)
    md = report["metadata"]
    assert md["matched_items"] == 0 and md["allow_missing_meta"] is True and "allowed" in md["meta_check"]
    assert report["missing"]["metadata"] == n and paths.items.read_bytes() != before
