"""store.sql: DuckDB views + FAISS-backed vector functions, read-only guarantees, helpers."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from store_testdata import make_dataset

from store import StoreError
from store.hashing import file_sha256
from store.index import ItemIndex, publish
from store.sql import (
    QueryError,
    answered_by,
    connect,
    feature_view_name,
    recommend_for,
    run_query,
    similar_to,
)
from store.vectors import write_vectors

ARCHITECTURE_EXAMPLE = """
SELECT r.item_id, r.score, i.title
FROM (SELECT unnest(recommend(42, 10), recursive := true)) r JOIN items i USING (item_id);
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    data = make_dataset(tmp_path_factory.mktemp("sql"), n_users=60, n_items=150, d=8)
    publish(data.paths, data.run_id)
    return data


@pytest.fixture()
def con(data):
    con = connect(data.paths)
    yield con
    con.close()


def lists(table: pa.Table, column: str = "r") -> list[list[dict]]:
    return table.column(column).to_pylist()


def assert_matches(got_lists, want_ids, want_scores) -> None:
    assert len(got_lists) == len(want_ids)
    for got, ids, scores in zip(got_lists, want_ids, want_scores):
        assert [e["item_id"] for e in got] == list(ids)
        np.testing.assert_allclose([e["score"] for e in got], scores, rtol=1e-5, atol=1e-5)


def store_fingerprint(data) -> dict[str, str]:
    return {
        str(p): file_sha256(p)
        for p in sorted(data.paths.root.rglob("*"))
        if p.is_file() and ".publish.lock" not in p.name
    }


def test_views_cover_tables_features_and_run_vectors(data, con):
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    assert {"items", "users", "interactions", "feature_clip_image", "user_vectors", "item_vectors"} <= views
    assert con.execute("SELECT count(*) FROM items").fetchall()[0][0] == 150
    assert con.execute("SELECT count(*) FROM interactions WHERE split = 'train'").fetchall()[0][0] == 60 * 4
    assert con.execute("SELECT count(*), min(len(vector)) FROM feature_clip_image").fetchall()[0] == (150, 4)
    assert con.execute("SELECT count(*) FROM user_vectors").fetchall()[0][0] == 60
    assert feature_view_name("clip-vit.b32") == "feature_clip_vit_b32"


def test_topn_over_all_users_equals_numpy(data, con):
    out = con.sql("SELECT user_id, topn(vector, 7) AS r FROM user_vectors ORDER BY user_id").to_arrow_table()
    want_ids, want_scores = data.exact(data.users, 7)
    assert_matches(lists(out), want_ids, want_scores)


def test_topn_accepts_literal_lists_and_fixed_arrays(data, con):
    q = data.users[5]
    literal = "[" + ", ".join(repr(float(x)) for x in q) + "]"
    want_ids, want_scores = data.exact(q[None, :].astype(np.float64).astype(np.float32), 4)
    for expr in (f"{literal}::FLOAT[]", f"{literal}::FLOAT[8]", literal):
        got = con.sql(f"SELECT topn({expr}, 4) AS r").to_arrow_table()
        assert_matches(lists(got), want_ids, want_scores)


def test_recommend_excludes_training_items_and_equals_numpy(data, con):
    out = con.sql("SELECT user_id, recommend(user_id, 6) AS r FROM users ORDER BY user_id").to_arrow_table()
    want_ids, want_scores = data.exact(data.users, 6, [data.train[int(u)] for u in data.user_ids])
    assert_matches(lists(out), want_ids, want_scores)
    for u, row in zip(data.user_ids, lists(out)):
        assert not {e["item_id"] for e in row} & data.train[int(u)]


def test_recommend_all_keeps_training_items(data, con):
    out = con.sql("SELECT recommend_all(user_id, 6) AS r FROM users ORDER BY user_id").to_arrow_table()
    assert_matches(lists(out), *data.exact(data.users, 6))


def test_similar_excludes_the_item_and_equals_numpy(data, con):
    out = con.sql("SELECT item_id, similar(item_id, 5) AS r FROM items ORDER BY item_id").to_arrow_table()
    exclude = [{int(i)} for i in data.item_ids]
    assert_matches(lists(out), *data.exact(data.items, 5, exclude))


