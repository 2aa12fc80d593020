"""Real Gift Cards end to end when images are unreachable, supplied locally, or switched off.

The metadata is the real 2018 file with its image URLs pointed at hosts that cannot answer (a
name under `.invalid` never resolves; a closed port on 127.0.0.1 refuses): what a user sees on a
machine that cannot reach Amazon's image hosts.
"""

from __future__ import annotations

import gzip
import json
import socket
import time
from pathlib import Path

import pytest

import flows
from store import dataset_paths
from store.sql import recommend_for
from store.tables import read_table

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow, pytest.mark.integration]

FAST = dict(release="2018", pretrain_epochs=2, epochs=3, patience=3, image_workers=4)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def unreachable_meta(shared_data: Path, tmp_path_factory) -> Path:
    """meta_Gift_Cards with every image URL dead: half DNS failure, half connection refused."""
    port = _closed_port()
    out = tmp_path_factory.mktemp("meta") / "meta_Gift_Cards.json.gz"
    src = shared_data / "amazon2018-giftcards" / "meta_Gift_Cards.json.gz"
    with gzip.open(src, "rt", encoding="utf-8") as fin, gzip.open(out, "wt", encoding="utf-8") as fout:
        for n, line in enumerate(fin):
            o = json.loads(line)
            host = "images.anchorrec-test.invalid" if n % 2 else f"127.0.0.1:{port}"
            o["imageURL"] = o["imageURLHighRes"] = [f"http://{host}/images/I/{o['asin']}.jpg"]
            fout.write(json.dumps(o) + "\n")
    return out


def _run(tmp_path: Path, shared_data: Path, meta: Path, **extra) -> tuple[dict, float]:
    reviews = shared_data / "amazon2018-giftcards" / "Gift_Cards_5.json.gz"
    t0 = time.perf_counter()
    result = flows.pipeline(dataset="gift", home=str(tmp_path), meta=str(meta), reviews=str(reviews), **FAST, **extra)
    return result, time.perf_counter() - t0


def test_unreachable_images_run_text_only_and_publish(tmp_path, shared_data, unreachable_meta):
    result, seconds = _run(tmp_path, shared_data, unreachable_meta)
    p = dataset_paths("gift", tmp_path)
    assert result["features"] == {"v": "text-minilm", "t": "text-minilm", "mm": "text-minilm"}
    assert result["modalities"]["usable"] == ["text"]
    assert "text only" in result["modalities"]["note"] and "ICA pretraining skipped" in result["modalities"]["note"]
    assert not [r for r in p.run_ids() if r.startswith("ica-")]  # never pretrained on null vectors
    audit = read_table(p.image_audit)
    reasons = set(audit.column("reason").to_pylist()) - {"no_url"}
    assert reasons <= {"dns", "refused", "host_down"} and "host_down" in reasons
    assert audit.column("status").to_pylist().count("ok") == 0
    top = recommend_for(p, 0, 5)
    assert top.num_rows == 5 and all(top.column("title").to_pylist())
    metrics = json.loads(p.metrics(result["run_id"]).read_text())
    assert 0 < metrics["test"]["recall@20"] <= 1
    assert seconds < 240


def test_images_from_a_local_folder_are_used_before_dead_urls(tmp_path, shared_data, unreachable_meta):
    result, _ = _run(
        tmp_path, shared_data, unreachable_meta, images=str(shared_data / "amazon2018-giftcards" / "images")
    )
    p = dataset_paths("gift", tmp_path)
    audit = read_table(p.image_audit).to_pylist()
    local = [r for r in audit if r["source"] == "local_dir"]
    assert len(local) == sum(r["status"] == "ok" for r in audit) >= 100  # 115 of the 148 reviewed items have a photo
    assert {r["reason"] for r in audit if r["source"] is None} <= {"dns", "refused", "host_down", "no_url"}
    assert result["modalities"]["usable"] == ["image", "text"]
    assert result["features"]["v"] == "image-effnet" and result["features"]["mm"].startswith("ica-")


def test_image_encoder_none_is_text_only_on_purpose(tmp_path, shared_data, unreachable_meta):
    result, _ = _run(tmp_path, shared_data, unreachable_meta, image_encoder="none")
    p = dataset_paths("gift", tmp_path)
    assert not p.image_audit.exists()  # no image was even tried
    assert set(result["features"].values()) == {"text-minilm"}
    assert result["modalities"]["note"].startswith("text only (image off)")


def test_your_own_csv_interactions_end_to_end(tmp_path, shared_data, unreachable_meta):
    """Gift Cards reviews as a user's CSV (renamed columns, one bad row), Amazon metadata beside it."""
    import csv

    rows = []
    with gzip.open(shared_data / "amazon2018-giftcards" / "Gift_Cards_5.json.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            o = json.loads(line)
            rows.append(
                {"customer": o["reviewerID"], "product": o["asin"], "stars": o["overall"], "when": o["unixReviewTime"]}
            )
    rows.insert(10, {"customer": "", "product": "B00BROKEN", "stars": 5, "when": 0})  # line 12: no user
    path = tmp_path / "my_orders.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = flows.pipeline(
        dataset="mine",
        home=str(tmp_path),
        release="csv",
        reviews=str(path),
        meta=str(unreachable_meta),
        columns="user=customer,item=product,rating=stars,timestamp=when",
        image_encoder="none",
        epochs=3,
        patience=3,
    )
    p = dataset_paths("mine", tmp_path)
    report = json.loads(p.prepare_report.read_text())
    assert report["bad_records"]["dropped"] == 1
    (example,) = [e for examples in report["bad_records"]["examples"].values() for e in examples]
    assert (example["file"], example["line"]) == ("my_orders.csv", 12)
    assert report["output"]["items"] == 147 and report["metadata"]["meta_check"] == "passed"
    assert result["features"]["t"] == "text-minilm"
    assert recommend_for(p, 0, 3).num_rows == 3
