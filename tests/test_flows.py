"""The Prefect flows end to end on a small demo catalog: results, caching, partial reruns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import flows
from store import dataset_paths
from store.hashing import file_sha256
from store.vectors import read_vectors
from store.versions import serving

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]

SMALL = dict(demo_items=120, demo_users=160, pretrain_epochs=3, epochs=6, patience=6, image_workers=4)


def small(home: Path, **overrides) -> dict:
    return {"dataset": "demo", "home": str(home), **SMALL, **overrides}


def outputs(root: Path) -> dict[str, float]:
    """mtime of every file the pipeline wrote: a recompute rewrites (atomically) and changes it."""
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in root.rglob("*")
        if p.is_file() and "cache" not in p.parts and p.suffix in (".parquet", ".json", ".faiss", ".pt", ".jpg")
    }


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, prefect_harness):
    home = tmp_path_factory.mktemp("flows")
    result = flows.pipeline(**small(home))
    return home, result


def test_pipeline_writes_every_stage_with_sane_values(first_run):
    home, result = first_run
    p = dataset_paths("demo", home)
    assert set(result["features"]) == {"v", "t", "mm"}
    assert result["features"]["mm"].startswith("ica-")
    metrics = json.loads(p.metrics(result["run_id"]).read_text())
    n_items = result["ingest"]["counts"]["final"]["items"] if "counts" in result["ingest"] else None
    recall = metrics["test"]["recall@20"]
    assert 0.0 < recall <= 1.0
    ids, vecs, _ = read_vectors(p.item_vectors(result["run_id"]), "item_id")
    assert np.isfinite(vecs).all() and len(ids) == (n_items or len(ids))
    served = serving(p, result["run_id"]).directory  # the index version the run serves
    assert json.loads((served / "manifest.json").read_text())["count"] == len(ids)


def test_pipeline_sql_top_n_excludes_training_items(first_run):
    from store.sql import run_query

    home, result = first_run
    p = dataset_paths("demo", home)
    table = run_query(p, flows.SAMPLE_QUERY.format(user=0, k=5), run_id=result["run_id"])
    assert table.num_rows == 5
    assert all(t for t in table.column("title").to_pylist())
    seen = run_query(p, "SELECT item_id FROM interactions WHERE user_id = 0 AND split = 'train'")
    assert not set(table.column("item_id").to_pylist()) & set(seen.column("item_id").to_pylist())


def test_rerun_recomputes_nothing(first_run):
    home, result = first_run
    before = outputs(home / "demo")
    again = flows.pipeline(**small(home))
    assert again["run_id"] == result["run_id"]
    assert outputs(home / "demo") == before
    assert again["train"]["seconds"] == result["train"]["seconds"]  # the cached result itself


def test_changing_one_input_reruns_only_downstream(first_run):
    home, result = first_run
    before = outputs(home / "demo")
    changed = flows.pipeline(**small(home, lr=2e-3))
    assert changed["run_id"] != result["run_id"]
    after = outputs(home / "demo")
    upstream = [k for k in before if not k.startswith(("runs/", "index/"))]
    assert upstream and all(after[k] == before[k] for k in upstream)  # ingest, images, features, ica
    assert any(k.startswith(f"runs/{changed['run_id']}/") for k in after)
    assert f"index/{changed['run_id']}/versions/0001/manifest.json" in after


def test_deleted_feature_table_is_rebuilt_and_downstream_stays_cached(first_run):
    """Same inputs, same bytes: the rebuilt table leaves pretrain/train/publish cache hits."""
    home, result = first_run
    p = dataset_paths("demo", home)
    digest = file_sha256(p.feature("text-minilm"))
    p.feature("text-minilm").unlink()
    downstream = {k: v for k, v in outputs(home / "demo").items() if k.startswith(("runs/", "index/", "features/ica-"))}
    again = flows.pipeline(**small(home))
    assert file_sha256(p.feature("text-minilm")) == digest
    after = outputs(home / "demo")
    assert downstream and all(after[k] == v for k, v in downstream.items())
    assert again["run_id"] == result["run_id"] and again["train"]["seconds"] == result["train"]["seconds"]


def _shuffle_rows(path: Path) -> None:
    table = pq.read_table(path)
    order = np.random.default_rng(0).permutation(table.num_rows)
    pq.write_table(table.take(order).replace_schema_metadata(table.schema.metadata), path)


def test_damaged_outputs_are_detected_and_repaired_by_a_rerun(first_run):
    from store.verify import problem

    home, result = first_run
    p = dataset_paths("demo", home)
    run_id = result["run_id"]
    manifest = p.index_dir(run_id) / "manifest.json"

    _shuffle_rows(p.item_vectors(run_id))  # still a valid Parquet file
    assert "rerun: anchorrec train" in problem(p.item_vectors(run_id))
    (serving(p, run_id).directory / "items.faiss").write_bytes(b"garbage")
    assert problem(manifest)
    with p.items.open("r+b") as fh:  # cut items.parquet
        fh.truncate(p.items.stat().st_size // 2)
    assert problem(p.items)

    again = flows.pipeline(**small(home))
    assert again["run_id"] == run_id
    assert problem(p.items) is None and problem(p.item_vectors(run_id)) is None and problem(manifest) is None

    (serving(p, run_id).directory / "items.faiss").unlink()
    flows.publish_flow(**small(home))  # `anchorrec publish` rebuilds it, whatever the cache says
    assert problem(manifest) is None


def test_bad_parameters_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="release"):
        flows.PipelineConfig(release="1999")
    with pytest.raises(ValueError, match="epochs"):
        flows.PipelineConfig(epochs=0)


def test_readme_similar_items_query_matches_exact_search(first_run):
    """The README's second query: items similar to a given item, with titles, equal to exact search."""
    from store.sql import run_query

    home, result = first_run
    p = dataset_paths("demo", home)
    sql = (
        "SELECT r.item_id, r.score, i.title\n"
        "FROM (SELECT unnest(similar(7, 5), recursive := true)) r JOIN items i USING (item_id)\n"
        "ORDER BY r.score DESC"
    )
    table = run_query(p, sql, run_id=result["run_id"])
    ids, vecs, _ = read_vectors(p.item_vectors(result["run_id"]), "item_id")
    scores = vecs @ vecs[list(ids).index(7)]
    scores[list(ids).index(7)] = -np.inf
    expected = ids[np.argsort(-scores, kind="stable")[:5]]
    assert table.column("item_id").to_pylist() == expected.tolist()
    assert all(t for t in table.column("title").to_pylist())


