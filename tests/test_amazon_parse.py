"""Readers of the Amazon 2014/2018/2023 dumps, on tiny generated files with every kind of damage."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from pipelines import amazon
from pipelines.records import BadRecords, Product, Review


def write_gz(path: Path, lines: list[bytes | str], newline_at_end: bool = True) -> Path:
    data = b"\n".join(x.encode() if isinstance(x, str) else x for x in lines)
    if newline_at_end:
        data += b"\n"
    path.write_bytes(gzip.compress(data))
    return path


def jl(*objs: dict) -> list[str]:
    return [json.dumps(o) for o in objs]


# --- 2023 -----------------------------------------------------------------------------------
def test_2023_meta_and_reviews(tmp_path: Path) -> None:
    meta = write_gz(
        tmp_path / "meta_Toys.jsonl.gz",
        jl(
            {
                "parent_asin": "P1",
                "title": "Robot",
                "description": ["Fun", "robot."],
                "store": "RoboCo",
                "categories": ["Toys", "Robots"],
                "images": [
                    {"thumb": "t1", "large": "L-side", "hi_res": None, "variant": "PT01"},
                    {"thumb": "t0", "large": "L-main", "hi_res": "H-main", "variant": "MAIN"},
                ],
            },
            {
                "parent_asin": "P2",
                "title": "",
                "description": [],
                "store": None,
                "categories": [],
                "main_category": "Toys",
                "images": [],
            },
        ),
    )
    bad = BadRecords()
    products = list(amazon.read_products(meta, "2023", bad))
    assert products == [
        Product("P1", "Robot", "Fun robot.", "RoboCo", ["Toys", "Robots"], "L-main"),
        Product("P2", None, None, None, ["Toys"], None),
    ]
    reviews = write_gz(
        tmp_path / "Toys.jsonl.gz",
        jl(
            {"user_id": "U1", "parent_asin": "P1", "asin": "C1", "rating": 4.0, "timestamp": 1588687728923},
            {"user_id": "U2", "asin": "P2", "rating": 5, "timestamp": 1000},
        ),
    )
    got = list(amazon.read_reviews(reviews, "2023", bad))
    # parent_asin groups variants; timestamps go from milliseconds to seconds
    assert got == [Review("U1", "P1", 4.0, 1588687728), Review("U2", "P2", 5.0, 1)]
    assert bad.total == 0


# --- 2018 -----------------------------------------------------------------------------------
def test_2018_meta_reviews_and_ratings_csv(tmp_path: Path) -> None:
    meta = write_gz(
        tmp_path / "meta_Cat.json.gz",
        jl(
            {
                "asin": "A1",
                "title": "Card",
                "description": ["Line one", "line two"],
                "brand": "B",
                "category": ["Gift Cards", "Gift Cards"],
                "imageURL": ["small.jpg"],
                "imageURLHighRes": ["big.jpg"],
            },
            {"asin": "A2", "title": "X", "imageURL": ["only-small.jpg"], "imageURLHighRes": []},
        ),
    )
    bad = BadRecords()
    p1, p2 = amazon.read_products(meta, "2018", bad)
    assert p1 == Product("A1", "Card", "Line one line two", "B", ["Gift Cards", "Gift Cards"], "big.jpg")
    assert p2.image_url == "only-small.jpg" and p2.categories == [] and p2.description is None

    rev = write_gz(
        tmp_path / "Cat_5.json.gz",
        jl({"reviewerID": "R1", "asin": "A1", "overall": 5.0, "unixReviewTime": 1529193600}),
    )
    assert list(amazon.read_reviews(rev, "2018", bad)) == [Review("R1", "A1", 5.0, 1529193600)]

    csv = tmp_path / "Cat.csv"
    csv.write_bytes(b"A1,R1,5.0,1529193600\r\nA2,R2,3.0,1529193601\nA3,R3,only-three\n\nA4,R4,x,17\n")
    got = list(amazon.read_reviews(csv, "2018", bad))
    assert got == [
        Review("R1", "A1", 5.0, 1529193600),
        Review("R2", "A2", 3.0, 1529193601),
        Review("R4", "A4", None, 17),
    ]
    assert bad.counts[amazon.BAD_CSV] == 1
    assert bad.examples[amazon.BAD_CSV][0]["line"] == 3
    assert bad.counts[amazon.BAD_RATING] == 1 and bad.dropped_counts[amazon.BAD_RATING] == 0


def test_2014_ratings_csv_is_user_first(tmp_path: Path) -> None:
    csv = tmp_path / "ratings_Baby.csv"
    csv.write_text("user,item,rating,timestamp\nU1,I1,4.0,100\n")
    bad = BadRecords()
    assert list(amazon.read_reviews(csv, "2014", bad)) == [Review("U1", "I1", 4.0, 100)]
    assert bad.total == 0  # a header row is recognised, not reported


# --- 2014 -----------------------------------------------------------------------------------
def test_2014_python_literal_meta_is_parsed_without_eval(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    lines = [
        "{'asin': '0000031852', 'title': 'Girls Ballet Tutu', 'description': 'A tutu.', "
        "'brand': None, 'categories': [['Sports & Outdoors', 'Dance'], ['Clothing', 'Dance']], "
        "'imUrl': 'http://x/1.jpg', 'salesRank': {'Toys & Games': 211836}, 'price': 3.17}",
        f"__import__('pathlib').Path({str(sentinel)!r}).write_text('x')",
        '{"asin": "B2", "title": "json line in a 2014 file"}',
    ]
    meta = write_gz(tmp_path / "meta_Baby.json.gz", lines)
    bad = BadRecords()
    products = list(amazon.read_products(meta, "2014", bad))
    assert not sentinel.exists()  # the malicious line was never executed
    assert products[0] == Product(
        "0000031852",
        "Girls Ballet Tutu",
        "A tutu.",
        None,
        ["Sports & Outdoors", "Dance", "Clothing", "Dance"],
        "http://x/1.jpg",
    )
    assert [p.asin for p in products] == ["0000031852", "B2"]
    assert bad.counts == {amazon.INVALID_LITERAL: 1}
    assert bad.examples[amazon.INVALID_LITERAL][0]["line"] == 2

    rev = write_gz(
        tmp_path / "reviews_Baby_5.json.gz",
        jl({"reviewerID": "R", "asin": "0000031852", "overall": 2.0, "unixReviewTime": 5}),
    )
    assert list(amazon.read_reviews(rev, "2014", bad)) == [Review("R", "0000031852", 2.0, 5)]


# --- damage ---------------------------------------------------------------------------------
def good_review(n: int) -> str:
    return json.dumps({"reviewerID": f"U{n}", "asin": f"I{n % 7}", "overall": 4.0, "unixReviewTime": 1000 + n})


def test_malformed_json_lines_are_counted_with_their_line(tmp_path: Path) -> None:
    lines = [
        good_review(0),
        '{"reviewerID": "U1", "asin": ',
        good_review(2),
        "not json at all",
        "",
        "[1, 2]",
        good_review(6),
    ]
    path = write_gz(tmp_path / "r.json.gz", lines)
    bad = BadRecords()
    got = list(amazon.read_reviews(path, "2018", bad))
    assert [r.reviewer_id for r in got] == ["U0", "U2", "U6"]
    assert bad.counts == {amazon.INVALID_JSON: 2, amazon.NOT_OBJECT: 1}
    assert [e["line"] for e in bad.examples[amazon.INVALID_JSON]] == [2, 4]
    assert bad.examples[amazon.NOT_OBJECT][0]["line"] == 6
    assert bad.examples[amazon.INVALID_JSON][0]["file"] == "r.json.gz"
    assert bad.dropped == 3


def test_truncated_gzip_keeps_every_complete_line_and_reports_the_cut(tmp_path: Path) -> None:
    import random

    rng = random.Random(0)  # incompressible-ish text so the cut lands mid-stream
    lines = [
        json.dumps(
            {
                "reviewerID": f"U{n}",
                "asin": "I",
                "overall": 1.0,
                "unixReviewTime": n,
                "reviewText": "".join(rng.choice("abcdefghij ") for _ in range(200)),
            }
        )
        for n in range(2000)
    ]
    full = gzip.compress(("\n".join(lines) + "\n").encode())
    path = tmp_path / "cut.json.gz"
    path.write_bytes(full[: len(full) * 6 // 10])
    bad = BadRecords()
    got = list(amazon.read_reviews(path, "2018", bad))
    n = len(got)
    assert 0 < n < 2000
    assert [r.timestamp for r in got] == list(range(n))  # a prefix, in order, none lost before the cut
    assert bad.counts[amazon.TRUNCATED] == 1
    cut_line = bad.examples[amazon.TRUNCATED][0]["line"]
    assert cut_line in (n + 1, n + 2)  # the line the stream broke in
    # the partial last line is reported as malformed, not silently dropped
    assert bad.counts[amazon.INVALID_JSON] == 1


def test_corrupt_gzip_body_is_reported_not_raised(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(("\n".join(good_review(n) for n in range(500)) + "\n").encode()))
    data[len(data) // 2 : len(data) // 2 + 40] = b"\xff" * 40
    path = tmp_path / "corrupt.json.gz"
    path.write_bytes(bytes(data))
    bad = BadRecords()
    got = list(amazon.read_reviews(path, "2018", bad))
    assert len(got) < 500
    assert bad.counts[amazon.TRUNCATED] == 1


def test_wrong_encoding_is_replaced_counted_and_kept(tmp_path: Path) -> None:
    latin1 = '{"asin": "A1", "title": "Caf\xe9 card", "brand": "Z\xfcrich"}'.encode("latin-1")
    path = write_gz(tmp_path / "meta.json.gz", [b'{"asin": "A0", "title": "ok"}', latin1])
    bad = BadRecords()
    products = list(amazon.read_products(path, "2018", bad))
    assert [p.asin for p in products] == ["A0", "A1"]
    assert products[1].title == "Caf\ufffd card" and products[1].brand == "Z\ufffdrich"
    assert bad.counts == {amazon.BAD_UTF8: 1}
    assert bad.dropped == 0
    assert bad.examples[amazon.BAD_UTF8][0]["line"] == 2


def test_lone_surrogate_escape_cannot_break_the_parquet_write(tmp_path: Path) -> None:
    path = write_gz(tmp_path / "meta.json.gz", ['{"asin": "A1", "title": "bad \\ud800 escape"}'])
    (p,) = amazon.read_products(path, "2018", BadRecords())
    p.title.encode("utf-8")  # would raise UnicodeEncodeError if the surrogate survived
    assert p.title.startswith("bad ") and p.title.endswith(" escape")


def test_empty_fields(tmp_path: Path) -> None:
    meta = write_gz(
        tmp_path / "meta.json.gz",
        jl(
            {"asin": "", "title": "no asin"},
            {
                "asin": "A1",
                "title": "  ",
                "description": ["", ""],
                "brand": "",
                "category": ["", None],
                "imageURL": [""],
                "imageURLHighRes": [],
            },
        ),
    )
    rev = write_gz(
        tmp_path / "r.json.gz",
        jl(
            {"reviewerID": "", "asin": "A1", "overall": 5.0, "unixReviewTime": 1},
            {"reviewerID": "U1", "asin": "", "overall": 5.0, "unixReviewTime": 1},
            {"reviewerID": "U1", "asin": "A1", "overall": None, "unixReviewTime": 1},
            {"reviewerID": "U2", "asin": "A1", "overall": "five", "unixReviewTime": 2},
            {"reviewerID": "U3", "asin": "A1", "overall": 5.0},
            {"reviewerID": "U4", "asin": "A1", "overall": 5.0, "unixReviewTime": "77"},
        ),
    )
    bad = BadRecords()
    assert list(amazon.read_products(meta, "2018", bad)) == [Product("A1")]
    got = list(amazon.read_reviews(rev, "2018", bad))
    assert got == [Review("U1", "A1", None, 1), Review("U2", "A1", None, 2), Review("U4", "A1", 5.0, 77)]
    assert bad.counts == {amazon.MISSING_ASIN: 2, amazon.MISSING_USER: 1, amazon.BAD_RATING: 1, amazon.BAD_TIMESTAMP: 1}
    assert bad.dropped_counts[amazon.BAD_RATING] == 0  # repaired, kept


def test_plain_and_mislabelled_and_multimember_files(tmp_path: Path) -> None:
    lines = [good_review(n) for n in range(10)]
    plain = tmp_path / "Cat.jsonl.gz"  # uncompressed under a .gz name (the HF mirror does this)
    plain.write_text("\n".join(lines))  # and no newline at the end
    multi = tmp_path / "multi.json.gz"
    multi.write_bytes(
        gzip.compress("\n".join(lines[:4]).encode() + b"\n") + gzip.compress(("\n".join(lines[4:]) + "\n").encode())
    )
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode())
    for path in (plain, multi, bom):
        bad = BadRecords()
        got = list(amazon.read_reviews(path, "2018", bad))
        assert [r.timestamp for r in got] == [1000 + n for n in range(10)], path.name
        assert bad.total == 0, (path.name, bad.as_dict())


def test_line_batches_cross_block_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(amazon, "BLOCK", 7)  # lines longer than a block must be reassembled
    lines = [good_review(n) for n in range(30)]
    path = write_gz(tmp_path / "r.json.gz", lines)
    got = [line for _, batch in amazon.iter_line_batches(path, BadRecords()) for line in batch]
    assert got == [x.encode() for x in lines]


def test_unknown_release_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2014"):
        list(amazon.read_reviews(tmp_path / "x.json.gz", "2019", BadRecords()))


def test_bad_records_keeps_few_examples_and_merges() -> None:
    a, b = BadRecords(max_examples=2), BadRecords()
    for n in range(5):
        a.add("f.gz", n, "r1")
    b.add("g.gz", 9, "r2", "detail", dropped=False)
    a.merge(b)
    d = a.as_dict()
    assert d["total"] == 6 and d["dropped"] == 5
    assert d["by_reason"] == {"r1": 5, "r2": 1}
    assert [e["line"] for e in d["examples"]["r1"]] == [0, 1]
    assert d["examples"]["r2"] == [{"file": "g.gz", "line": 9, "detail": "detail", "dropped": False}]


def test_fast_arrow_path_and_careful_python_path_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Clean blocks go through Arrow, damaged ones line by line: same records, same reports."""
    rng = __import__("random").Random(1)
    lines: list[bytes] = []
    for n in range(3000):
        rec = {
            "user_id": f"U{rng.randrange(300)}",
            "parent_asin": f"P{rng.randrange(90)}",
            "asin": "C",
            "rating": float(rng.randint(1, 5)),
            "timestamp": 1_500_000_000_000 + n,
            "text": "x" * rng.randrange(80),
        }
        lines.append(json.dumps(rec).encode())
    damage = {
        100: b'{"user_id": "U1", "parent_asin": ',
        400: json.dumps({"user_id": "U2", "parent_asin": "P1", "rating": "five", "timestamp": 1}).encode(),
        900: json.dumps({"user_id": "", "parent_asin": "P1", "rating": 1.0, "timestamp": 1}).encode(),
        1300: b"",
        1700: '{"user_id": "Caf\xe9", "parent_asin": "P1", "rating": 2.0, "timestamp": 5}'.encode("latin-1"),
        2100: b'{"user_id": "U3", "parent_asin": "P2", "rating": 3.0, "timestamp": 7, "text": "\\ud800"}',
        2500: json.dumps({"user_id": "U4", "asin": "A9", "rating": None, "timestamp": 1.6e12}).encode(),
        2900: b'{"user_id": "U5", "parent_asin": "P3", "rating": 4.0, "timestamp": 9, "text": "\xff"}',
    }
    for at, line in damage.items():
        lines[at] = line
    path = write_gz(tmp_path / "Toys.jsonl.gz", lines)
    monkeypatch.setattr(amazon, "BLOCK", 2048)  # many small blocks: most clean, some damaged

    fallbacks = []
    careful = amazon._python_block
    monkeypatch.setattr(amazon, "_python_block", lambda *a: fallbacks.append(a[1]) or careful(*a))
    fast_bad = BadRecords()
    batches = list(amazon.read_review_batches(path, "2023", fast_bad))
    fast = [r for b in batches for r in b.reviews()]

    slow_bad = BadRecords()
    body = b"\n".join(lines) + b"\n"
    slow = list(careful(path, 1, body, "2023", slow_bad))

    assert fast == slow
    assert fast_bad.as_dict() == slow_bad.as_dict()
    assert 3 <= len(fallbacks) <= len(damage) < len(batches)  # the fast path did most blocks
    assert len(fast) == 3000 - 3  # malformed, missing user, blank line; the rest kept or repaired
    assert Review("U4", "A9", None, 1_600_000_000) in fast
    assert Review("Caf\ufffd", "P1", 2.0, 0) in fast
    assert fast_bad.counts[amazon.BAD_UTF8] == 2 and fast_bad.counts[amazon.BAD_RATING] == 1


