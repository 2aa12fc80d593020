"""pipelines.catalog: the public download locations of the Amazon releases."""

from __future__ import annotations

import pytest

from pipelines import catalog
from pipelines.catalog import RemoteFile, categories, resolve


def test_release_category_lists():
    assert catalog.releases() == ["2014", "2018", "2023"]
    assert len(categories("2014")) == 24 and "Amazon_Instant_Video" in categories("2014")
    assert len(categories("2018")) == 29 and "AMAZON_FASHION" in categories("2018")
    assert len(categories("2023")) == 34 and "Unknown" in categories("2023")
    for rel in catalog.releases():
        cats = categories(rel)
        assert len(set(cats)) == len(cats)
    assert categories(2018) == categories("2018")


def test_2014_urls():
    meta, reviews = resolve("2014", "Baby")
    base = "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
    assert (meta.kind, meta.url, meta.filename) == ("meta", base + "meta_Baby.json.gz", "meta_Baby.json.gz")
    assert (reviews.kind, reviews.url) == ("reviews", base + "reviews_Baby_5.json.gz")
    assert reviews.filename == "reviews_Baby_5.json.gz"
    assert "http://jmcauley.ucsd.edu/data/amazon/categoryFiles/reviews_Baby_5.json.gz" in reviews.mirrors


def test_2018_urls_and_mirrors():
    meta, reviews = resolve("2018", "Gift_Cards")
    assert meta.filename == "meta_Gift_Cards.json.gz" and reviews.filename == "Gift_Cards_5.json.gz"
    assert reviews.urls == [
        "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2/categoryFilesSmall/Gift_Cards_5.json.gz",
        "http://deepyeti.ucsd.edu/jianmo/amazon/categoryFilesSmall/Gift_Cards_5.json.gz",
        "https://jmcauley.ucsd.edu/data/amazon_v2/categoryFilesSmall/Gift_Cards_5.json.gz",
    ]
    assert meta.urls[1] == "http://deepyeti.ucsd.edu/jianmo/amazon/metaFiles2/meta_Gift_Cards.json.gz"
    # the file names match the real files in ../shared/data/amazon2018-giftcards
    assert {meta.filename, reviews.filename} == {"meta_Gift_Cards.json.gz", "Gift_Cards_5.json.gz"}


def test_2023_urls_include_hugging_face_last():
    meta, reviews = resolve("2023", "All_Beauty")
    assert reviews.url == (
        "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_2023/raw/review_categories/All_Beauty.jsonl.gz"
    )
    assert meta.url.endswith("/raw/meta_categories/meta_All_Beauty.jsonl.gz")
    assert reviews.mirrors[-1] == (
        "https://huggingface.co/datasets/McAuley-Lab/Amazon-Reviews-2023/resolve/main/raw/review_categories/All_Beauty.jsonl"
    )
    assert meta.mirrors[-1].endswith("/raw/meta_categories/meta_All_Beauty.jsonl")
    assert (meta.filename, reviews.filename) == ("meta_All_Beauty.jsonl.gz", "All_Beauty.jsonl.gz")


def test_category_spelling_is_forgiven():
    assert resolve("2018", "gift cards")[1].filename == "Gift_Cards_5.json.gz"
    assert resolve("2018", "amazon-fashion")[0].filename == "meta_AMAZON_FASHION.json.gz"
    assert resolve("2023", "amazon_fashion")[1].filename == "Amazon_Fashion.jsonl.gz"


def test_unknown_category_suggests_the_closest():
    with pytest.raises(ValueError) as err:
        resolve("2018", "Gift_Card")
    msg = str(err.value)
    assert "'Gift_Card'" in msg and "did you mean 'Gift_Cards'" in msg and "Video_Games" in msg
    with pytest.raises(ValueError) as err:
        resolve("2018", "Handmade_Products")  # a 2023 name, not a 2018 one: the error lists 2018's
    assert "Prime_Pantry" in str(err.value) and "Subscription_Boxes" not in str(err.value)


def test_unknown_release_lists_known_ones():
    with pytest.raises(ValueError, match=r"known releases are \['2014', '2018', '2023'\]; did you mean '2018'"):
        resolve("2019", "Books")
    with pytest.raises(ValueError, match="unknown Amazon release"):
        categories("v2")


def test_remote_file_validates_kind_and_defaults_filename():
    f = RemoteFile("meta", "https://example.org/a/meta_X.json.gz")
    assert f.filename == "meta_X.json.gz" and f.urls == ["https://example.org/a/meta_X.json.gz"]
    with pytest.raises(ValueError, match="RemoteFile.kind"):
        RemoteFile("images", "https://example.org/x")
