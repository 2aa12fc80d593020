"""What a user sees when the inputs are not what they should be (issue 31, items 3 and 5).

Offline downloads fail fast in one line; empty, truncated and duplicate-heavy inputs and a k-core
that leaves too little are each stated as one fact with its counts, on the screen and in
prepare.json. Every test runs `anchorrec` as a subprocess, as a user would.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from cli_helpers import run_cli, user_env

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repository root: benchmarks.*
from benchmarks.common.offline import BEAUTY_CATEGORY, dead_hosts  # noqa: E402


def anchorrec(
    home: Path, *args: str, extra_env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    return run_cli(user_env(home, home.parent / "prefect", **(extra_env or {})), *args, timeout=timeout)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """stderr as a terminal leaves it: a bar's redraws (\r) collapsed to the text after them, and
    a progress bar's own start and end lines (a log shows those, TQDM_MININTERVAL) left out."""
    shown = [line.split("\r")[-1] for line in proc.stderr.split("\n")]
    return [line for line in shown if line.strip() and "%|" not in line]


# --------------------------------------------------------------------------- offline downloads
WATCH = (  # runs the CLI as `python -m cli` does; at exit, writes whether Prefect was imported
    "import atexit, runpy, sys\n"
    "out, sys.argv = sys.argv[1], ['cli'] + sys.argv[2:]\n"
    "atexit.register(lambda: open(out, 'w').write(str('prefect' in sys.modules)))\n"
    "runpy.run_module('cli', run_name='__main__', alter_sys=True)\n"
)


def test_offline_category_fails_in_one_line_before_any_work(home: Path, tmp_path: Path) -> None:
    """No network: one location whose name does not resolve, one that refuses (a closed port)."""
    hosts, closed = dead_hosts()
    shell = user_env(home, home.parent / "prefect", ANCHORREC_AMAZON_HOSTS=hosts)
    env = {k: v for k, v in shell.items() if "proxy" not in k.lower()}  # the dead hosts are asked directly
    imported = tmp_path / "prefect_imported.txt"
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            WATCH,
            str(imported),
            "pipeline",
            *BEAUTY_CATEGORY,
            "--model",
            "lightgcn",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - t0
    lines = error_lines(proc)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0] == (
        "error: http://amazon-mirror.invalid/v2/metaFiles2/meta_All_Beauty.json.gz: could not fetch "
        "meta_All_Beauty.json.gz from 2 location(s): http://amazon-mirror.invalid/v2/metaFiles2/meta_All_Beauty.json.gz "
        "→ unreachable (name does not resolve: cannot resolve 'amazon-mirror.invalid'); "
        f"http://127.0.0.1:{closed}/v2/metaFiles2/meta_All_Beauty.json.gz → unreachable (connection refused) — "
        "unreachable: check the network or pass --reviews/--meta with local files (download them elsewhere)"
    )
    assert proc.stdout == "" and "WARNING" not in proc.stderr
    assert imported.read_text() == "False"  # refused before the workflow engine was even imported
    assert not (home / "beauty").exists()
    assert took < 30


def test_download_error_in_the_stage_is_one_line_and_not_retried(home: Path, http_server, tmp_path: Path) -> None:
    """A host that answers but lacks the file (404): the stage fails once, in one line, quietly."""
    empty = tmp_path / "served"
    empty.mkdir()
    http_server.serve(empty)
    hosts = f"{http_server.base_url}/v2,{http_server.base_url}/mirror"
    proc = anchorrec(
        home,
        "ingest",
        *BEAUTY_CATEGORY,
        extra_env={"ANCHORREC_AMAZON_HOSTS": hosts},
    )
    lines = error_lines(proc)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr
    assert lines[0] == (
        f"error: {http_server.base_url}/v2/metaFiles2/meta_All_Beauty.json.gz: could not fetch meta_All_Beauty.json.gz "
        f"from 2 location(s): {http_server.base_url}/v2/metaFiles2/meta_All_Beauty.json.gz → HTTP 404 Not Found: not on "
        f"this server; {http_server.base_url}/mirror/metaFiles2/meta_All_Beauty.json.gz → HTTP 404 Not Found: not on "
        "this server — check the path or URL, or pass --reviews/--meta with local files (download them elsewhere)"
    )
    assert "WARNING" not in proc.stdout + proc.stderr and "Traceback" not in proc.stdout + proc.stderr
    # neither the URL nor the stage was retried: each location saw exactly one request
    assert len(http_server.requests_for("v2/metaFiles2/meta_All_Beauty.json.gz")) == 1
    assert len(http_server.requests_for("mirror/metaFiles2/meta_All_Beauty.json.gz")) == 1


