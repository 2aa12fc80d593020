"""store.index: publishing FAISS indexes atomically, verifying them on load, exact search."""

from __future__ import annotations

import hashlib
import json
import threading

import numpy as np
import pytest
from store_testdata import make_dataset

from store import StoreError
from store.index import (
    INDEX_FILE,
    MANIFEST_FILE,
    IndexConfig,
    excluded_mask,
    latest_run,
    load_index,
    publish,
    published_runs,
)
from store.tables import read_metadata
from store.vectors import write_vectors
from store.versions import serving


def served_dir(data):
    """The version directory the run serves now (store.versions)."""
    return serving(data.paths, data.run_id).directory


def make_unversioned(paths, run_id):
    """An index directory as written before versions: items.faiss + manifest.json in index/<run>/."""
    import shutil

    top = paths.index_dir(run_id)
    source = serving(paths, run_id).directory
    for name in (INDEX_FILE, MANIFEST_FILE):
        shutil.copyfile(source / name, top / name)
    (top / "CURRENT").unlink()
    shutil.rmtree(top / "versions")


@pytest.fixture()
def data(tmp_path):
    return make_dataset(tmp_path)


def test_publish_writes_index_and_manifest(data):
    manifest = publish(data.paths, data.run_id)
    top = data.paths.index_dir(data.run_id)
    assert sorted(p.name for p in top.iterdir() if not p.name.startswith(".")) == ["CURRENT", "versions"]
    assert (top / "CURRENT").read_text() == "0001\n" and manifest["version"] == "0001"
    directory = served_dir(data)
    assert directory == top / "versions" / "0001"
    assert sorted(p.name for p in directory.iterdir()) == [
        "change.json",
        "item_vectors.parquet",
        INDEX_FILE,
        MANIFEST_FILE,
        "user_vectors.parquet",
    ]
    assert [p.name for p in (top / "versions").iterdir()] == ["0001"], "temp dir left behind"
    assert manifest["users"] == 40 and manifest["item_vectors"] == "index/run-a/versions/0001/item_vectors.parquet"
    on_disk = json.loads((directory / MANIFEST_FILE).read_text())
    assert on_disk == manifest
    assert manifest["run"] == data.run_id
    assert manifest["dim"] == 8 and manifest["count"] == 120 and manifest["metric"] == "ip"
    assert manifest["kind"] == "flat" and manifest["index_type"] == "IndexIDMap2(IndexFlatIP)"
    assert manifest["vectors_hash"] == read_metadata(data.paths.item_vectors(data.run_id))["vectors_hash"]
    assert manifest["index_sha256"] == hashlib.sha256((directory / INDEX_FILE).read_bytes()).hexdigest()
    assert manifest["created_at"].startswith("20")


def test_flat_search_equals_numpy(data):
    publish(data.paths, data.run_id)
    index = load_index(data.paths, data.run_id)
    ids, scores = index.search(data.users, 7)
    want_ids, want_scores = data.exact(data.users, 7)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    one_ids, _ = index.search(data.users[3], 7)  # a 1-D query is one query
    np.testing.assert_array_equal(one_ids[0], want_ids[3])


def test_search_returns_real_item_ids(tmp_path):
    data = make_dataset(tmp_path)
    real = 1000 + 7 * data.item_ids
    write_vectors(data.paths.item_vectors(data.run_id), "item_id", real, data.items)
    publish(data.paths, data.run_id)
    ids, _ = load_index(data.paths, data.run_id).search(data.users[:5], 4)
    want, _ = data.exact(data.users[:5], 4)
    np.testing.assert_array_equal(ids, 1000 + 7 * want)


def test_exclusions_are_exact_including_heavy_rows(data):
    publish(data.paths, data.run_id)
    index = load_index(data.paths, data.run_id)
    rng = np.random.default_rng(1)
    sizes = [0, 1, 3, 10, 50, 100, 117, 0, 5]
    exclude = [rng.choice(data.item_ids, size=s, replace=False) for s in sizes]
    queries = data.users[: len(sizes)]
    ids, scores = index.search(queries, 5, exclude)
    want_ids, want_scores = data.exact(queries, 5, [set(e.tolist()) for e in exclude])
    for row in range(len(sizes)):
        got = ids[row][ids[row] >= 0]
        np.testing.assert_array_equal(got, want_ids[row])
        np.testing.assert_allclose(scores[row][: len(got)], want_scores[row], rtol=1e-5, atol=1e-5)
    # 117 of 120 excluded: only 3 results, the rest are empty slots
    assert (ids[6] >= 0).sum() == 3
    assert np.all(ids[6][3:] == -1) and np.all(np.isneginf(scores[6][3:]))


