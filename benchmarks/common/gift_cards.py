"""The real Amazon 2018 Gift Cards files in ../shared/data, and the `anchorrec ingest` options that read them.

Several benchmarks run the CLI on this one real category; its paths live here so they agree.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
GIFT = DATA / "amazon2018-giftcards"
GIFT_META = GIFT / "meta_Gift_Cards.json.gz"
GIFT_REVIEWS = GIFT / "Gift_Cards_5.json.gz"
GIFT_INGEST = ["--release", "2018", "--meta", str(GIFT_META), "--reviews", str(GIFT_REVIEWS)]
