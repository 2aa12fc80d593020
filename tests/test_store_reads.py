"""Every read verified (issue 30): SQL views check what `recommend` checks, stage records catch a
valid but wrong file, `sql --output` stays out of the store, one clean line per refusal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from cli_helpers import user_env

from store import dataset_paths, schemas
from store.hashing import file_sha256
from store.index import publish
from store.sql import run_query
from store.tables import read_table, write_table
from store.vectors import write_features, write_vectors

REPO = Path(__file__).resolve().parents[1]
ITEMS, USERS = 60, 80
INGEST = ["ingest", "--dataset", "demo", "--demo-items", str(ITEMS), "--demo-users", str(USERS)]
RUN = "run-a"
HOUR_AGO = time.time() - 3600
pytestmark = pytest.mark.slow  # a CLI subprocess per step and one `anchorrec ingest`


def anchorrec(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The refusal a user sees: exit 2, one `error:` line, no traceback."""
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def rows(stdout: str) -> list[list[str]]:
    """The data rows of a printed table (the lines after its header separator), cell by cell."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("├")) + 1
    return [[c.strip() for c in line.split("│")[1:-1]] for line in lines[start:] if line.startswith("│")]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A demo store built once: `anchorrec ingest` (so the stage records exist), a text feature table
    and one published run written through the store."""
    root = tmp_path_factory.mktemp("reads")
    env = user_env(root / "home", root / "prefect")
    proc = anchorrec(env, *INGEST)
    assert proc.returncode == 0, proc.stderr[-2000:]
    p = dataset_paths("demo", root / "home")
    rng = np.random.default_rng(0)
    asins = read_table(p.items, columns=["asin"]).column("asin").to_pylist()
    write_features(
        p.feature("text-minilm"),
        asins,
        np.arange(ITEMS),
        rng.standard_normal((ITEMS, 8)).astype(np.float32),
        encoder="test",
        model="none",
        weights="none",
        modality="text",
        input_hash="x",
    )
    write_vectors(p.user_vectors(RUN), "user_id", np.arange(USERS), rng.standard_normal((USERS, 4)).astype(np.float32))
    write_vectors(p.item_vectors(RUN), "item_id", np.arange(ITEMS), rng.standard_normal((ITEMS, 4)).astype(np.float32))
    publish(p, RUN)
    return root


@pytest.fixture()
def store(built, tmp_path) -> tuple[dict, Path]:
    """A private copy of the built home (records are relative, so the copy is as valid) and its env."""
    home = tmp_path / "home"
    shutil.copytree(built / "home", home, symlinks=True)
    env = user_env(home, built / "prefect")
    return env, home / "demo"