def test_review_format_is_sniffed_when_the_name_does_not_say(tmp_path: Path) -> None:
    csv, js = tmp_path / "ratings.txt", tmp_path / "reviews.dat"
    csv.write_text("I1,U1,5.0,100\n")
    js.write_bytes(gzip.compress(b'\n{"reviewerID": "U1", "asin": "I1", "overall": 5.0, "unixReviewTime": 100}\n'))
    assert (amazon.review_format(csv), amazon.review_format(js)) == ("csv", "json")
    for path in (csv, js):
        assert list(amazon.read_reviews(path, "2018", BadRecords())) == [Review("U1", "I1", 5.0, 100)]


def test_review_batch_round_trip_and_schema_check() -> None:
    import pyarrow as pa

    from pipelines.records import ReviewBatch

    reviews = [Review("U1", "I1", None, 5), Review("U2", "I2", 3.5, 6)]
    batch = ReviewBatch.from_reviews(reviews)
    assert len(batch) == 2 and list(batch.reviews()) == reviews
    with pytest.raises(ValueError, match="schema"):
        ReviewBatch(pa.table({"reviewer_id": ["U1"]}))


def test_out_of_range_timestamps_are_rejected_not_crashing(tmp_path: Path) -> None:
    path = write_gz(
        tmp_path / "r.json.gz",
        [
            '{"reviewerID": "U1", "asin": "A", "overall": 1.0, "unixReviewTime": 1180591620717411303424}',
            '{"reviewerID": "U2", "asin": "A", "overall": 1.0, "unixReviewTime": -5}',
            '{"reviewerID": "U3", "asin": "A", "overall": 1.0, "unixReviewTime": 12}',
        ],
    )
    bad = BadRecords()
    assert [r.reviewer_id for b in amazon.read_review_batches(path, "2018", bad) for r in b.reviews()] == ["U3"]
    assert bad.counts == {amazon.BAD_TIMESTAMP: 2}
    assert [e["line"] for e in bad.examples[amazon.BAD_TIMESTAMP]] == [1, 2]


def test_millisecond_times_in_2018_lines_are_converted_and_counted(tmp_path: Path) -> None:
    from pipelines.amazon import MILLIS_TIMESTAMP

    path = tmp_path / "ms_5.json"
    lines = [
        {"reviewerID": f"U{k}", "asin": "B1", "overall": 5.0, "unixReviewTime": 1546300800 * (1000 if k % 2 else 1)}
        for k in range(6)
    ]
    path.write_text("".join(json.dumps(o) + "\n" for o in lines))
    bad = BadRecords()
    batches = list(amazon.read_review_batches(path, "2018", bad))
    assert [t for b in batches for t in b.table.column("timestamp").to_pylist()] == [1546300800] * 6
    assert bad.counts[MILLIS_TIMESTAMP] == 3 and bad.dropped == 0 and bad.lines_read["ms_5.json"] == 6