# --------------------------------------------------------------------------- facts on the screen
GIFT = "amazon2018-giftcards"


def _lines(shared_data: Path) -> list[bytes]:
    return gzip.decompress((shared_data / GIFT / "Gift_Cards_5.json.gz").read_bytes()).splitlines()


def _ingest(home: Path, shared_data: Path, reviews: Path, *extra: str) -> subprocess.CompletedProcess:
    return anchorrec(
        home,
        "ingest",
        "--dataset",
        "gift",
        "--release",
        "2018",
        "--reviews",
        str(reviews),
        "--meta",
        str(shared_data / GIFT / "meta_Gift_Cards.json.gz"),
        *extra,
    )


def _report(home: Path) -> dict:
    return json.loads((home / "gift" / "prepare.json").read_text())


@pytest.mark.parametrize(
    "name,content,said",
    [  # mtime=0: the same bytes, so the same test id, on every worker
        ("reviews.json.gz", gzip.compress(b"", mtime=0), "empty gzip (no data once decompressed)"),
        ("reviews.json", b"", "empty file (0 bytes)"),
        ("reviews.json", b"\n\n  \n", "holds only blank lines"),
    ],
    ids=["empty-gzip", "empty-file", "blank-lines"],
)
def test_empty_input_is_caught_in_preflight(name: str, content: bytes, said: str, home: Path, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    t0 = time.monotonic()
    proc = anchorrec(
        home, "ingest", "--dataset", "gift", "--release", "2018", "--reviews", str(path), "--meta", str(path)
    )
    lines = error_lines(proc)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0] == f"error: --meta {path}: {said}; " + (
        "download the file again or give the file you meant" if name.endswith(".gz") else "give the file you meant"
    )
    assert not (home / "gift").exists()  # refused before any work
    assert time.monotonic() - t0 < 20