def test_architecture_example_runs_verbatim(data, con):
    rows = con.sql(ARCHITECTURE_EXAMPLE).fetchall()
    want_ids, want_scores = data.exact(data.users[42:43], 10, [data.train[42]])
    assert sorted(r[0] for r in rows) == sorted(want_ids[0].tolist())
    assert all(title == f"Item number {item}" for item, _, title in rows)
    ranked = con.sql(ARCHITECTURE_EXAMPLE.rstrip().rstrip(";") + " ORDER BY r.score DESC").fetchall()
    assert [r[0] for r in ranked] == want_ids[0].tolist()


def test_similar_items_joined_with_metadata_and_features(data, con):
    rows = con.sql(
        """
        SELECT s.item_id, i.brand, len(f.vector) AS feature_dim
        FROM (SELECT unnest(similar(3, 4), recursive := true)) s
        JOIN items i USING (item_id) JOIN feature_clip_image f USING (item_id)
        ORDER BY s.score DESC
        """
    ).fetchall()
    want, _ = data.exact(data.items[3:4], 4, [{3}])
    assert [r[0] for r in rows] == want[0].tolist()
    assert all(r[1] == ("acme" if r[0] % 2 else "globex") and r[2] == 4 for r in rows)


def test_one_faiss_search_per_chunk(tmp_path, monkeypatch):
    data = make_dataset(tmp_path, n_users=5000, n_items=40, d=4, per_user=3)
    publish(data.paths, data.run_id)
    calls: list[int] = []
    original = ItemIndex.search

    def counting(self, queries, k, exclude=None):
        calls.append(len(queries))
        return original(self, queries, k, exclude)

    monkeypatch.setattr(ItemIndex, "search", counting)
    con = connect(data.paths)
    total = con.execute("SELECT sum(len(recommend(user_id, 3))) FROM users").fetchall()[0][0]
    con.close()
    assert total == 5000 * 3
    assert sum(calls) == 5000 and len(calls) <= 5, calls  # DuckDB chunks are 2048 rows


def test_k_clamped_nulls_and_bad_input(data, con):
    assert con.execute("SELECT len(recommend_all(0, 1000000))").fetchall()[0][0] == 150
    assert con.execute("SELECT len(recommend(0, 1000000))").fetchall()[0][0] == 150 - len(data.train[0])
    assert con.execute("SELECT recommend(NULL, 3)").fetchall()[0][0] is None
    # any integer type is accepted (range() gives BIGINT)
    via_range = con.sql("SELECT recommend(i, 2) AS r FROM range(3) t(i) ORDER BY i").to_arrow_table()
    assert_matches(lists(via_range), *data.exact(data.users[:3], 2, [data.train[u] for u in range(3)]))
    cases = {
        "SELECT recommend(999, 3)": r"unknown user_id 999: not in .*user_vectors\.parquet",
        "SELECT similar(150, 3)": r"unknown item_id 150: not in .*item_vectors\.parquet",
        "SELECT recommend(1, 0)": r"k must be ≥ 1, got 0",
        "SELECT similar(1, -2)": r"k must be ≥ 1, got -2",
        "SELECT topn([1.0, 2.0, 3.0], 3)": r"query vector has 3 values but the index of run 'run-a' has dimension 8",
    }
    for sql, message in cases.items():
        with pytest.raises(duckdb.Error, match=message):
            con.sql(sql).fetchall()


