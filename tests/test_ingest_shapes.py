"""Every file shape a user brings, through `anchorrec ingest`, and no row lost on the way (issue 31).

Each test runs the command line as a subprocess in one shared home (one Prefect server for the
module) and checks the exit code, how many lines it said, and the counts in prepare.json; every
successful ingest must account for each line it read (header, blank, rejected, merged, removed by
k-core, kept) and the parts must add up to the lines read.
"""

from __future__ import annotations

import gzip
import json
import subprocess
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_helpers import run_cli, user_env

from store import schemas
from store.layout import dataset_paths
from store.tables import read_table

REPO = Path(__file__).resolve().parents[1]
GIFT = REPO.parent / "shared" / "data" / "amazon2018-giftcards"
BABY = REPO.parent / "shared" / "data" / "mmrec-baby"


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("shapes")
    return user_env(root / "home", root / "prefect", COLUMNS="160")


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return run_cli(env, *args)


def ingest(env: dict, dataset: str, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    proc = cli(env, "ingest", "--dataset", dataset, *args)
    report_path = dataset_paths(dataset, env["ANCHORREC_HOME"]).prepare_report
    report = json.loads(report_path.read_text()) if proc.returncode == 0 else {}
    return proc, report


def said(proc: subprocess.CompletedProcess) -> list[str]:
    """The lines a user reads (progress-bar redraws aside)."""
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip() and "\r" not in ln and "%|" not in ln]


