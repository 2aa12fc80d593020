"""Verify on read, repair on rerun, deterministic bytes, which run answered, inventory (issue #14)."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from store_testdata import items_table, make_dataset, write_run

from store import StoreError, schemas
from store.hashing import file_sha256
from store.index import INDEX_FILE, MANIFEST_FILE, load_index, publish, rollback
from store.inventory import list_datasets, list_runs
from store.layout import DatasetPaths
from store.sql import answered_by, connect, recommend_for, run_query, similar_to
from store.tables import read_table, write_json, write_table
from store.vectors import read_features, read_vectors, write_features, write_vectors
from store.verify import problem, problems, published_problem
from store.versions import serving


def served(data):
    """The index version the run serves now: where its index and vectors are read from."""
    return serving(data.paths, data.run_id)


@pytest.fixture()
def data(tmp_path):
    data = make_dataset(tmp_path, n_users=20, n_items=40, d=4)
    publish(data.paths, data.run_id)
    return data


def shuffle_rows(path) -> None:
    """What the user did: a valid Parquet file, same metadata, rows in another order."""
    table = pq.read_table(path)
    order = np.random.default_rng(3).permutation(table.num_rows)
    pq.write_table(table.take(order), path)


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


# ------------------------------------------------------------------------ shuffled item vectors


def test_shuffled_item_vectors_detected_everywhere(data):
    # the run's own vectors: refused by the publish that would copy them into a version
    run_file = data.paths.item_vectors(data.run_id)
    shuffle_rows(run_file)
    with pytest.raises(StoreError) as info:
        publish(data.paths, data.run_id)
    text = one_line(info.value)
    assert (
        text.startswith(f"{run_file}: rows do not match the vectors_hash") and "anchorrec train --dataset toys" in text
    )
    assert "rows do not match the vectors_hash" in problem(run_file)
    # the copy the published version serves: refused by every reader
    path = served(data).item_vectors
    shuffle_rows(path)
    fix = "rerun: anchorrec publish --dataset toys"
    for call in (
        lambda: similar_to(data.paths, 3, 5),
        lambda: recommend_for(data.paths, 3, 5),
        lambda: load_index(data.paths, data.run_id),
        lambda: read_vectors(path, "item_id"),
    ):
        with pytest.raises(StoreError) as info:
            call()
        text = one_line(info.value)
        assert text.startswith(f"{path}: rows do not match the vectors_hash") and fix in text
    assert "rows do not match the vectors_hash" in problem(path)
    assert "rows do not match the vectors_hash" in published_problem(data.paths, data.run_id)
    with pytest.raises(StoreError, match="rows do not match the vectors_hash"):  # also through plain SQL
        run_query(data.paths, "SELECT similar(3, 2)")


def test_shuffled_user_vectors_detected(data):
    path = served(data).user_vectors
    shuffle_rows(path)
    with pytest.raises(StoreError, match="user_vectors.parquet: rows do not match.*anchorrec publish --dataset toys"):
        recommend_for(data.paths, 3, 5)
    assert "user_vectors.parquet: rows do not match" in problem(path)


# ----------------------------------------------------------------------- newest manifest garbage


def test_garbage_newest_manifest_is_an_error_not_an_older_run(data):
    write_run(data.paths, "run-b", data.user_ids, data.users, data.item_ids, data.items[::-1].copy())
    publish(data.paths, "run-b")
    assert answered_by(recommend_for(data.paths, 1, 3)) == "run-b"
    manifest = serving(data.paths, "run-b").directory / MANIFEST_FILE
    manifest.write_bytes(b"\x00\xffgarbage")
    for call in (
        lambda: recommend_for(data.paths, 1, 3),
        lambda: similar_to(data.paths, 1, 3),
        lambda: connect(data.paths),
    ):
        with pytest.raises(StoreError) as info:
            call()
        text = one_line(info.value)
        assert str(manifest) in text and "newest published run" in text and "anchorrec publish --dataset toys" in text
    # an explicit run still answers, and says so
    assert answered_by(recommend_for(data.paths, 1, 3, run_id="run-a")) == "run-a"
    assert "run-b" in problem(manifest) and "invalid JSON" in problem(manifest)


# ------------------------------------------------------------------------- index repair on rerun


@pytest.mark.parametrize("damage", ["delete", "truncate", "overwrite"])
def test_damaged_index_detected_and_publish_rebuilds(data, damage):
    index_file = served(data).directory / INDEX_FILE
    manifest = served(data).directory / MANIFEST_FILE
    good = index_file.read_bytes()
    assert problem(index_file) is None and problem(manifest) is None
    if damage == "delete":
        index_file.unlink()
    elif damage == "truncate":
        index_file.write_bytes(good[: len(good) // 3])
    else:
        index_file.write_bytes(b"x" * len(good))
    found = problem(manifest)
    assert found is not None and str(index_file) in found
    assert "anchorrec publish --dataset toys" in found and found == problem(index_file)
    with pytest.raises(StoreError, match="index file is missing" if damage == "delete" else "sha256 differs"):
        recommend_for(data.paths, 2, 3)
    publish(data.paths, data.run_id)  # what the rerun does: a new version
    top = data.paths.index_dir(data.run_id) / MANIFEST_FILE  # what the flow checks: the version served
    new_index = served(data).directory / INDEX_FILE
    assert problem(top) is None and problems([top, new_index]) == []
    assert new_index.read_bytes() == good  # same vectors → same index bytes
    with pytest.raises(StoreError, match=f"{index_file}") as info:  # never back to the damaged version
        rollback(data.paths, data.run_id)
    assert served(data).version == "0002" and "\n" not in str(info.value)
    want, _ = data.exact(data.users[2:3], 3, [data.train[2]])
    assert recommend_for(data.paths, 2, 3).column("item_id").to_pylist() == want[0].tolist()


def test_publish_is_byte_deterministic(data):
    first = file_sha256(served(data).directory / INDEX_FILE)
    manifest = publish(data.paths, data.run_id)
    assert file_sha256(served(data).directory / INDEX_FILE) == first == manifest["index_sha256"]
    assert (
        manifest["count"] == 40
        and manifest["vectors_hash"]
        == pq.read_schema(data.paths.item_vectors(data.run_id)).metadata[b"vectors_hash"].decode()
    )


# ----------------------------------------------------------------------------- truncated tables


def test_truncated_items_parquet_is_one_store_error(data):
    items = data.paths.items
    good = items.read_bytes()
    items.write_bytes(good[: len(good) // 2])
    for call in (
        lambda: recommend_for(data.paths, 1, 3),
        lambda: similar_to(data.paths, asin="B00003", k=3),
        lambda: run_query(data.paths, "SELECT count(*) FROM items"),
        lambda: read_table(items),
    ):
        with pytest.raises(StoreError) as info:
            call()
        text = one_line(info.value)
        assert (
            text.startswith(f"{items}: not a readable Parquet file")
            and "rerun: anchorrec ingest --dataset toys" in text
        )
    assert problem(items).startswith(f"{items}: not a readable Parquet file")


def test_lost_rows_are_detected_by_recorded_count(tmp_path):
    path = tmp_path / "toys" / "users.parquet"
    write_table(
        pa.table({"user_id": pa.array([1, 2, 3], pa.int32()), "reviewer_id": ["a", "b", "c"]}), path, schemas.USERS
    )
    assert problem(path) is None
    table = pq.read_table(path)  # keeps the writer's metadata (num_rows = 3) but drops a row
    pq.write_table(table.slice(0, 2), path)
    assert problem(path) == f"{path}: has 2 rows but its writer recorded 3 — rerun: anchorrec ingest --dataset toys"
    with pytest.raises(StoreError, match="has 2 rows but its writer recorded 3"):
        read_table(path)


# ------------------------------------------------------------------------------- problem() kinds


def test_problem_for_each_kind_of_file(data, tmp_path):
    p = data.paths
    feature = p.feature("clip-image")
    vectors = p.item_vectors(data.run_id)
    manifest = p.index_dir(data.run_id) / MANIFEST_FILE
    for ok in (p.items, p.users, p.interactions, feature, vectors, p.user_vectors(data.run_id), manifest):
        assert problem(ok) is None, ok
    # missing
    gone = p.feature("nope")
    assert (
        problem(gone)
        == f"{gone}: does not exist — rerun: anchorrec features --dataset toys (or anchorrec pipeline --dataset toys)"
    )
    assert "does not exist — rerun: anchorrec train --dataset toys" in problem(p.metrics(data.run_id))
    assert "has no published index" in problem(p.index_dir("run-zz") / MANIFEST_FILE)
    # truncated
    raw = feature.read_bytes()
    feature.write_bytes(raw[:-20])
    assert "not a readable Parquet file" in problem(feature) and "anchorrec features --dataset toys" in problem(feature)
    # hash mismatch (rows reordered, metadata kept)
    feature.write_bytes(raw)
    shuffle_rows(feature)
    assert "rows do not match the content_hash" in problem(feature)
    with pytest.raises(StoreError, match="clip-image.parquet: rows do not match the content_hash"):
        read_features(feature)
    # a JSON output
    metrics = p.metrics(data.run_id)
    write_json({"ok": 1}, metrics)
    assert problem(metrics) is None
    metrics.write_text("{cut")
    assert problem(metrics).startswith(f"{metrics}: invalid JSON at line 1")
    # a version serves its own copy: a run retrained in place is published anew, the version stays whole
    write_run(p, data.run_id, data.user_ids, data.users, data.item_ids, data.items * 2)
    assert problem(manifest) is None
    # the version's copy replaced by other valid vectors: stale against its index
    write_vectors(serving(p, data.run_id).item_vectors, "item_id", data.item_ids, data.items * 2)
    assert "index was built from item vectors" in problem(manifest)


# ----------------------------------------------------------------------------- numeric ASINs


def test_numeric_asin_is_an_asin(tmp_path):
    data = make_dataset(tmp_path, n_users=20, n_items=120, d=4)
    items = items_table(data.item_ids)
    asins = items.column("asin").to_pylist()
    asins[5] = "0000000098"  # a real-catalog ASIN spelled like item 98
    write_table(items.set_column(1, "asin", pa.array(asins)), data.paths.items, schemas.ITEMS)
    publish(data.paths, data.run_id)
    by_asin = similar_to(data.paths, asin="0000000098", k=4)
    want5, _ = data.exact(data.items[5:6], 4, [{5}])
    assert by_asin.column("item_id").to_pylist() == want5[0].tolist()
    want98, _ = data.exact(data.items[98:99], 4, [{98}])
    assert similar_to(data.paths, 98, 4).column("item_id").to_pylist() == want98[0].tolist()
    assert want5[0].tolist() != want98[0].tolist()


# --------------------------------------------------------------------------- which run answered


def test_sql_names_the_published_run(data):
    write_run(data.paths, "run-b", data.user_ids, data.users, data.item_ids, data.items)
    (data.paths.run("run-b") / "config.json").write_text(json.dumps({"model": "lightgcn", "seed": 7}))
    publish(data.paths, "run-b")
    out = run_query(data.paths, "SELECT published_run() AS r").column("r").to_pylist()
    assert out == ["run-b"]
    rows = run_query(
        data.paths, "SELECT run_id, model, seed, count, current FROM published ORDER BY created"
    ).to_pylist()
    assert rows == [
        {"run_id": "run-a", "model": None, "seed": None, "count": 40, "current": False},
        {"run_id": "run-b", "model": "lightgcn", "seed": 7, "count": 40, "current": True},
    ]
    assert run_query(data.paths, "SELECT published_run() AS r", run_id="run-a").column("r").to_pylist() == ["run-a"]


def test_sql_unknown_dataset_lists_datasets_before_duckdb(tmp_path):
    make_dataset(tmp_path)
    (tmp_path / "other").mkdir()
    paths = DatasetPaths(tmp_path / "nosuch")
    for call in (
        lambda: run_query(paths, "SELECT 1"),
        lambda: recommend_for(paths, 1),
        lambda: similar_to(paths, asin="X"),
    ):
        with pytest.raises(StoreError) as info:
            call()
        assert str(info.value) == (
            f"dataset 'nosuch' not found under {tmp_path} (datasets: other, toys) — "
            "create it with anchorrec pipeline --dataset nosuch"
        )


# ------------------------------------------------------------------------------------ inventory


def test_list_datasets_and_runs(tmp_path):
    data = make_dataset(tmp_path, n_users=20, n_items=40, d=4)
    p = data.paths
    write_run(p, "run-b", data.user_ids, data.users, data.item_ids, data.items)
    write_run(p, "run-c", data.user_ids, data.users, data.item_ids, data.items)
    (p.run("ica-x")).mkdir()
    write_json({"model": "anchorrec", "seed": 1}, p.run(data.run_id) / "config.json")
    write_json(
        {
            "run_id": "run-a",
            "model": "anchorrec",
            "seed": 1,
            "best_epoch": 4,
            "stopped_by_hand": False,
            "valid": {"recall@20": 0.25},
            "test": {"recall@20": 0.2},
        },
        p.metrics(data.run_id),
    )
    write_json({"model": "lightgcn", "seed": 2}, p.run("run-b") / "config.json")
    write_json(
        {
            "model": "lightgcn",
            "seed": 2,
            "stopped_by_hand": True,
            "valid": {"recall@20": 0.1},
            "test": {"recall@20": 0.05},
            "best_epoch": 1,
        },
        p.metrics("run-b"),
    )
    write_json({"model": "alignrec", "seed": 3}, p.run("run-c") / "config.json")
    (p.run("run-c") / "checkpoint.pt").write_bytes(b"ckpt")
    write_json({"config": {"seed": 5}}, p.run("ica-x") / "config.json")
    old = time.time() - 3600
    os.utime(p.run("ica-x") / "config.json", (old, old))
    publish(p, "run-b")
    publish(p, data.run_id)
    (tmp_path / "empty").mkdir()

    sets = list_datasets(tmp_path)
    assert [d["name"] for d in sets] == ["empty", "toys"]
    toys = sets[1]
    assert (toys["items"], toys["users"], toys["interactions"]) == (40, 20, 20 * 6)
    assert toys["features"] == ["clip-image"] and toys["runs"] == 3 and toys["pretrain_runs"] == 1
    assert toys["published"] == ["run-b", "run-a"] and toys["latest"] == "run-a" and toys["broken_manifests"] == []
    assert sets[0] == {
        "name": "empty",
        "items": None,
        "users": None,
        "interactions": None,
        "features": [],
        "runs": 0,
        "pretrain_runs": 0,
        "published": [],
        "latest": None,
        "broken_manifests": [],
    }

    runs = {r["run_id"]: r for r in list_runs(p)}
    assert runs["run-a"] == {
        "run_id": "run-a",
        "model": "anchorrec",
        "seed": 1,
        "status": "finished",
        "valid_recall@20": 0.25,
        "test_recall@20": 0.2,
        "best_epoch": 4,
        "published": True,
        "latest": True,
        "version": "0001",
        "note": None,
    }
    assert (
        runs["run-b"]["status"],
        runs["run-b"]["test_recall@20"],
        runs["run-b"]["published"],
        runs["run-b"]["latest"],
    ) == ("stopped", 0.05, True, False)
    assert (
        runs["run-c"]["status"],
        runs["run-c"]["model"],
        runs["run-c"]["valid_recall@20"],
        runs["run-c"]["published"],
    ) == ("running", "alignrec", None, False)
    assert (runs["ica-x"]["status"], runs["ica-x"]["model"], runs["ica-x"]["seed"]) == ("failed", "ica", 5)
    later = {r["run_id"]: r["status"] for r in list_runs(p, now=time.time() + 3600)}
    assert later == {"ica-x": "failed", "run-a": "finished", "run-b": "stopped", "run-c": "failed"}  # an hour later

    (serving(p, "run-a").directory / MANIFEST_FILE).write_text("nope")
    toys = list_datasets(tmp_path)[1]
    assert toys["latest"] is None and toys["broken_manifests"] == ["run-a"] and toys["published"] == ["run-b"]


# ----------------------------------------------------------------------- deterministic bytes


def test_feature_table_bytes_do_not_depend_on_the_clock(tmp_path, monkeypatch):
    path = tmp_path / "toys" / "features" / "t.parquet"
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    args = dict(
        encoder="e",
        model="m",
        weights="w",
        modality="text",
        input_hash="h",
        valid=np.array([True, False, True]),
        reasons=[None, "empty text", None],
    )
    write_features(path, ["a", "b", "c"], [0, 1, 2], vectors, **args)
    first = file_sha256(path)
    side = json.loads(path.with_suffix(".json").read_text())
    path.unlink()
    import store.vectors as sv

    class Later(sv.datetime):
        @classmethod
        def now(cls, tz=None):
            return sv.datetime(2031, 1, 1, tzinfo=tz)

    monkeypatch.setattr(sv, "datetime", Later)
    write_features(path, ["a", "b", "c"], [0, 1, 2], vectors, **args)
    assert file_sha256(path) == first
    later = json.loads(path.with_suffix(".json").read_text())
    assert later["created_at"].startswith("2031") and side["created_at"] != later["created_at"]
    meta = read_features(path).metadata
    assert "created_at" not in pq.read_schema(path).metadata and meta["created_at"].startswith("2031")
    assert meta["num_rows"] == "3" and meta["content_hash"] == side["content_hash"]


def test_inventory_rows_fit_their_table_schemas(tmp_path):
    from store.inventory import DATASETS_SCHEMA, RUNS_SCHEMA, run_summary

    data = make_dataset(tmp_path, n_users=10, n_items=20, d=4)
    publish(data.paths, data.run_id)
    sets = pa.Table.from_pylist(list_datasets(tmp_path), schema=DATASETS_SCHEMA)
    runs = pa.Table.from_pylist(list_runs(data.paths), schema=RUNS_SCHEMA)
    assert sets.column("items").to_pylist() == [20] and sets.column("latest").to_pylist() == ["run-a"]
    assert runs.column("status").to_pylist() == ["failed"] and runs.column("published").to_pylist() == [True]
    assert run_summary(data.paths, "run-a") == list_runs(data.paths)[0]


# ------------------------------------------------------------------------------ stage records


def test_a_valid_file_that_is_not_what_its_stage_recorded_is_refused_by_every_reader(data):
    from store import records

    p = data.paths
    record = records.write(p.interactions, "ingest")
    assert record == p.root / "records" / "interactions.parquet.json"
    saved = json.loads(record.read_text())
    assert saved["file"] == "interactions.parquet" and saved["rows"] == 20 * 6 and saved["stage"] == "ingest"
    assert problem(p.interactions) is None and read_table(p.interactions).num_rows == 120

    good = read_table(p.interactions)
    write_table(good.slice(0, 10), p.interactions, schemas.INTERACTIONS)  # well-formed, consistent row count
    want = (
        f"{p.interactions}: has 10 rows ({p.interactions.stat().st_size} bytes) but stage ingest recorded 120 rows "
        f"({saved['bytes']} bytes, sha256 {saved['sha256'][:12]}): not the file the stage wrote (emptied, replaced "
        "or from another run) — rerun: anchorrec ingest --dataset toys"
    )
    assert problem(p.interactions) == want
    assert problems([p.items, p.interactions]) == [want]
    for call in (
        lambda: read_table(p.interactions),
        lambda: recommend_for(p, 1, 3),
        lambda: run_query(p, "SELECT count(*) FROM interactions"),
    ):
        with pytest.raises(StoreError) as info:
            call()
        assert one_line(info.value) == want
    assert run_query(p, "SELECT count(*) AS n FROM items").column("n").to_pylist() == [40]  # untouched tables answer

    # a stage that reruns moves the record aside, and a cached or failed one puts it back unchanged
    mtime = record.stat().st_mtime_ns
    aside = records.withdraw([p.interactions, p.items])
    assert list(aside) == [record] and not record.exists() and problem(p.interactions) is None
    records.restore(aside)
    assert record.stat().st_mtime_ns == mtime and problem(p.interactions) == want
    write_table(good, p.interactions, schemas.INTERACTIONS)  # the stage's own bytes again: accepted
    assert problem(p.interactions) is None


def test_records_are_only_for_parquet_outputs_inside_a_dataset(data, tmp_path):
    from store import records

    p = data.paths
    assert records.record_path(p.feature("clip-image")) == p.root / "records" / "features" / "clip-image.parquet.json"
    assert (
        records.record_path(p.user_vectors("run-a"))
        == p.root / "records" / "runs" / "run-a" / "user_vectors.parquet.json"
    )
    assert records.record_path(p.index_dir("run-a") / MANIFEST_FILE) is None  # the index has its own manifest
    assert records.record_path(p.metrics("run-a")) is None
    assert records.record_path(tmp_path / "result.parquet") is None


def test_an_unreadable_record_is_refused_with_the_stage_to_rerun(data):
    from store import records

    p = data.paths
    records.write(p.users, "ingest").write_text("{cut")
    found = problem(p.users)
    assert found.startswith(f"{p.root / 'records' / 'users.parquet.json'}: stage record unreadable (")
    assert found.endswith("rerun: anchorrec ingest --dataset toys")


def test_flipped_bytes_in_a_recorded_file_are_named_as_damage_not_as_a_replaced_file(data):
    from store import records
    from store.verify import checked

    feature = data.paths.feature("clip-image")
    records.write(feature, "features text")
    raw = bytearray(feature.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 16] = bytes(b ^ 0xFF for b in raw[len(raw) // 2 : len(raw) // 2 + 16])
    feature.write_bytes(bytes(raw))
    found = checked(feature)
    assert found.startswith(f"{feature}: not a readable Parquet file (") and "not the file the stage wrote" not in found
    assert found.endswith("rerun: anchorrec features --dataset toys (or anchorrec pipeline --dataset toys)")