def test_tune_flow_runs_a_study_caches_it_and_tops_it_up(first_run):
    """The Prefect flow around `anchorrec tune`: the study lives in the dataset, a rerun with the same
    budget is a cache hit, a larger --trials continues the same study."""
    import optuna

    home, _ = first_run
    p = dataset_paths("demo", home)
    args = small(home, model="lightgcn", trials=2, epochs=2, patience=2, pruner="none")
    first = flows.tune_flow(**args)
    best = json.loads((p.root / "tuning" / "lightgcn" / "best.json").read_text())
    assert first["done"] == 2 and first["best_params"] == best["best_params"]
    metrics = json.loads(p.metrics(best["best_run_id"]).read_text())
    assert metrics["valid"]["recall@20"] == first["best_value"] and metrics["epochs_run"] <= 2
    before = (p.root / "tuning" / "lightgcn" / "best.json").stat().st_mtime_ns
    again = flows.tune_flow(**args)
    assert again["best_value"] == first["best_value"]
    assert (p.root / "tuning" / "lightgcn" / "best.json").stat().st_mtime_ns == before  # cached: no trial ran
    more = flows.tune_flow(**{**args, "trials": 3})
    assert more["done"] == 3 and more["ran_now"] == 1 + more["duplicates"] - first["duplicates"]  # one new setting
    storage = f"sqlite:///{p.root / 'tuning' / 'lightgcn' / 'study.db'}"
    assert len(optuna.load_study(study_name="lightgcn", storage=storage).get_trials()) == 3 + more["duplicates"]