@pytest.mark.integration
def test_truncated_gzip_is_one_line_with_the_line_count(home: Path, shared_data: Path, tmp_path: Path) -> None:
    data = (shared_data / GIFT / "Gift_Cards_5.json.gz").read_bytes()
    cut = tmp_path / "Gift_Cards_5.json.gz"
    cut.write_bytes(data[: len(data) * 6 // 10])
    complete = zlib.decompressobj(wbits=31).decompress(cut.read_bytes()).count(b"\n")  # lines before the cut
    proc = _ingest(home, shared_data, cut)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fact = (
        f"  Gift_Cards_5.json.gz: cut off after line {complete:,} (gzip ends mid-stream); {complete:,} lines read, "
        "the rest of the file is lost: download it again"
    )
    lines = error_lines(proc)
    assert len(lines) == 4 and lines[0].startswith("ingest: ") and "2 bad records dropped" in lines[0], lines
    assert lines[1] == fact  # then the duplicates and the k-core rounds, one line each
    assert lines[2].startswith("  duplicate lines: ") and lines[3].startswith("  5-core: ")
    assert len(proc.stdout.splitlines()) == 1  # the stage's summary as JSON
    assert fact.strip() in _report(home)["facts"]
    assert complete == 1786


@pytest.mark.integration
def test_duplicate_lines_are_counted_on_screen_and_in_prepare_json(
    home: Path, shared_data: Path, tmp_path: Path
) -> None:
    lines = _lines(shared_data)
    rereviews = []  # the same user and item again, later: merged into one interaction (the latest kept)
    for line in lines[:100]:
        record = json.loads(line)
        record["unixReviewTime"] += 86_400
        rereviews.append(json.dumps(record).encode())
    body = lines + lines[:500] + rereviews  # 500 exact repeats of whole lines
    reviews = tmp_path / "Gift_Cards_5.json.gz"
    reviews.write_bytes(gzip.compress(b"\n".join(body) + b"\n"))

    seen, exact, pairs = set(), 0, set()  # expected counts, from the lines themselves
    for line in body:
        r = json.loads(line)
        key = (r["reviewerID"], r["asin"], r["unixReviewTime"], r["overall"])
        exact += key in seen
        seen.add(key)
        pairs.add((r["reviewerID"], r["asin"]))
    merged = len(body) - len(pairs) - exact

    proc = _ingest(home, shared_data, reviews)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fact = (
        f"  duplicate lines: {exact:,} exact duplicates (same user, item, rating and time) and {merged:,} merged "
        f"records (same user and item, the latest kept) of {len(body):,} reviews"
    )
    lines = error_lines(proc)
    assert len(lines) == 3 and lines[0].startswith("ingest: ") and lines[1] == fact, lines
    assert lines[2].startswith("  5-core: ")
    report = _report(home)
    assert report["duplicates"] == {"records": len(body), "exact": exact, "merged": merged}
    assert exact >= 500 and merged >= 100
    kcore_fact = [f for f in report["facts"] if f.startswith("5-core: ")]
    assert len(kcore_fact) == 1 and f"in {len(report['kcore']['iterations'])} round(s)" in kcore_fact[0]


@pytest.mark.integration
def test_kcore_failure_names_the_duplicates_and_writes_prepare_json(
    home: Path, shared_data: Path, tmp_path: Path
) -> None:
    first = _lines(shared_data)[:40]
    reviews = tmp_path / "Gift_Cards_5.json.gz"
    reviews.write_bytes(gzip.compress(b"\n".join(first * 10) + b"\n"))  # every line 10 times
    pairs = {(json.loads(x)["reviewerID"], json.loads(x)["asin"]) for x in first}
    users = {u for u, _ in pairs}
    items = {i for _, i in pairs}

    proc = _ingest(home, shared_data, reviews)
    lines = error_lines(proc)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    reason = (
        f"dataset 'gift': 5-core filtering removed every interaction ({len(pairs)} interactions, {len(users)} users, "
        f"{len(items)} items before) ({400 - len(pairs)} of 400 lines were exact duplicates); use a smaller --kcore "
        "(see prepare.json)"
    )
    assert lines[0] == f"error: {reason}"
    report = _report(home)
    assert report["failed"] == reason
    assert report["duplicates"] == {"records": 400, "exact": 400 - len(pairs), "merged": 0}
    assert report["kcore"]["before"] == len(pairs) and report["kcore"]["iterations"][-1]["interactions"] == 0
    assert not (home / "gift" / "interactions.parquet").exists()  # nothing written but the report


@pytest.mark.integration
def test_small_test_split_gets_a_note_under_the_metrics(home: Path, shared_data: Path, tmp_path: Path) -> None:
    """The whole Gift Cards 5-core has no note; its first 1,500 lines (52 items after the 5-core,
    where a top-20 list covers 38% of the catalog by chance) have one."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from cli import small_eval_note
    from pipelines.ingest import ingest
    from store import dataset_paths

    meta = str(shared_data / GIFT / "meta_Gift_Cards.json.gz")
    ingest(
        "full", "2018", meta=meta, reviews=str(shared_data / GIFT / "Gift_Cards_5.json.gz"), home=home, progress=False
    )
    assert small_eval_note(dataset_paths("full", home)) is None

    head = tmp_path / "Gift_Cards_5.json.gz"
    head.write_bytes(gzip.compress(b"\n".join(_lines(shared_data)[:1500]) + b"\n"))
    ingest("gift", "2018", meta=meta, reviews=str(head), home=home, progress=False)
    paths = dataset_paths("gift", home)
    inter = pq.read_table(paths.interactions)
    test = inter.filter(pc.equal(inter.column("split"), "test"))
    users, items = len(pc.unique(test.column("user_id"))), len(pc.unique(test.column("item_id")))
    n_items = pq.read_table(paths.items).num_rows
    small = [
        f"{n} {what}"
        for n, what in ((users, "test users"), (items, "test items"), (n_items, "catalog items"))
        if n < 100
    ]
    assert n_items < 100 and small
    assert small_eval_note(paths) == (
        f"note: only {', '.join(small)} (fewer than 100): these metrics are noisy and near their ceiling "
        f"(a top-20 list covers {20 / n_items:.0%} of the catalog); judge models on a larger dataset"
    )


@pytest.mark.integration
def test_unreadable_metadata_error_points_to_a_report_that_exists(
    home: Path, shared_data: Path, tmp_path: Path
) -> None:
    meta = tmp_path / "meta_Gift_Cards.json.gz"
    meta.write_bytes(gzip.compress(b'not json\n{"broken": \nnope\n'))
    proc = anchorrec(
        home,
        "ingest",
        "--dataset",
        "gift",
        "--release",
        "2018",
        "--meta",
        str(meta),
        "--reviews",
        str(shared_data / GIFT / "Gift_Cards_5.json.gz"),
    )
    lines = error_lines(proc)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        "error: 0 records parsed from meta_Gift_Cards.json.gz, 3 bad line(s) "
        "(see bad_records in prepare.json); meta_Gift_Cards.json.gz matched metadata for 0 of 147 items"
    )
    report = _report(home)
    assert report["failed"] == lines[0].removeprefix("error: ")
    assert report["bad_records"]["by_file"] == {"meta_Gift_Cards.json.gz": 3}
    assert report["metadata"]["products_read"] == 0 and report["missing"]["metadata"] == 147