def test_read_only_connection_cannot_modify_the_store(data, con, tmp_path):
    before = store_fingerprint(data)
    items_file = data.paths.items
    refused = {
        "CREATE TABLE t AS SELECT 1": "read-only",
        "CREATE VIEW v AS SELECT 1": "read-only",
        "INSERT INTO items SELECT * FROM items": "not an table",
        f"COPY items TO '{items_file}' (FORMAT parquet)": "Permission Error",
        f"COPY (SELECT 1 AS a) TO '{items_file}' (FORMAT csv, USE_TMP_FILE false, OVERWRITE true)": "Permission Error",
        f"COPY (SELECT 1 AS a) TO '{tmp_path / 'out.csv'}'": "Permission Error",
        f"ATTACH '{tmp_path / 'x.duckdb'}' AS x": "Permission Error",
        f"SELECT * FROM read_parquet('{items_file}')": "Permission Error",
        "SET enable_external_access = true": "locked",
        "SET lock_configuration = false": "locked",
        "SET allowed_configs = ['enable_external_access']": "locked",
        f"SET temp_directory = '{tmp_path}'": "locked",
    }
    for sql, message in refused.items():
        with pytest.raises(duckdb.Error, match=message):
            con.execute(sql)
    con.execute("CREATE TEMP TABLE scratch AS SELECT 1 AS a")  # session-only scratch is allowed
    con.execute("SET threads = 1")  # so are settings that cannot reach files
    assert con.execute("SELECT current_setting('threads')").fetchall()[0][0] == 1
    con.execute("DROP VIEW items")  # a temporary view: dropping it only affects this session
    assert store_fingerprint(data) == before
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "x.duckdb").exists()
    other = connect(data.paths)  # the store is untouched for everybody else
    assert other.execute("SELECT count(*) FROM items").fetchall()[0][0] == 150
    other.close()


def test_read_write_and_file_database(data, tmp_path):
    db = tmp_path / "db" / "store.duckdb"
    rw = connect(data.paths, database=db, read_only=False)
    rw.execute("CREATE TABLE notes AS SELECT 1 AS a")
    assert rw.execute("SELECT count(*) FROM items").fetchall()[0][0] == 150
    rw.close()
    plain = duckdb.connect(str(db), read_only=True)  # the views persist for the DuckDB CLI
    assert plain.execute("SELECT count(*) FROM items").fetchall()[0][0] == 150
    assert plain.execute("SELECT a FROM notes").fetchall()[0][0] == 1
    plain.close()
    ro = connect(data.paths, database=db)
    assert ro.execute("SELECT len(recommend(1, 3))").fetchall()[0][0] == 3
    assert ro.execute("SELECT a FROM notes").fetchall()[0][0] == 1
    with pytest.raises(duckdb.Error, match="read-only"):
        ro.execute("CREATE TABLE t AS SELECT 1")
    ro.close()
    fresh = tmp_path / "fresh.duckdb"
    ro = connect(data.paths, database=fresh)  # created with its views, then opened read-only
    assert fresh.exists() and ro.execute("SELECT count(*) FROM users").fetchall()[0][0] == 60
    ro.close()


def test_without_published_run(tmp_path):
    data = make_dataset(tmp_path)
    con = connect(data.paths)
    assert con.execute("SELECT count(*) FROM items").fetchall()[0][0] == 120
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    assert "user_vectors" not in views
    with pytest.raises(duckdb.Error, match="no run has a published index"):
        con.sql("SELECT recommend(1, 3)").fetchall()
    con.close()
    with pytest.raises(StoreError, match="run 'run-a' has no published index"):
        connect(data.paths, "run-a")


def test_recommend_without_interactions_points_to_recommend_all(tmp_path):
    data = make_dataset(tmp_path)
    publish(data.paths, data.run_id)
    data.paths.interactions.unlink()
    con = connect(data.paths)
    with pytest.raises(duckdb.Error, match=r"interactions\.parquet: does not exist.*use recommend_all"):
        con.sql("SELECT recommend(1, 3)").fetchall()
    assert con.execute("SELECT len(recommend_all(1, 3))").fetchall()[0][0] == 3
    con.close()


def test_stale_index_is_refused_in_sql(tmp_path):
    data = make_dataset(tmp_path)
    version = publish(data.paths, data.run_id)["version"]
    served = connect(data.paths).sql("SELECT similar(1, 3)").fetchall()
    # the run's own vectors rewritten: the published version keeps its copy and answers as before
    write_vectors(data.paths.item_vectors(data.run_id), "item_id", data.item_ids, data.items + 1)
    assert connect(data.paths).sql("SELECT similar(1, 3)").fetchall() == served
    # the version's copy replaced by other (well-formed) vectors: refused, naming the fix
    copy = data.paths.index_dir(data.run_id) / "versions" / version / "item_vectors.parquet"
    write_vectors(copy, "item_id", data.item_ids, data.items + 1)
    con = connect(data.paths)
    with pytest.raises(duckdb.Error, match="rerun: anchorrec publish --dataset toys.*anchorrec rollback"):
        con.sql("SELECT similar(1, 3)").fetchall()
    con.close()