def test_k_is_clamped_to_catalog_and_validated(data):
    publish(data.paths, data.run_id)
    index = load_index(data.paths, data.run_id)
    ids, _ = index.search(data.users[:2], 10_000)
    assert ids.shape == (2, 120) and sorted(ids[0]) == list(range(120))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="k must be"):
            index.search(data.users[:2], bad)


def test_wrong_dimension_and_non_finite_queries(data):
    publish(data.paths, data.run_id)
    index = load_index(data.paths, data.run_id)
    with pytest.raises(ValueError, match=r"dimension 8"):
        index.search(np.zeros((2, 5), np.float32), 3)
    bad = data.users[:2].copy()
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        index.search(bad, 3)
    with pytest.raises(ValueError, match="exclude has 1 entries for 2 queries"):
        index.search(data.users[:2], 3, [np.array([1])])


def test_hnsw_records_params_and_finds_neighbours(tmp_path):
    data = make_dataset(tmp_path, n_items=600, n_users=30)
    manifest = publish(data.paths, data.run_id, hnsw_threshold=500, hnsw_m=16, ef_construction=80, ef_search=64)
    assert manifest["kind"] == "hnsw" and manifest["index_type"] == "IndexIDMap2(IndexHNSWFlat)"
    assert manifest["params"] == {"hnsw_m": 16, "ef_construction": 80, "ef_search": 64}
    index = load_index(data.paths, data.run_id)
    ids, _ = index.search(data.users, 10)
    want, _ = data.exact(data.users, 10)
    recall = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(ids, want)])
    assert recall >= 0.95
    excl = [np.array(w[:3]) for w in want]  # exclusions work through HNSW too
    ids2, _ = index.search(data.users, 5, excl)
    assert not any(np.isin(a, e).any() for a, e in zip(ids2, excl))


def test_index_config_validation():
    with pytest.raises(ValueError, match="kind"):
        IndexConfig(kind="ivf-magic")
    with pytest.raises(ValueError, match="hnsw_m"):
        IndexConfig(hnsw_m=0)
    assert IndexConfig(hnsw_threshold=10).resolve(10) == "hnsw"
    assert IndexConfig(hnsw_threshold=10).resolve(9) == "flat"
    assert IndexConfig(kind="flat").resolve(10**9) == "flat"


def test_republish_swaps_without_breaking_open_reader(data):
    publish(data.paths, data.run_id)
    old_reader = load_index(data.paths, data.run_id)
    old_ids, _ = old_reader.search(data.users, 5)
    new_items = np.random.default_rng(9).standard_normal(data.items.shape).astype(np.float32)
    write_vectors(data.paths.item_vectors(data.run_id), "item_id", data.item_ids, new_items)
    publish(data.paths, data.run_id)
    # the old reader still answers from the old vectors, consistently
    again, _ = old_reader.search(data.users, 5)
    np.testing.assert_array_equal(again, old_ids)
    np.testing.assert_array_equal(old_ids, data.exact(data.users, 5)[0])
    # a new reader sees the new vectors
    new_ids, _ = load_index(data.paths, data.run_id).search(data.users, 5)
    data.items = new_items
    np.testing.assert_array_equal(new_ids, data.exact(data.users, 5)[0])


def test_concurrent_publish_and_load_always_consistent(data):
    """Readers racing a publisher never get an index from one publish with another's manifest."""
    sets = {}
    for seed in (1, 2):
        items = np.random.default_rng(seed).standard_normal(data.items.shape).astype(np.float32)
        write_vectors(data.paths.item_vectors(data.run_id), "item_id", data.item_ids, items)
        sets[publish(data.paths, data.run_id)["vectors_hash"]] = items
    errors: list[BaseException] = []
    stop = threading.Event()

    def publisher() -> None:
        try:
            for turn in range(12):
                items = list(sets.values())[turn % 2]
                write_vectors(data.paths.item_vectors(data.run_id), "item_id", data.item_ids, items)
                publish(data.paths, data.run_id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            stop.set()

    thread = threading.Thread(target=publisher)
    thread.start()
    loads = 0
    while not stop.is_set() or loads < 3:
        index = load_index(data.paths, data.run_id, check_vectors=False)
        items = sets[index.manifest["vectors_hash"]]
        got, _ = index.search(data.users[:4], 3)
        want = np.argsort(-(data.users[:4] @ items.T), axis=1)[:, :3]
        np.testing.assert_array_equal(got, want)
        loads += 1
    thread.join()
    assert not errors


def test_not_published_missing_and_corrupt_files(data):
    with pytest.raises(StoreError, match="no published index") as info:
        load_index(data.paths, data.run_id)
    assert MANIFEST_FILE in str(info.value)
    publish(data.paths, data.run_id)
    index_file = served_dir(data) / INDEX_FILE
    good = index_file.read_bytes()

    index_file.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(StoreError, match="rerun: anchorrec publish --dataset toys") as info:
        load_index(data.paths, data.run_id)
    assert str(index_file) in str(info.value) and "sha256" in str(info.value)

    index_file.unlink()
    with pytest.raises(StoreError, match="index file is missing — rerun: anchorrec publish --dataset toys"):
        load_index(data.paths, data.run_id)

    # garbage whose hash the manifest agrees with: FAISS itself refuses it
    garbage = b"not a faiss index" * 10
    index_file.write_bytes(garbage)
    manifest_path = served_dir(data) / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["index_sha256"] = hashlib.sha256(garbage).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="FAISS cannot read it"):
        load_index(data.paths, data.run_id)

    manifest_path.write_text("{not json")
    with pytest.raises(StoreError, match="invalid JSON"):
        load_index(data.paths, data.run_id)