def one_error(proc: subprocess.CompletedProcess) -> str:
    lines = said(proc)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def succeeded(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = said(proc)
    assert sum(ln.startswith("ingest: ") for ln in lines) == 1, lines
    assert not any("error" in ln.lower() or "Traceback" in ln for ln in lines), lines


def balanced(report: dict, lines: int, *, header: int = 0, blank: int = 0, rejected: dict | None = None) -> dict:
    rows = report["rows"]
    assert rows["lines_read"] == lines
    assert rows["header"] == header and rows["blank"] == blank
    assert rows["rejected_by_reason"] == (rejected or {}) and rows["rejected"] == sum((rejected or {}).values())
    assert rows["kept"] == report["output"]["interactions"]
    parts = ("header", "blank", "rejected", "merged_duplicates", "removed_by_kcore", "kept")
    assert sum(rows[p] for p in parts) == lines and rows["balanced"] is True
    return rows


def interactions(env: dict, dataset: str) -> list[dict]:
    return read_table(dataset_paths(dataset, env["ANCHORREC_HOME"]).interactions, schemas.INTERACTIONS).to_pylist()


def items(env: dict, dataset: str) -> list[dict]:
    return read_table(dataset_paths(dataset, env["ANCHORREC_HOME"]).items, schemas.ITEMS).to_pylist()


def grid(n_users: int = 12, n_items: int = 8, per_user: int = 6) -> list[tuple[str, str, float, int]]:
    """Reviewer-id-shaped users, ASIN-shaped items, every user with `per_user` items (a 5-core)."""
    rows = []
    for u in range(n_users):
        for k in range(per_user):
            rows.append(
                (
                    f"A{u:03d}X7Q2ZPLM",
                    f"B00{(u + k) % n_items:07d}",
                    float(1 + (u + k) % 5),
                    1_500_000_000 + 86_400 * (u * per_user + k),
                )
            )
    return rows


# --------------------------------------------------------------------------- 1. no row lost
def test_headerless_tsv_stops_with_the_positions_then_keeps_every_row(env: dict, tmp_path: Path) -> None:
    rows = grid()
    path = tmp_path / "train.tsv"  # the file: user<TAB>ASIN<TAB>rating, no header
    path.write_text("".join(f"{u}\t{i}\t{r}\n" for u, i, r, _ in rows))

    stop = one_error(cli(env, "ingest", "--dataset", "headless", "--release", "csv", "--reviews", str(path)))
    assert "train.tsv has no header" in stop and "'A000X7Q2ZPLM', 'B000000000', '1.0'" in stop
    assert '--columns "user=0,item=1,rating=2"' in stop

    proc, report = ingest(
        env, "headless", "--release", "csv", "--reviews", str(path), "--columns", "user=0,item=1,rating=2"
    )
    succeeded(proc)
    balanced(report, len(rows))
    assert report["output"]["interactions"] == len(rows)  # the first row too
    assert report["sources"]["reviews"]["header"] is False
    first = [r for r in interactions(env, "headless") if r["rating"] == rows[0][2]]
    assert len(first) == sum(r[2] == rows[0][2] for r in rows)


def test_ambiguous_first_row_stops_showing_both_ways_and_no_header_reads_it(env: dict, tmp_path: Path) -> None:
    users, things = ["alice", "bob", "carol", "dave", "erin", "frank"], ["kettle", "lamp", "mug", "pan", "pot", "cup"]
    rows = [(u, things[(k + j) % 6]) for k, u in enumerate(users) for j in range(5)]
    path = tmp_path / "words.csv"
    path.write_text("".join(f"{u},{t}\n" for u, t in rows))
    stop = one_error(cli(env, "ingest", "--dataset", "words", "--release", "csv", "--reviews", str(path)))
    assert "cannot tell whether row 1 is a header: row 1 ['alice', 'kettle'], row 2 ['alice', 'lamp']" in stop
    assert '--columns "user=alice,item=kettle"' in stop and '--no-header --columns "user=0,item=1"' in stop

    proc, report = ingest(
        env, "words", "--release", "csv", "--reviews", str(path), "--no-header", "--columns", "user=0,item=1"
    )
    succeeded(proc)
    balanced(report, len(rows))
    assert report["output"] == {"items": 6, "users": 6, "interactions": len(rows)}


def test_row_counts_add_up_on_every_format(env: dict, tmp_path: Path, shared_data: Path) -> None:
    """Amazon 2014 / 2018 / 2023 lines, CSV, TSV, Parquet and MMRec: each line read is accounted for."""
    with gzip.open(GIFT / "Gift_Cards_5.json.gz", "rt") as fh:
        reviews = [json.loads(line) for line in fh]
    pairs = Counter((r["reviewerID"], r["asin"]) for r in reviews)
    merged = sum(n - 1 for n in pairs.values())

    def lines_2018(objs: list[dict]) -> list[str]:
        return [json.dumps(o) for o in objs]

    bad_json = {"malformed line (not JSON)": 1, "missing reviewer id": 1}
    for release, make in (
        ("2014", lines_2018),
        ("2018", lines_2018),
        (
            "2023",
            lambda objs: [
                json.dumps(
                    {
                        "user_id": o["reviewerID"],
                        "parent_asin": o["asin"],
                        "rating": o["overall"],
                        "timestamp": o["unixReviewTime"] * 1000,
                    }
                )
                for o in objs
            ],
        ),
    ):
        body = make(reviews)
        body[10:10] = ["{not json", "", json.dumps({"asin": "B0X", "overall": 5.0, "unixReviewTime": 1})]
        if release == "2023":
            body[12] = json.dumps({"parent_asin": "B0X", "rating": 5.0, "timestamp": 1000})
        path = tmp_path / f"reviews_{release}.json.gz"
        path.write_bytes(gzip.compress(("\n".join(body) + "\n").encode()))
        proc, report = ingest(env, f"fmt{release}", "--release", release, "--reviews", str(path))
        succeeded(proc)
        rejected = dict(bad_json)
        if release == "2014":  # 2014 lines may be Python literals: the reason says so
            rejected = {"malformed line (not a JSON or Python literal)": 1, "missing reviewer id": 1}
        rows = balanced(report, len(body), blank=1, rejected=rejected)
        assert rows["merged_duplicates"] == merged, release

    table = [(r["reviewerID"], r["asin"], r["overall"], r["unixReviewTime"]) for r in reviews]
    bad_table = {"missing reviewer id": 1, "malformed CSV row": 1}
    for fmt, sep in (("csv", ","), ("tsv", "\t")):
        body = ["user,item,rating,timestamp".replace(",", sep)] + [sep.join(map(str, t)) for t in table]
        body[5:5] = ["", sep.join(["", "B0X", "5.0", "1"]), sep.join(["A", "B", "5.0", "1", "extra"])]
        path = tmp_path / f"mine.{fmt}"
        path.write_text("\n".join(body) + "\n")
        proc, report = ingest(env, f"fmt{fmt}", "--release", "csv", "--reviews", str(path))
        succeeded(proc)
        rows = balanced(report, len(body), header=1, blank=1, rejected=bad_table)
        assert rows["merged_duplicates"] == merged, fmt
    cols = list(zip(*table))
    path = tmp_path / "mine.parquet"
    pq.write_table(
        pa.table(
            {"user": [*cols[0], None], "item": [*cols[1], "B0X"], "rating": [*cols[2], 5.0], "timestamp": [*cols[3], 1]}
        ),
        path,
    )
    proc, report = ingest(env, "fmtparquet", "--release", "csv", "--reviews", str(path))
    succeeded(proc)
    assert balanced(report, len(table) + 1, rejected={"missing reviewer id": 1})["merged_duplicates"] == merged

    src = tmp_path / "mmrec"
    src.mkdir()
    for name in ("i_id_mapping.tsv", "u_id_mapping.tsv"):
        (src / name).write_bytes((BABY / name).read_bytes())
    inter = (BABY / "baby.inter").read_text().splitlines()[:2001]
    inter[50:50] = ["", "1\tnot-a-number\t0", inter[60]]
    (src / "baby.inter").write_text("\n".join(inter) + "\n")
    proc, report = ingest(env, "fmtmmrec", "--release", "mmrec", "--source", str(src))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    balanced(
        report,
        len(inter),
        header=1,
        rejected={"empty line": 1, "itemID is not a non-negative integer": 1, "duplicate (userID, itemID) pair": 1},
    )


# --------------------------------------------------------------------------- 2. every shape through the front door
def test_three_split_files_keep_users_only_in_valid_or_test_and_train_evaluates_them(env: dict, tmp_path: Path) -> None:
    rows = grid(n_users=14, n_items=10, per_user=8)
    files: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    for n, (u, i, r, t) in enumerate(rows):
        k, user = n % 8, int(u[1:4])
        part = ("valid" if k < 3 else "test") if user < 2 else ("train" if k < 6 else "valid" if k == 6 else "test")
        files[part].append(f"{u}\t{i}\t{r}\t{t}")
    args = []
    for part, lines in files.items():
        (tmp_path / f"{part}.tsv").write_text("\n".join(lines) + "\n")
        args += [f"--{part}", str(tmp_path / f"{part}.tsv")]
    proc, report = ingest(
        env, "given", "--release", "csv", *args, "--columns", "user=0,item=1,rating=2,time=3", "--kcore", "1"
    )
    succeeded(proc)
    balanced(report, len(rows))
    split = report["split"]
    assert split["given"] is True and split["sizes"] == {k: len(v) for k, v in files.items()}
    assert split["users_without_train"] == 2 and split["interactions_of_users_without_train"] == 16
    got = Counter((r["user_id"], r["split"]) for r in interactions(env, "given"))
    assert got[(0, "valid")] == 3 and got[(0, "test")] == 5 and got[(0, "train")] == 0

    trained = cli(env, "train", "--dataset", "given", "--model", "lightgcn", "--epochs", "2", "--patience", "2")
    assert trained.returncode == 0, trained.stdout + trained.stderr
    metrics = json.loads(
        next(dataset_paths("given", env["ANCHORREC_HOME"]).root.glob("runs/lightgcn-*/metrics.json")).read_text()
    )
    assert 0.0 <= metrics["test"]["recall@20"] <= 1.0 and metrics["test"]["recall@20"] > 0


def test_no_given_split_says_no_given_split(env: dict, tmp_path: Path) -> None:
    path = tmp_path / "plain.csv"
    path.write_text("user,item,rating\n" + "".join(f"{u},{i},{r}\n" for u, i, r, _ in grid()))
    proc, report = ingest(env, "plain", "--release", "csv", "--reviews", str(path))
    succeeded(proc)
    assert "given" not in report["split"] and "note" not in report["split"]
    assert report["split"]["rule"].startswith("per user")


def test_reviews_without_metadata_train_id_only_and_content_models_stop(env: dict, shared_data: Path) -> None:
    reviews = str(GIFT / "Gift_Cards_5.json.gz")
    proc, report = ingest(env, "idonly", "--release", "2018", "--reviews", reviews)
    succeeded(proc)
    balanced(report, 2972)
    assert report["output"]["items"] == 148 - report["kcore"]["items_removed"]
    assert report["missing"]["metadata"] == report["output"]["items"] == report["missing"]["text"]
    assert report["metadata"]["meta_check"] == "not checked"

    proc, csv_report = ingest(env, "idonly-csv", "--release", "csv", "--reviews", reviews)  # JSON lines, not CSV
    succeeded(proc)
    assert csv_report["sources"]["reviews"]["format"] == "amazon 2018 reviews"
    assert csv_report["output"] == report["output"] and csv_report["split"]["hash"] == report["split"]["hash"]

    trained = cli(env, "train", "--dataset", "idonly", "--model", "lightgcn", "--epochs", "2", "--patience", "2")
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert any(ln.startswith("train: lightgcn-") for ln in said(trained))
    content = cli(env, "train", "--dataset", "idonly", "--model", "anchorrec", "--epochs", "2")
    errors = [ln for ln in said(content) if ln.startswith("error:")]
    assert content.returncode == 2 and len(errors) == 1
    assert "no usable content for anchorrec" in errors[0] and "--model lightgcn" in errors[0]


def test_metadata_table_with_its_own_column_names(env: dict, tmp_path: Path) -> None:
    rows = grid()
    reviews = tmp_path / "r.csv"
    reviews.write_text("user,item,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows))
    meta = tmp_path / "products.tsv"
    asins = sorted({i for _, i, _, _ in rows})
    meta.write_text(
        "sku\tname\tmaker\tphoto\n"
        + "".join(f"{a}\tThing {k}\tAcme\thttp://img/{a}.jpg\n" for k, a in enumerate(asins))
    )
    refused = one_error(
        cli(env, "ingest", "--dataset", "cat", "--release", "csv", "--meta", str(meta), "--columns", "asin=sku")
    )
    assert "--meta-columns" in refused
    missing = one_error(
        cli(env, "ingest", "--dataset", "tab", "--release", "csv", "--reviews", str(reviews), "--meta", str(meta))
    )
    assert "products.tsv: cannot find column(s) for role asin" in missing and "--meta-columns" in missing

    proc, report = ingest(
        env,
        "tab",
        "--release",
        "csv",
        "--reviews",
        str(reviews),
        "--meta",
        str(meta),
        "--meta-columns",
        "asin=sku,title=name,brand=maker,image=photo",
    )
    succeeded(proc)
    got = {it["asin"]: it for it in items(env, "tab")}
    assert report["metadata"]["meta_check"] == "passed" and report["missing"]["title"] == 0
    assert [got[a]["title"] for a in asins] == [f"Thing {k}" for k in range(len(asins))]
    assert all(got[a]["brand"] == "Acme" and got[a]["image_url"] == f"http://img/{a}.jpg" for a in asins)


def test_older_image_field_and_markup_only_titles(env: dict, tmp_path: Path) -> None:
    rows = grid()
    reviews = tmp_path / "Magazines_5.json.gz"
    reviews.write_bytes(
        gzip.compress(
            "".join(
                json.dumps({"reviewerID": u, "asin": i, "overall": r, "unixReviewTime": t}) + "\n"
                for u, i, r, t in rows
            ).encode()
        )
    )
    asins = sorted({i for _, i, _, _ in rows})
    span = '<span class="a-size-medium a-color-secondary a-text-normal"></span>'
    meta = []
    for k, a in enumerate(asins):
        obj = {
            "asin": a,
            "brand": "Hearst Magazines",
            "image": [f"http://img/{a}.jpg"],
            "description": [f"<b>Magazine {k}</b> is the best read of the month. Subscribe now."],
        }
        obj["title"] = span if k < 5 else "Hearst Magazines" if k < 7 else f"Magazine {k}"
        if k == 4:
            obj["description"] = []  # nothing to say: the brand is the last resort
        meta.append(json.dumps(obj))
    meta_path = tmp_path / "meta_Magazine_Subscriptions.json.gz"
    meta_path.write_bytes(gzip.compress(("\n".join(meta) + "\n").encode()))
    proc, report = ingest(env, "mags", "--release", "2018", "--reviews", str(reviews), "--meta", str(meta_path))
    succeeded(proc)
    got = {it["asin"]: it for it in items(env, "mags")}
    titles = [got[a]["title"] for a in asins]
    assert titles[:4] == [f"Magazine {k} is the best read of the month" for k in range(4)]
    assert titles[4] == "Hearst Magazines"
    assert titles[5:7] == ["Magazine 5 is the best read of the month", "Magazine 6 is the best read of the month"]
    assert titles[7:] == [f"Magazine {k}" for k in range(7, len(asins))]
    tc = report["text_cleaning"]["title"]
    assert (tc["markup_title_to_description"], tc["markup_title_to_brand"], tc["brand_title_to_description"]) == (
        4,
        1,
        2,
    )
    assert report["missing"]["image"] == 0 and all(got[a]["image_url"] == f"http://img/{a}.jpg" for a in asins)


def test_millisecond_and_iso_timestamps_are_read_as_seconds(env: dict, tmp_path: Path) -> None:
    rows = grid()
    lines = []
    for n, (u, i, r, t) in enumerate(rows):
        when = (
            str(t * 1000)
            if n % 3 == 0
            else str(t)
            if n % 3 == 1
            else __import__("datetime").datetime.fromtimestamp(t, __import__("datetime").timezone.utc).isoformat()
        )
        lines.append(f"{u},{i},{r},{when}")
    path = tmp_path / "times.csv"
    path.write_text("user,item,rating,timestamp\n" + "\n".join(lines) + "\n")
    proc, report = ingest(env, "times", "--release", "csv", "--reviews", str(path))
    succeeded(proc)
    balanced(report, len(rows) + 1, header=1)
    stamps = report["sources"]["reviews"]["timestamps"]["read_as"]
    assert stamps == {"milliseconds": 24, "seconds": 24, "iso": 24}
    assert sorted(r["timestamp"] for r in interactions(env, "times")) == sorted(t for *_, t in rows)


def test_metadata_alone_for_an_amazon_release_points_to_the_catalog_only_route(env: dict, tmp_path: Path) -> None:
    meta = tmp_path / "meta_All_Beauty.jsonl"
    meta.write_text(json.dumps({"parent_asin": "B01", "title": "Soap", "images": []}) + "\n")
    stop = one_error(cli(env, "ingest", "--dataset", "beauty", "--release", "2023", "--meta", str(meta)))
    assert "--release 2023 needs --category" in stop
    assert f"catalog-only dataset: --release csv --meta {meta}" in stop and "Catalog-only datasets" in stop
    wrong = one_error(
        cli(
            env,
            "ingest",
            "--dataset",
            "beauty",
            "--release",
            "2023",
            "--meta",
            str(meta),
            "--reviews",
            str(meta),
            "--columns",
            "user=0,item=1",
        )
    )
    assert "--columns applies to --release csv" in wrong
    half = one_error(cli(env, "ingest", "--dataset", "beauty", "--release", "csv", "--train", str(meta)))
    assert "a given split is --train FILE --test FILE" in half
