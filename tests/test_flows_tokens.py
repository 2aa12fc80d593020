"""The token path through the flows: --tokens extracts token tables and pretrains the token
encoder; --ica-from applies a finished run to another dataset instead of pretraining there."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import flows
from models.pretraining.apply import write_applied_feature
from pipeline_config import PipelineConfig
from store import dataset_paths
from store.tokens import load_tokens
from store.vectors import read_features

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]

SMALL = dict(demo_users=120, pretrain_epochs=2, image_workers=4, tokens=True, token_grid=2, max_text_tokens=16)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, prefect_harness) -> tuple[Path, dict]:
    home = tmp_path_factory.mktemp("tokens")
    flows.ingest_flow(dataset="big", home=str(home), demo_items=80, demo_users=120)
    return home, flows.pretrain_flow(dataset="big", home=str(home), demo_items=80, **SMALL)


def test_tokens_are_extracted_and_the_encoder_reads_them(pretrained):
    home, result = pretrained
    p = dataset_paths("big", home)
    image = load_tokens(p.token_feature("image-effnet-tok"))
    text = load_tokens(p.token_feature("text-minilm-tok"))
    assert image.tokens.shape[1:] == (4, 1280) and image.valid.sum() > 0.5 * len(image.asin)  # 2 × 2 grid
    assert text.tokens.shape[1] <= 16 and text.ids is not None
    mm = result["features"]["mm"]
    config = json.loads((p.run(mm) / "config.json").read_text())
    assert config["image_tokens"] == "image-effnet-tok" and config["text_tokens"] == "text-minilm-tok"
    table = read_features(p.feature(mm))
    assert len(table.asins) == len(image.asin) and table.valid.sum() > 0
    assert np.isfinite(table.vectors[table.valid]).all() and table.metadata["modality"] == "mm"


def test_ica_from_encodes_another_dataset_with_the_pretrained_run(pretrained):
    home, result = pretrained
    run = result["features"]["mm"]
    flows.ingest_flow(dataset="small", home=str(home), demo_items=40, demo_users=80, seed=1)
    applied = flows.pretrain_flow(
        dataset="small",
        home=str(home),
        demo_items=40,
        seed=1,
        ica_from=f"big/{run}",
        **{k: v for k, v in SMALL.items() if k != "demo_users"},
    )
    small = dataset_paths("small", home)
    name = f"{run}-from-big"
    assert applied["features"]["mm"] == name
    assert not any(r.startswith("ica-") for r in small.run_ids())  # nothing pretrained on the small set
    got = read_features(small.feature(name))
    direct = write_applied_feature(
        small,
        dataset_paths("big", home).run(run),
        "image-effnet",
        "text-minilm",
        "image-effnet-tok",
        "text-minilm-tok",
        name="direct",
    )
    want = read_features(direct)
    assert got.asins == want.asins and got.valid.sum() > 0
    np.testing.assert_allclose(got.vectors[got.valid], want.vectors[want.valid], rtol=1e-5, atol=1e-6)


def test_ica_from_a_missing_run_names_the_fix(tmp_path):
    cfg = PipelineConfig(dataset="small", home=str(tmp_path), ica_from="big/ica-nope")
    with pytest.raises(FileNotFoundError, match="anchorrec runs --dataset big"):
        cfg.ica_run()


@pytest.mark.integration
def test_real_apparel_catalog_pretrains_on_tokens_through_the_flows(shared_data, tmp_path, prefect_harness):
    """A few hundred real apparel photos and titles: catalog-only ingest, token features, the token
    encoder learns held-out image↔text retrieval well above its untrained start; a rerun is cached."""
    import csv

    src = shared_data / "amazon-apparel-tops"
    with open(src / "items.tsv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    chosen = [rows[k] for k in sorted(np.random.default_rng(1).choice(len(rows), 300, replace=False))]
    meta = tmp_path / "items.tsv"
    with open(meta, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(chosen)
    home = tmp_path / "home"
    flows.ingest_flow(dataset="apparel", home=str(home), release="csv", meta=str(meta))
    args = dict(
        dataset="apparel",
        home=str(home),
        images=str(src / "images"),
        tokens=True,
        token_grid=2,
        max_text_tokens=24,
        pretrain_epochs=4,
    )
    result = flows.pretrain_flow(**args)
    p = dataset_paths("apparel", home)
    assert p.catalog_only and load_tokens(p.token_feature("image-effnet-tok")).valid.all()
    metrics = json.loads((p.run(result["features"]["mm"]) / "metrics.json").read_text())
    curve = [h["retrieval/mean_recall@10"] for h in metrics["history"]]
    chance = metrics["history"][0]["retrieval/chance@10"]
    # 30 held-out items (chance@10 = 1/3): untrained 0.37, after 4 epochs 0.57 on this sample
    assert curve[0] < 1.25 * chance and max(curve) > max(curve[0] + 0.1, 1.4 * chance), curve
    before = p.feature(result["features"]["mm"]).stat().st_mtime_ns
    again = flows.pretrain_flow(**args)
    assert again["features"] == result["features"] and p.feature(result["features"]["mm"]).stat().st_mtime_ns == before