def test_manifest_count_mismatch(data):
    publish(data.paths, data.run_id)
    manifest_path = served_dir(data) / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["count"] = 999
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="holds 120 vectors of dim 8, manifest says 999"):
        load_index(data.paths, data.run_id)


def test_index_stale_after_vectors_change(data):
    """An unversioned index (an older home) still reads, from the run's vectors, and refuses stale ones."""
    publish(data.paths, data.run_id)
    make_unversioned(data.paths, data.run_id)
    index = load_index(data.paths, data.run_id)
    assert index.version is None and index.path == data.paths.index_dir(data.run_id) / INDEX_FILE
    np.testing.assert_array_equal(index.search(data.users, 5)[0], data.exact(data.users, 5)[0])
    write_vectors(data.paths.item_vectors(data.run_id), "item_id", data.item_ids, data.items * 2)
    with pytest.raises(StoreError, match="rerun: anchorrec publish --dataset toys") as info:
        load_index(data.paths, data.run_id)
    assert "item_vectors.parquet" in str(info.value)
    load_index(data.paths, data.run_id, check_vectors=False)  # explicitly allowed
    data.paths.item_vectors(data.run_id).unlink()
    with pytest.raises(StoreError, match="item vectors of run 'run-a' are gone"):
        load_index(data.paths, data.run_id)


def test_publish_refuses_bad_vectors(data):
    bad = data.items.copy()
    bad[5, 2] = np.inf
    write_vectors(data.paths.item_vectors(data.run_id), "item_id", data.item_ids, bad)
    with pytest.raises(StoreError, match=r"NaN/inf \(first item_id 5\)"):
        publish(data.paths, data.run_id)
    write_vectors(data.paths.item_vectors(data.run_id), "item_id", np.zeros(120), data.items)
    with pytest.raises(StoreError, match="duplicate item_id"):
        publish(data.paths, data.run_id)
    with pytest.raises(StoreError, match="does not exist"):
        publish(data.paths, "no-such-run")
    with pytest.raises(ValueError, match="invalid run name"):
        publish(data.paths, "../escape")


def test_latest_run_and_published_runs(data):
    assert latest_run(data.paths) is None and published_runs(data.paths) == []
    publish(data.paths, data.run_id)
    from store_testdata import write_run

    write_run(data.paths, "run-b", data.user_ids, data.users, data.item_ids, data.items)
    publish(data.paths, "run-b")
    assert [r for r, _ in published_runs(data.paths)] == ["run-a", "run-b"]
    assert latest_run(data.paths) == "run-b"
    publish(data.paths, data.run_id)  # re-publishing makes it the latest
    assert latest_run(data.paths) == "run-a"
    (served_dir(data) / MANIFEST_FILE).write_text("{broken")
    # the newest run's manifest is garbage: an error naming it, never the older run-b
    with pytest.raises(
        StoreError, match=r"index/run-a/versions/0002/manifest\.json: invalid JSON .*newest published run"
    ) as info:
        latest_run(data.paths)
    assert "anchorrec publish --dataset toys" in str(info.value) and "\n" not in str(info.value)
    assert [r for r, _ in published_runs(data.paths)] == ["run-b"]


def test_reconstruct_and_unknown_item(data):
    publish(data.paths, data.run_id)
    index = load_index(data.paths, data.run_id)
    np.testing.assert_array_equal(index.reconstruct(np.array([3, 7])), data.items[[3, 7]])
    with pytest.raises(ValueError, match="unknown item_id 5000"):
        index.reconstruct(np.array([5000]))


def test_excluded_mask():
    ids = np.array([[1, 2, 3], [3, 2, -1]])
    mask = excluded_mask(ids, [np.array([2, 9]), np.array([3])])
    np.testing.assert_array_equal(mask, [[False, True, False], [True, False, False]])
    np.testing.assert_array_equal(excluded_mask(ids, [np.array([]), np.array([])]), np.zeros((2, 3), bool))