def flip_bytes(path: Path, count: int = 16) -> None:
    """Flip bytes in the middle of the file (a data page), as a bad disk or a stray write would."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + count] = bytes(b ^ 0xFF for b in data[middle : middle + count])
    path.write_bytes(bytes(data))


def make_unreadable(path: Path) -> str:
    """chmod 000 for a normal user; root reads anything, so there the file becomes a link to a
    kernel file that even root may not read (/proc/sys/vm/compact_memory is write-only)."""
    if os.geteuid() != 0:
        path.chmod(0)
        return "chmod 000"
    locked = Path("/proc/sys/vm/compact_memory")
    try:
        locked.open("rb").close()
    except PermissionError:
        path.unlink()
        path.symlink_to(locked)
        return "link to a write-only /proc file"
    pytest.skip("running as root and no file here is unreadable to root")


# ---------------------------------------------------------------------- 1. every read verified


def test_sql_refuses_flipped_bytes_in_a_feature_table(store):
    env, root = store
    query = "SELECT sum(list_sum(vector::FLOAT[])) FROM feature_text_minilm"
    assert anchorrec(env, "sql", query).returncode == 0
    flip_bytes(root / "features" / "text-minilm.parquet")
    line = error_line(anchorrec(env, "sql", query))
    assert line.startswith(f"error: {root / 'features' / 'text-minilm.parquet'}: ")
    assert "checksum" in line.lower() and line.endswith(
        "rerun: anchorrec features --dataset demo (or anchorrec pipeline --dataset demo)"
    )
    counted = anchorrec(env, "sql", "SELECT count(*) AS n FROM items")  # other tables still answer
    assert counted.returncode == 0 and rows(counted.stdout) == [[str(ITEMS)]]


def test_sql_refuses_flipped_bytes_in_user_vectors(store):
    env, root = store
    path = root / "index" / RUN / "versions" / "0001" / "user_vectors.parquet"  # the copy the index version serves
    flip_bytes(path)
    line = error_line(anchorrec(env, "sql", "SELECT sum(list_sum(vector::FLOAT[])) FROM user_vectors"))
    assert line.startswith(f"error: {path}: ") and "rerun: anchorrec publish --dataset demo" in line


def test_unreadable_feature_file_blocks_only_the_queries_that_touch_it(store):
    env, root = store
    path = root / "features" / "text-minilm.parquet"
    make_unreadable(path)
    counted = anchorrec(env, "sql", "SELECT count(*) AS n, min(title) IS NOT NULL AS t FROM items")
    assert counted.returncode == 0, counted.stderr
    assert rows(counted.stdout) == [[str(ITEMS), "true"]]
    line = error_line(anchorrec(env, "sql", "SELECT count(*) FROM feature_text_minilm"))
    assert line == (
        f"error: {path}: permission denied: this user cannot read it — give read access "
        f"(ls -l {path}; chmod/chown), or run as the store's owner"
    )


def test_feature_path_that_is_a_directory_is_refused_alone(store):
    env, root = store
    (root / "features" / "broken.parquet").mkdir()
    assert anchorrec(env, "sql", "SELECT count(*) FROM users").returncode == 0
    line = error_line(anchorrec(env, "sql", "SELECT * FROM feature_broken"))
    assert line == (
        f"error: {root / 'features' / 'broken.parquet'}: is a directory, not a file — "
        "rerun: anchorrec features --dataset demo (or anchorrec pipeline --dataset demo)"
    )


def test_verdict_is_cached_per_file_identity_and_a_changed_file_is_checked_again(store, monkeypatch):
    from store import records, verify

    _, root = store
    p = dataset_paths("demo", root.parent)
    for f in (p.items, p.feature("text-minilm")):
        os.utime(f, (HOUR_AGO, HOUR_AGO))
    time.sleep(records.RACY_S + 0.1)  # settled files (ctime too): a verdict may be kept
    checked: list[str] = []
    real = verify.full_problem
    monkeypatch.setattr(verify, "full_problem", lambda path: checked.append(Path(path).name) or real(path))
    query = "SELECT count(*) AS n FROM items JOIN feature_text_minilm USING (item_id)"
    assert run_query(p, query).column("n").to_pylist() == [ITEMS]
    assert sorted(checked) == ["items.parquet", "text-minilm.parquet"]  # only the tables the query names
    assert run_query(p, query).column("n").to_pylist() == [ITEMS]
    assert sorted(checked) == ["items.parquet", "text-minilm.parquet"]  # second query: cache hit
    os.utime(p.items)  # touched
    run_query(p, query)
    assert sorted(checked) == ["items.parquet", "items.parquet", "text-minilm.parquet"]
    feature = p.feature("text-minilm")
    flip_bytes(feature)
    os.utime(feature, (HOUR_AGO, HOUR_AGO))  # same size and mtime as the verified file: ctime still differs
    with pytest.raises(Exception, match="text-minilm.parquet: .*checksum"):
        run_query(p, query)


# ------------------------------------------------------------------------------ 2. sql --output


def test_output_inside_the_home_is_refused_even_through_a_symlink(store, tmp_path):
    env, root = store
    items = root / "items.parquet"
    before = file_sha256(items)
    line = error_line(anchorrec(env, "sql", "SELECT 1 AS x", "--output", str(items)))
    assert line == (
        f"error: --output {items}: is inside the store ({root.parent.resolve()}); "
        "write query results elsewhere, outside $ANCHORREC_HOME"
    )
    link = tmp_path / "elsewhere"
    link.symlink_to(root / "runs" / RUN)
    line = error_line(anchorrec(env, "sql", "SELECT 1 AS x", "--output", str(link / "item_vectors.parquet")))
    assert "is inside the store" in line
    assert (
        file_sha256(items) == before and pq.read_table(root / "runs" / RUN / "item_vectors.parquet").num_rows == ITEMS
    )
    out = tmp_path / "out" / "n.parquet"
    ok = anchorrec(env, "sql", "SELECT count(*) AS n FROM users", "--output", str(out))
    assert ok.returncode == 0 and pq.read_table(out).column("n").to_pylist() == [USERS]


def test_output_with_an_unsupported_suffix_names_the_option(store, tmp_path):
    env, _ = store
    line = error_line(anchorrec(env, "sql", "SELECT 1", "--output", str(tmp_path / "x.txt")))
    assert line == (
        f"error: --output {tmp_path / 'x.txt'}: unsupported format 'txt' (from its suffix); "
        "--output writes .parquet or .csv files"
    )
    assert not (tmp_path / "x.txt").exists()


# ------------------------------------------------------------------------- 3. beyond the bytes


def test_records_name_paths_relative_to_the_dataset(store):
    _, root = store
    record = json.loads((root / "records" / "interactions.parquet.json").read_text())
    assert record["file"] == "interactions.parquet" and record["stage"] == "ingest"
    assert record["rows"] == pq.ParquetFile(root / "interactions.parquet").metadata.num_rows > 0
    assert record["sha256"] == file_sha256(root / "interactions.parquet")
    assert str(root.parent) not in json.dumps(record)


def test_zero_row_interactions_is_refused_and_ingest_repairs_it(store):
    from store.verify import problem

    env, root = store
    p = dataset_paths("demo", root.parent)
    good = read_table(p.interactions)
    training = set(
        good.filter(
            np.array(good.column("user_id").to_numpy() == 1)
            & np.array([s == "train" for s in good.column("split").to_pylist()])
        )
        .column("item_id")
        .to_pylist()
    )
    write_table(good.slice(0, 0), p.interactions, schemas.INTERACTIONS)  # valid Parquet, right schema, no rows
    want = f"{p.interactions}: has 0 rows ("
    assert problem(p.interactions).startswith(want) and f"but stage ingest recorded {good.num_rows} rows" in problem(
        p.interactions
    )

    line = error_line(anchorrec(env, "recommend", "--user", "1", "-k", "5"))
    assert line.startswith(f"error: {want}") and "not the file the stage wrote" in line
    assert line.endswith("rerun: anchorrec ingest --dataset demo")
    assert error_line(anchorrec(env, "sql", "SELECT count(*) FROM interactions")) == line

    fixed = anchorrec(env, *INGEST)  # the named fix: reruns the stage, not a cache hit
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert "ingest: cached" not in fixed.stderr and f"ingest: {ITEMS} items, {USERS} users" in fixed.stderr
    assert read_table(p.interactions).num_rows == good.num_rows and problem(p.interactions) is None
    rec = anchorrec(env, "recommend", "--user", "1", "-k", "5")
    assert rec.returncode == 0, rec.stderr
    shown = [int(row[1]) for row in rows(rec.stdout)]  # rank, item_id, asin, title, score
    assert len(shown) == 5 and not training & set(shown)
    assert "ingest: cached" in anchorrec(env, *INGEST).stderr  # repaired: the next rerun is a cache hit


# ------------------------------------------------------------------------------- 4. messages


def test_unknown_user_is_one_clean_line(store):
    env, _ = store
    line = error_line(anchorrec(env, "recommend", "--user", "999999"))
    assert line == (
        f"error: unknown user 999999: run {RUN} has user_ids 0..{USERS - 1} ({USERS} users); "
        'list them: anchorrec sql "SELECT user_id, reviewer_id FROM users" --dataset demo'
    )


def test_unknown_run_lists_the_published_runs(store):
    env, _ = store
    line = error_line(anchorrec(env, "recommend", "--user", "1", "--run-id", "nosuchrun"))
    assert line.startswith(f"error: no run nosuchrun in dataset demo; published runs: {RUN} ")
    assert "anchorrec publish" not in line
