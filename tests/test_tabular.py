"""Bring-your-own interactions (release='csv'): CSV / TSV / Parquet, renamed columns, bad rows
with their line, a given split kept, metadata as a table or any Amazon release file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import tabular
from pipelines.amazon import (
    BAD_CSV,
    BAD_RATING,
    BAD_TIMESTAMP,
    MISSING_ASIN,
    MISSING_USER,
)
from pipelines.ingest import RELEASES, ingest
from pipelines.records import BadRecords
from store import schemas
from store.layout import dataset_paths
from store.tables import read_table

N_USERS, N_ITEMS = 12, 6


def grid(split: bool = False) -> list[dict]:
    """Every user rates every item: a 6-core, so k-core keeps it all."""
    rows = []
    for u in range(N_USERS):
        for i in range(N_ITEMS):
            row = {
                "uid": f"U{u:02d}",
                "sku": f"I{i}",
                "stars": str(1 + (u + i) % 5),
                "when": str(1_500_000_000 + 3600 * i),
            }
            if split:
                row["part"] = ("train", "train", "train", "train", "valid", "test")[i]
            rows.append(row)
    return rows


def write_delimited(path: Path, rows: list[dict], sep: str, extra: list[str] = ()) -> Path:
    names = list(rows[0])
    lines = [sep.join(names)] + [sep.join(r[n] for n in names) for r in rows] + list(extra)
    path.write_text("\n".join(lines) + "\n")
    return path


COLUMNS = "user=uid,item=sku,rating=stars,timestamp=when"


def test_parse_columns_and_unknown_roles() -> None:
    assert tabular.parse_columns("user=reviewerID, item=asin") == {"user": "reviewerID", "item": "asin"}
    assert tabular.parse_columns({"rating": "stars"}) == {"rating": "stars"}
    with pytest.raises(ValueError, match=r"unknown role\(s\) usr; the roles are user, item, rating"):
        tabular.parse_columns("usr=a")
    with pytest.raises(ValueError, match="is not ROLE=COLUMN"):
        tabular.parse_columns("user")


def test_missing_column_names_the_file_the_columns_and_the_option(tmp_path: Path) -> None:
    path = write_delimited(tmp_path / "mine.csv", grid(), ",")
    with pytest.raises(
        ValueError,
        match=r"mine.csv: cannot find column\(s\) for role user, item: user.*columns found: uid, sku, stars, when.*--columns",
    ):
        tabular.read_interactions(path, BadRecords())
    with pytest.raises(ValueError, match=r"rating=score \(no such column\)"):
        tabular.read_interactions(path, BadRecords(), "user=uid,item=sku,rating=score")


def test_csv_bad_rows_are_counted_with_their_line(tmp_path: Path) -> None:
    rows = grid()
    rows[3]["uid"] = ""  # line 5: no user
    rows[5]["sku"] = " "  # line 7: no item
    rows[7]["when"] = "yesterday"  # line 9: bad timestamp
    rows[8]["stars"] = "five"  # line 10: bad rating, kept
    rows[9]["when"] = "2017-07-14T02:40:00Z"  # ISO: fine
    path = write_delimited(tmp_path / "mine.csv", rows, ",", extra=["", "U99,I1,3"])
    bad = BadRecords()
    batch, used = tabular.read_interactions(path, bad, COLUMNS)
    assert used == {"user": "uid", "item": "sku", "rating": "stars", "timestamp": "when"}
    assert len(batch) == len(rows) - 3
    ex = bad.as_dict()["examples"]
    assert [(e["file"], e["line"]) for e in ex[MISSING_USER]] == [("mine.csv", 5)]
    assert [e["line"] for e in ex[MISSING_ASIN]] == [7]
    assert [e["line"] for e in ex[BAD_TIMESTAMP]] == [9]
    assert [(e["line"], e["dropped"]) for e in ex[BAD_RATING]] == [(10, False)]
    assert [e["line"] for e in ex[BAD_CSV]] == [len(rows) + 3]  # after a blank line, one field short
    t = batch.table.to_pydict()
    assert sorted(set(t["timestamp"])) == [1_500_000_000 + 3600 * i for i in range(N_ITEMS)]
    iso = [ts for u, s, ts in zip(t["reviewer_id"], t["asin"], t["timestamp"]) if (u, s) == ("U01", "I3")]
    assert iso == [1_500_000_000]  # 2017-07-14T02:40:00Z
    r = [x for u, s, x in zip(t["reviewer_id"], t["asin"], t["rating"]) if (u, s) == ("U01", "I2")]
    assert r == [None]  # 'five' → no rating, record kept
    assert all(v is None for v in t["split"])


def test_tsv_and_parquet_with_renamed_columns_give_the_same_tables(tmp_path: Path, home: Path) -> None:
    rows = grid()
    tsv = write_delimited(tmp_path / "mine.tsv", rows, "\t")
    table = pa.table({k: [r[k] for r in rows] for k in rows[0]})
    table = table.set_column(2, "stars", pa.array([float(r["stars"]) for r in rows]))
    table = table.set_column(3, "when", pa.array([int(r["when"]) * 10**6 for r in rows], pa.timestamp("us")))
    parquet = tmp_path / "mine.parquet"
    pq.write_table(table, parquet)
    got = []
    for name, path in (("t", tsv), ("p", parquet)):
        report = ingest(name, "csv", reviews=str(path), columns=COLUMNS, home=home, progress=False)
        assert report["sources"]["reviews"]["columns"]["rating"] == "stars"
        assert report["metadata"]["meta_check"] == "not checked" and report["bad_records"]["total"] == 0
        got.append(read_table(dataset_paths(name, home).interactions, schemas.INTERACTIONS).to_pydict())
    assert got[0] == got[1] and len(got[0]["user_id"]) == len(rows)
    assert sorted(set(got[0]["rating"])) == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_a_given_split_is_kept_and_an_unknown_value_counted(tmp_path: Path, home: Path) -> None:
    rows = grid(split=True)
    rows += [{"uid": "U00", "sku": "I9", "stars": "1", "when": "1", "part": "holdout"}]
    path = write_delimited(tmp_path / "mine.csv", rows, ",")
    report = ingest("s", "csv", reviews=str(path), columns=COLUMNS + ",split=part", home=home, progress=False)
    assert report["split"]["rule"].startswith("given") and report["split"]["seed"] is None
    assert report["bad_records"]["by_reason"] == {tabular.BAD_SPLIT: 1}
    assert report["bad_records"]["examples"][tabular.BAD_SPLIT][0]["line"] == len(rows) + 1
    inter = read_table(dataset_paths("s", home).interactions, schemas.INTERACTIONS).to_pydict()
    items = read_table(dataset_paths("s", home).items, schemas.ITEMS).column("asin").to_pylist()
    want = {f"I{i}": ("train", "train", "train", "train", "valid", "test")[i] for i in range(N_ITEMS)}
    assert [want[items[i]] for i in inter["item_id"]] == inter["split"]
    assert report["split"]["sizes"] == {"train": 4 * N_USERS, "valid": N_USERS, "test": N_USERS}

    rows[0]["part"] = ""  # incomplete: the rule assigns the split, and the report says why
    path = write_delimited(tmp_path / "mine.csv", rows[:-1], ",")
    report = ingest("s2", "csv", reviews=str(path), columns=COLUMNS + ",split=part", home=home, progress=False)
    assert report["split"]["given"] is False and "1 kept interaction(s) have no split" in report["split"]["note"]


def test_metadata_table_with_pipes_json_lists_and_local_images(tmp_path: Path, home: Path) -> None:
    inter = write_delimited(tmp_path / "mine.csv", grid(), ",")
    (tmp_path / "img").mkdir()
    lines = ["asin\ttitle\tbrand\tcategories\timage_path"]
    for i in range(N_ITEMS):
        cats = "Toys|Robots" if i % 2 else json.dumps(["Toys", "Cars"])
        lines.append(f"I{i}\t<b>Item {i}</b>\tAcme\t{cats}\timg/I{i}.jpg")
    lines.append("\tno asin\t\t\t")
    meta = tmp_path / "items.tsv"
    meta.write_text("\n".join(lines) + "\n")
    report = ingest("m", "csv", reviews=str(inter), meta=str(meta), columns=COLUMNS, home=home, progress=False)
    assert report["sources"]["meta"]["format"] == "table" and report["metadata"]["meta_check"] == "passed"
    assert report["bad_records"]["examples"][MISSING_ASIN][0]["line"] == N_ITEMS + 2
    items = read_table(dataset_paths("m", home).items, schemas.ITEMS).to_pylist()
    assert items[1]["title"] == "Item 1" and items[1]["categories"] == ["Toys", "Robots"]
    assert items[0]["categories"] == ["Toys", "Cars"]
    assert items[2]["image_url"] == "raw/images/I2.jpg"  # dataset-relative, no machine path (pipelines.image_paths)


def test_amazon_metadata_release_is_detected(tmp_path: Path, home: Path) -> None:
    inter = write_delimited(tmp_path / "mine.csv", grid(), ",")
    meta = tmp_path / "meta.json.gz"
    with gzip.open(meta, "wt") as fh:
        for i in range(N_ITEMS):
            fh.write(
                json.dumps(
                    {
                        "parent_asin": f"I{i}",
                        "title": f"T{i}",
                        "main_category": "Toys",
                        "images": [{"large": f"http://x/{i}.jpg", "variant": "MAIN"}],
                    }
                )
                + "\n"
            )
    report = ingest("a", "csv", reviews=str(inter), meta=str(meta), columns=COLUMNS, home=home, progress=False)
    assert report["sources"]["meta"]["format"] == "2023"
    items = read_table(dataset_paths("a", home).items, schemas.ITEMS).to_pylist()
    assert [it["title"] for it in items] == [f"T{i}" for i in range(N_ITEMS)]
    assert items[3]["image_url"] == "http://x/3.jpg"


def test_csv_release_needs_reviews_and_columns_only_for_csv(home: Path) -> None:
    assert "csv" in RELEASES
    with pytest.raises(ValueError, match="--release csv needs --reviews"):
        ingest("x", "csv", home=home)
    with pytest.raises(
        ValueError, match="--columns, --meta-columns, --no-header and --train/--valid/--test apply to --release csv"
    ):
        ingest("x", "2018", category="Gift_Cards", columns="user=a", home=home)


@pytest.mark.integration
def test_real_gift_cards_as_csv_equals_the_2018_ingest(shared_data: Path, tmp_path: Path, home: Path) -> None:
    src = shared_data / "amazon2018-giftcards"
    with gzip.open(src / "Gift_Cards_5.json.gz", "rt") as fh:
        reviews = [json.loads(line) for line in fh]
    table = pa.table(
        {
            "reviewerID": [r["reviewerID"] for r in reviews],
            "asin": [r["asin"] for r in reviews],
            "overall": [r["overall"] for r in reviews],
            "unixReviewTime": [r["unixReviewTime"] for r in reviews],
        }
    )
    csv_path = tmp_path / "gift.csv"
    import pyarrow.csv as pacsv

    pacsv.write_csv(table, csv_path)
    a = ingest(
        "csv", "csv", reviews=str(csv_path), meta=str(src / "meta_Gift_Cards.json.gz"), home=home, progress=False
    )
    b = ingest(
        "j",
        "2018",
        reviews=str(src / "Gift_Cards_5.json.gz"),
        meta=str(src / "meta_Gift_Cards.json.gz"),
        home=home,
        progress=False,
    )
    assert a["sources"]["meta"]["format"] == "2018" and a["steps"] == b["steps"]
    assert a["split"]["hash"] == b["split"]["hash"]
    for name in ("items", "interactions"):
        ta = read_table(getattr(dataset_paths("csv", home), name))
        tb = read_table(getattr(dataset_paths("j", home), name))
        assert ta.equals(tb), name
    assert np.isfinite(a["metadata"]["match_ratio"]) and a["metadata"]["match_ratio"] == 1.0


def test_header_is_decided_from_the_first_two_rows() -> None:
    path, names = Path("f.tsv"), tabular._ALL_DEFAULT_NAMES
    assert tabular.decide_header(path, [["user", "item"], ["A1B2C3D4E5", "B00000JBLH"]], names) is True
    assert tabular.decide_header(path, [["A32T2H8150OJLU", "B00000JBLH", "5.0"], ["A1", "B1", "4"]], names) is False
    assert tabular.decide_header(path, [["who", "what", "stars"], ["ann", "pen", "5"]], names) is True
    assert tabular.decide_header(path, [["ann", "pen", "2021-03-01"], ["bob", "cup", "2021-03-02"]], names) is False
    with pytest.raises(
        ValueError,
        match=r"cannot tell whether row 1 is a header: row 1 \['ann', 'pen'\], row 2 "
        r"\['bob', 'cup'\].*--no-header --columns \"user=0,item=1\"",
    ):
        tabular.decide_header(path, [["ann", "pen"], ["bob", "cup"]], names)
    # a user who names columns after row 1's values (the old hint) while row 1 looks like data: stop, never drop it
    with pytest.raises(ValueError, match="cannot tell whether row 1 is a header"):
        tabular.decide_header(path, [["A32T2H8150OJLU", "B00000JBLH"], ["A1", "B1"]], names | {"A32T2H8150OJLU"})


def test_positional_columns_and_time_alias_read_every_row(tmp_path: Path) -> None:
    path = tmp_path / "nohead.tsv"
    path.write_text("A32T2H8150OJLU\tB00000JBLH\t5.0\t1546300800123\nA2\tB00000JBLI\t4\t2019-01-01T00:00:00Z\n")
    bad, notes = BadRecords(), {}
    batch, used = tabular.read_interactions(path, bad, "user=0,item=1,rating=2,time=3", notes=notes)
    assert used == {"user": "0", "item": "1", "rating": "2", "timestamp": "3"} and notes["header"] is False
    assert batch.table.column("reviewer_id").to_pylist() == ["A32T2H8150OJLU", "A2"]
    assert batch.table.column("timestamp").to_pylist() == [1546300800, 1546300800]
    assert dict(notes["timestamp_units"]) == {"milliseconds": 1, "iso": 1}
    assert bad.lines_read["nohead.tsv"] == 2 and bad.header_lines["nohead.tsv"] == 0
    with pytest.raises(ValueError, match=r"nohead.tsv: --columns names column 7 but the file has 4 column"):
        tabular.read_interactions(path, BadRecords(), "user=0,item=7")
