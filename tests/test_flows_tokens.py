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
    applied = flows.pretrain_flow(dataset="small", home=str(home), demo_items=40, seed=1, ica_from=f"big/{run}",
                                  **{k: v for k, v in SMALL.items() if k != "demo_users"})
    small = dataset_paths("small", home)
    name = f"{run}-from-big"
    assert applied["features"]["mm"] == name
    assert not any(r.startswith("ica-") for r in small.run_ids())  # nothing pretrained on the small set
    got = read_features(small.feature(name))
    direct = write_applied_feature(small, dataset_paths("big", home).run(run), "image-effnet", "text-minilm",
                                   "image-effnet-tok", "text-minilm-tok", name="direct")
    want = read_features(direct)
    assert got.asins == want.asins and got.valid.sum() > 0
    np.testing.assert_allclose(got.vectors[got.valid], want.vectors[want.valid], rtol=1e-5, atol=1e-6)


def test_ica_from_a_missing_run_names_the_fix(tmp_path):
    cfg = PipelineConfig(dataset="small", home=str(tmp_path), ica_from="big/ica-nope")
    with pytest.raises(FileNotFoundError, match="anchorrec runs --dataset big"):
        cfg.ica_run()
