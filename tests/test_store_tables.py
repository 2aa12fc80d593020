"""The store's existing contract modules: layout, atomic tables/JSON, feature tables and vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from store import StoreError, dataset_paths, schemas
from store.layout import DatasetPaths, check_name
from store.tables import (
    atomic_path,
    read_json,
    read_metadata,
    read_table,
    write_json,
    write_table,
)
from store.vectors import (
    align_features,
    array_hash,
    fixed_list,
    read_features,
    read_vectors,
    to_matrix,
    vectors_hash,
    write_features,
    write_vectors,
)

# ------------------------------------------------------------------------------------- layout


@pytest.mark.parametrize("name", ["", ".hidden", "../up", "a/b", "a\\b", "with space", "-dash-first"])
def test_check_name_refuses_path_tricks(name):
    with pytest.raises(ValueError, match="invalid run name") as info:
        check_name("run", name)
    assert repr(name) in str(info.value)


def test_check_name_accepts_ordinary_names():
    for name in ("run-1", "clip_vit.b32", "A9", "2026-11-24T08.00"):
        assert check_name("run", name) == name


def test_dataset_paths_follow_home_and_list_runs_features(home):
    paths = dataset_paths("toys")
    assert paths.root == home / "toys" and paths.name == "toys"
    assert paths.item_vectors("r1") == home / "toys" / "runs" / "r1" / "item_vectors.parquet"
    assert paths.index_dir("r1") == home / "toys" / "index" / "r1"
    assert paths.feature("clip") == home / "toys" / "features" / "clip.parquet"
    assert paths.run_ids() == [] and paths.feature_names() == []
    (paths.runs_dir / "b").mkdir(parents=True)
    (paths.runs_dir / "a").mkdir()
    paths.features_dir.mkdir()
    (paths.features_dir / "text.parquet").write_bytes(b"")
    assert paths.run_ids() == ["a", "b"] and paths.feature_names() == ["text"]
    with pytest.raises(ValueError, match="invalid dataset name"):
        dataset_paths("../etc")
    with pytest.raises(ValueError, match="invalid feature name"):
        paths.feature("a/b")
    assert dataset_paths("x", home=home / "elsewhere").root == home / "elsewhere" / "x"


# -------------------------------------------------------------------------------- atomic writes


def test_atomic_path_keeps_old_file_when_writer_crashes(tmp_path):
    target = tmp_path / "t.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new conte")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"], "temporary file left behind"


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_get_the_umask_mode_not_0600(tmp_path, umask):
    """A serving process of another user must be able to read tables, JSON and images it may read."""
    import os

    from pipelines.images import _write_atomic

    old = os.umask(umask)
    try:
        table = write_table(
            pa.table({"user_id": pa.array([1], pa.int32()), "reviewer_id": ["a"]}),
            tmp_path / "users.parquet",
            schemas.USERS,
        )
        doc = write_json({"a": 1}, tmp_path / "m.json")
        _write_atomic(tmp_path / "B0001.jpg", b"jpeg bytes")
    finally:
        os.umask(old)
    for path in (table, doc, tmp_path / "B0001.jpg"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["B0001.jpg", "m.json", "users.parquet"]


def test_write_table_crash_midway_leaves_old_table(tmp_path, monkeypatch):
    path = tmp_path / "users.parquet"
    old = pa.table({"user_id": pa.array([1, 2], pa.int32()), "reviewer_id": ["a", "b"]})
    write_table(old, path, schemas.USERS)

    def half_write(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 truncated")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", half_write)
    new = pa.table({"user_id": pa.array([9], pa.int32()), "reviewer_id": ["z"]})
    with pytest.raises(OSError, match="disk full"):
        write_table(new, path, schemas.USERS)
    monkeypatch.undo()
    assert read_table(path, schemas.USERS).to_pydict() == old.to_pydict()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users.parquet"]


def test_write_json_roundtrip_and_invalid_json_names_line(tmp_path):
    path = write_json({"b": 1, "a": [1, 2]}, tmp_path / "m.json")
    assert read_json(path) == {"a": [1, 2], "b": 1}
    path.write_text('{\n "a": 1,\n oops\n}')
    with pytest.raises(StoreError, match=r"m\.json: invalid JSON at line 3"):
        read_json(path)
    with pytest.raises(StoreError, match="does not exist"):
        read_json(tmp_path / "missing.json")


# ---------------------------------------------------------------------------- validating reads


def test_read_table_errors_name_file_and_column(tmp_path):
    missing = tmp_path / "items.parquet"
    with pytest.raises(StoreError, match=r"items\.parquet: does not exist — rerun: anchorrec ingest --dataset "):
        read_table(missing)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"this is not parquet")
    with pytest.raises(StoreError, match=r"garbage\.parquet: not a readable Parquet file"):
        read_table(garbage)

    path = tmp_path / "users.parquet"
    pq.write_table(pa.table({"user_id": [1, 2]}), path)
    with pytest.raises(StoreError, match=r"users\.parquet: missing column\(s\) \['reviewer_id'\]"):
        read_table(path, schemas.USERS)
    pq.write_table(pa.table({"user_id": ["x", "y"], "reviewer_id": ["a", "b"]}), path)
    with pytest.raises(StoreError, match=r"column 'user_id' is string, expected int32"):
        read_table(path, schemas.USERS)
    pq.write_table(pa.table({"user_id": pa.array([1, None], pa.int64()), "reviewer_id": ["a", "b"]}), path)
    with pytest.raises(StoreError, match=r"column 'user_id' has 1 null value"):
        read_table(path, schemas.USERS)


def test_read_table_casts_selects_and_keeps_metadata(tmp_path):
    path = tmp_path / "users.parquet"
    table = pa.table({"extra": [0, 0], "reviewer_id": ["a", "b"], "user_id": pa.array([1, 2], pa.int64())})
    write_table(table, path, metadata={"source": "test"})
    out = read_table(path, schemas.USERS)
    assert out.column_names == ["user_id", "reviewer_id"]
    assert out.schema.field("user_id").type == pa.int32()
    assert out.schema.metadata[b"source"] == b"test"
    assert read_metadata(path) == {"source": "test", "num_rows": "2"}
    only = read_table(path, schemas.USERS, columns=["reviewer_id"])
    assert only.column_names == ["reviewer_id"]


# ------------------------------------------------------------------------------------ vectors


def test_fixed_list_to_matrix_roundtrip_with_nulls():
    m = np.arange(12, dtype=np.float32).reshape(4, 3)
    valid = np.array([True, False, True, True])
    arr = fixed_list(m, valid)
    assert arr.null_count == 1 and arr.type == pa.list_(pa.float32(), 3)
    back, back_valid = to_matrix(pa.chunked_array([arr]), 3)
    np.testing.assert_array_equal(back_valid, valid)
    np.testing.assert_array_equal(back[valid], m[valid])
    np.testing.assert_array_equal(back[1], 0)
    sliced, _ = to_matrix(arr.slice(2), 3)  # offsets are honoured
    np.testing.assert_array_equal(sliced, m[2:])
    with pytest.raises(ValueError, match=r"\(n, d\) matrix"):
        fixed_list(np.zeros(3))


def test_feature_table_roundtrip_with_missing_rows(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5, 4)).astype(np.float32)
    valid = np.array([True, True, False, True, False])
    path = write_features(
        tmp_path / "f" / "clip.parquet",
        ["a", "b", "c", "d", "e"],
        [0, 1, 2, 3, 4],
        vectors,
        encoder="clip",
        model="ViT-B-32",
        weights="openai",
        modality="image",
        input_hash="h1",
        valid=valid,
        reasons=[None, None, "no image", None, "undecodable"],
    )
    ft = read_features(path)
    assert ft.asins == ["a", "b", "c", "d", "e"] and ft.dim == 4
    np.testing.assert_array_equal(ft.valid, valid)
    np.testing.assert_array_equal(ft.vectors[valid], vectors[valid])
    assert (ft.vectors[~valid] == 0).all()
    assert ft.reasons == [None, None, "no image", None, "undecodable"]
    assert {k: ft.metadata[k] for k in ("encoder", "model", "dim", "modality", "input_hash")} == {
        "encoder": "clip",
        "model": "ViT-B-32",
        "dim": "4",
        "modality": "image",
        "input_hash": "h1",
    }
    assert set(schemas.FEATURE_METADATA_KEYS) <= set(ft.metadata)
    with pytest.raises(ValueError, match="modality must be one of"):
        write_features(
            tmp_path / "x.parquet",
            ["a"],
            [0],
            vectors[:1],
            encoder="e",
            model="m",
            weights="w",
            modality="audio",
            input_hash="h",
        )
    with pytest.raises(ValueError, match="1 vectors but 2 asins"):
        write_features(
            tmp_path / "x.parquet",
            ["a", "b"],
            [0],
            vectors[:1],
            encoder="e",
            model="m",
            weights="w",
            modality="text",
            input_hash="h",
        )


def test_read_features_refuses_foreign_tables(tmp_path):
    path = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"asin": ["a"], "item_id": [0], "vector": [[1.0, 2.0]]}), path)
    with pytest.raises(StoreError, match="no 'dim' metadata"):
        read_features(path)
    with pytest.raises(StoreError, match="does not exist"):
        read_features(tmp_path / "none.parquet")


def test_align_features_by_asin_and_misalignment_error(tmp_path):
    vectors = np.arange(8, dtype=np.float32).reshape(4, 2)
    path = write_features(
        tmp_path / "t.parquet",
        ["d", "c", "b", "a"],
        [3, 2, 1, 0],
        vectors,
        encoder="e",
        model="m",
        weights="w",
        modality="text",
        input_hash="h",
        valid=np.array([True, True, False, True]),
    )
    ft = read_features(path)
    out, valid = align_features(ft, ["a", "b", "c", "d", "new"])
    np.testing.assert_array_equal(out[0], vectors[3])  # asin 'a' was the last row
    np.testing.assert_array_equal(out[2], vectors[1])
    np.testing.assert_array_equal(valid, [True, False, True, True, False])
    np.testing.assert_array_equal(out[4], 0)
    with pytest.raises(StoreError, match=r"only 1 of 4 items have a row.*another catalog") as info:
        align_features(ft, ["a", "x", "y", "z"], source=path)
    assert str(path) in str(info.value)


def test_run_vectors_roundtrip_and_hash(tmp_path):
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((6, 5)).astype(np.float32)
    ids = np.array([10, 11, 12, 20, 21, 22])
    path = write_vectors(tmp_path / "item_vectors.parquet", "item_id", ids, vectors, metadata={"run": "r"})
    got_ids, got, meta = read_vectors(path, "item_id")
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got, vectors)
    assert meta["vectors_hash"] == vectors_hash(ids, vectors) and meta["dim"] == "5" and meta["run"] == "r"
    assert meta["num_rows"] == "6" and meta["hash_of"] == "ids+vectors"
    assert vectors_hash(ids, vectors) != vectors_hash(ids[::-1], vectors[::-1])  # a row shuffle changes it
    assert vectors_hash(ids, vectors) != vectors_hash(ids[::-1], vectors)  # ids moved against vectors too
    assert array_hash(vectors) != array_hash(vectors * 2)
    assert array_hash(vectors) != array_hash(vectors.reshape(5, 6))  # shape is part of the hash
    with pytest.raises(ValueError, match="key must be"):
        write_vectors(path, "asin", ids, vectors)
    listy = tmp_path / "listy.parquet"
    pq.write_table(pa.table({"item_id": pa.array([1], pa.int32()), "vector": [[1.0, 2.0]]}), listy)
    with pytest.raises(StoreError, match="expected a fixed-size float list"):
        read_vectors(listy, "item_id")
    with pytest.raises(StoreError, match=r"missing column\(s\) \['user_id'\]"):
        read_vectors(path, "user_id")


def test_paths_are_plain_values():
    a, b = DatasetPaths(Path("/x/toys")), DatasetPaths(Path("/x/toys"))
    assert a == b and hash(a) == hash(b) and not Path("/x/toys").exists()


def test_errors_cross_process_boundaries_intact():
    """A worker process's error is pickled to the parent: type, message and parts must survive."""
    import pickle

    from pipelines.download import DownloadError
    from store.errors import StoreError
    from store.sql import QueryError

    for err in (
        StoreError("/d/items.parquet", "missing", "run anchorrec ingest"),
        QueryError(None, "bad SQL"),
        DownloadError("http://x/a.jpg", "HTTP 404", "check the URL", [("http://x/a.jpg", "HTTP 404")]),
    ):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err) and vars(back) == vars(err)