def test_run_query_formats_and_errors(data, tmp_path):
    sql = "SELECT user_id, recommend(user_id, 3) AS r FROM users ORDER BY user_id LIMIT 4"
    table = run_query(data.paths, sql)
    assert table.num_rows == 4 and table.column_names == ["user_id", "r"]
    out = run_query(data.paths, sql, output=tmp_path / "r.parquet", fmt="parquet")
    assert pq.read_table(tmp_path / "r.parquet").column("r").to_pylist() == out.column("r").to_pylist()
    run_query(data.paths, sql, output=tmp_path / "r.csv", fmt="csv")
    csv = pacsv.read_csv(tmp_path / "r.csv")
    assert json.loads(csv.column("r")[0].as_py()) == table.column("r")[0].as_py()
    with pytest.raises(ValueError, match="needs an output path"):
        run_query(data.paths, sql, fmt="csv")
    with pytest.raises(
        ValueError,
        match=r"--output .*/x: unsupported format 'xlsx' \(from its suffix\); --output writes .parquet or .csv files",
    ):
        run_query(data.paths, sql, output=tmp_path / "x", fmt="xlsx")
    with pytest.raises(ValueError, match="fmt must be one of"):
        run_query(data.paths, sql, fmt="xlsx")
    with pytest.raises(QueryError, match="Table with name nope does not exist") as info:
        run_query(data.paths, "SELECT * FROM nope")
    assert "views: " in str(info.value) and "recommend(…, k)" in str(info.value)
    with pytest.raises(QueryError, match="syntax error"):
        run_query(data.paths, "SELEC 1")
    with pytest.raises(QueryError, match="unknown user_id 12345"):
        run_query(data.paths, "SELECT recommend(12345, 2)")


def test_recommend_for_and_similar_to(data):
    table = recommend_for(data.paths, 7, 5)
    assert table.column_names == ["rank", "item_id", "asin", "title", "score"]
    want_ids, want_scores = data.exact(data.users[7:8], 5, [data.train[7]])
    assert table.column("item_id").to_pylist() == want_ids[0].tolist()
    assert table.column("rank").to_pylist() == [1, 2, 3, 4, 5]
    assert table.column("title").to_pylist() == [f"Item number {i}" for i in want_ids[0]]
    np.testing.assert_allclose(table.column("score").to_numpy(), want_scores[0], rtol=1e-5)
    seen = recommend_for(data.paths, 7, 5, include_seen=True)
    assert seen.column("item_id").to_pylist() == data.exact(data.users[7:8], 5)[0][0].tolist()

    by_asin = similar_to(data.paths, asin="B00012", k=4)
    by_id = similar_to(data.paths, 12, 4)
    want, _ = data.exact(data.items[12:13], 4, [{12}])
    for t in (by_asin, by_id):
        assert t.column("item_id").to_pylist() == want[0].tolist()
        assert answered_by(t) == data.run_id
    assert answered_by(table) == data.run_id
    with pytest.raises(ValueError, match="unknown asin 'NOPE'"):
        similar_to(data.paths, asin="NOPE", k=3)
    with pytest.raises(ValueError, match="unknown asin '12'"):  # digits are an ASIN when given as one
        similar_to(data.paths, asin="12", k=3)
    with pytest.raises(ValueError, match="item_id must be an integer"):
        similar_to(data.paths, "B00012", 3)
    with pytest.raises(ValueError, match="unknown item_id 5000"):
        similar_to(data.paths, 5000, 3)
    with pytest.raises(ValueError, match="exactly one"):
        similar_to(data.paths, 12, 3, asin="B00012")
    with pytest.raises(ValueError, match="k must be"):
        recommend_for(data.paths, 7, 0)
    with pytest.raises(ValueError) as info:  # one clean line, not DuckDB's wrapping of the UDF error
        recommend_for(data.paths, 999, 3)
    assert str(info.value) == (
        "unknown user 999: run run-a has user_ids 0..59 (60 users); list them: "
        'anchorrec sql "SELECT user_id, reviewer_id FROM users" --dataset toys'
    )
