"""Catalog-only datasets (issue 15, item 3): items and images, no interactions.

`ingest --release csv --meta items.tsv` without --reviews gives items.parquet (+ images through the
features stage) and no users/interactions; commands that need interactions refuse in one line
before any work, and say how to get interactions in.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_cli, user_env
from PIL import Image

from pipeline_config import PipelineConfig
from pipelines.catalog_only import CatalogOnlyError, require_interactions
from pipelines.images import fetch_images, read_audit
from pipelines.ingest import ingest
from pipelines.tabular import MISSING_ASIN
from store import schemas
from store.layout import dataset_paths
from store.tables import read_json, read_table

REPO = Path(__file__).resolve().parents[1]
HEADER = ["asin", "title", "brand", "color", "product_type_name", "formatted_price", "image_file"]
REFUSAL = "is catalog-only (no interactions): it can run features, pretrain and publish (content vectors for similar)"


def _photo(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), colour).save(path, format="JPEG")


def tiny_catalog(folder: Path) -> Path:
    """5 items: 3 with a photo on disk, 1 whose photo file is missing, 1 with no image; plus one
    row without an asin (a bad record) and a duplicate asin with fewer fields."""
    rows = [
        ["C3", "Linen Shirt", "Acme", "Heather Grey", "SHIRT", "$10.00", "images/C3.jpg"],
        ["A1", "Tank <b>Top</b>", "Zed", "Navy Blue", "SHIRT", "$5.00", "images/A1.jpg"],
        ["B2", "Wool Blazer", "", "Black", "BLAZER", "$80.00", "images/B2.jpg"],
        ["D4", "Summer Dress", "Acme", "Red", "DRESS", "", "images/D4.jpg"],  # file not on disk
        ["E5", "Plain Tee", "Zed", "White", "SHIRT", "$3.00", ""],
        ["", "no asin here", "Acme", "Blue", "SHIRT", "$1.00", ""],
        ["A1", "Tank", "", "", "", "", ""],
    ]
    for asin, colour in (("A1", (10, 20, 200)), ("B2", (5, 5, 5)), ("C3", (128, 128, 128))):
        _photo(folder / "images" / f"{asin}.jpg", colour)
    meta = folder / "items.tsv"
    with open(meta, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter="\t")
        writer.writerow(HEADER)
        writer.writerows(rows)
    return meta


def test_tiny_catalog_ingests_items_and_images_without_interactions(home: Path, tmp_path: Path) -> None:
    meta = tiny_catalog(tmp_path / "src")
    paths = dataset_paths("cat", home)
    paths.root.mkdir(parents=True)
    paths.interactions.write_bytes(b"stale")  # an earlier ingest of the same name: removed
    report = ingest("cat", "csv", meta=str(meta), home=home, progress=False)

    items = read_table(paths.items, schemas.ITEMS).to_pylist()
    assert [it["asin"] for it in items] == ["A1", "B2", "C3", "D4", "E5"]
    assert [it["item_id"] for it in items] == [0, 1, 2, 3, 4]
    by = {it["asin"]: it for it in items}
    # the more complete duplicate of A1 wins; HTML is cleaned; colour and product type stay out of the text
    assert by["A1"]["text"] == "Tank Top. Brand: Zed"
    assert by["B2"]["text"] == "Wool Blazer" and by["B2"]["brand"] is None
    assert by["C3"]["text"] == "Linen Shirt. Brand: Acme"
    assert not any("Grey" in it["text"] or "SHIRT" in it["text"] for it in items)
    # a local photo is copied into raw/images/ and recorded relative to the dataset: no machine path
    assert by["A1"]["image_url"] == "raw/images/A1.jpg"
    assert (paths.root / "raw/images/A1.jpg").read_bytes() == (tmp_path / "src" / "images" / "A1.jpg").read_bytes()
    assert by["D4"]["image_url"] == "raw/images/D4.jpg" and not (paths.root / "raw/images/D4.jpg").exists()
    assert by["E5"]["image_url"] is None

    assert paths.catalog_only and not paths.interactions.exists() and not paths.users.exists()
    saved = read_json(paths.prepare_report)
    assert saved["catalog_only"] is True and saved == report
    assert report["output"] == {"items": 5, "users": 0, "interactions": 0}
    assert report["metadata"]["duplicate_asins"] == 1
    assert report["missing"]["image"] == 1 and report["missing"]["brand"] == 1
    assert report["bad_records"]["by_reason"] == {MISSING_ASIN: 1}
    assert report["bad_records"]["examples"][MISSING_ASIN][0]["line"] == 7
    assert report["line"].startswith("catalog-only: 5 items, no interactions")

    summary = fetch_images(paths, workers=2, progress=False)
    audit = {r["asin"]: r for r in read_audit(paths).to_pylist()}
    assert {a for a, r in audit.items() if r["status"] in ("ok", "cached")} == {"A1", "B2", "C3"}
    assert audit["E5"]["status"] == "no_url" and audit["D4"]["status"] not in ("ok", "cached")
    assert summary["ok"] + summary["cached"] == 3 and summary["no_url"] == 1 and summary["total"] == 5
    with Image.open(paths.image("B2")) as img:
        assert np.asarray(img.convert("RGB")).mean() < 20  # the black photo, not another one


def test_csv_without_reviews_or_meta_is_still_an_error(home: Path) -> None:
    with pytest.raises(ValueError, match="--release csv needs --reviews"):
        ingest("x", "csv", home=home)
    with pytest.raises(ValueError, match="--release csv needs --reviews"):
        PipelineConfig(release="csv")
    assert PipelineConfig(release="csv", meta="items.tsv").meta == "items.tsv"


def test_columns_with_a_catalog_only_ingest_is_refused(home: Path, tmp_path: Path) -> None:
    meta = tiny_catalog(tmp_path / "src")
    with pytest.raises(ValueError, match="catalog-only ingest"):
        ingest("cat", "csv", meta=str(meta), columns="user=u", home=home, progress=False)
    assert not dataset_paths("cat", home).items.exists()


def test_commands_that_need_interactions_refuse_before_work(home: Path, tmp_path: Path) -> None:
    meta = tiny_catalog(tmp_path / "src")
    ingest("apparel", "csv", meta=str(meta), home=home, progress=False)
    paths = dataset_paths("apparel", home)
    with pytest.raises(CatalogOnlyError) as err:
        require_interactions(paths, "train")
    message = str(err.value)
    assert message.startswith(
        f"dataset 'apparel' {REFUSAL}, not train; to train, ingest interactions with --reviews FILE"
    )
    # prepare.json records the source by name (no machine path), so the hint names the file
    assert f"anchorrec ingest --dataset apparel --release csv --meta {meta.name} --reviews FILE" in message
    assert isinstance(err.value, ValueError)  # a user error: one red line, exit 2


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--dataset", "apparel"],
        ["tune", "--dataset", "apparel"],
        ["recommend", "--dataset", "apparel", "--user", "0"],
    ],
)
def test_cli_refuses_in_one_line(args: list[str], home: Path, tmp_path: Path) -> None:
    meta = tiny_catalog(tmp_path / "src")
    ingest("apparel", "csv", meta=str(meta), home=home, progress=False)
    env = {**os.environ, "ANCHORREC_HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-m", "cli", *args], check=False, cwd=REPO, capture_output=True, text=True, timeout=60, env=env
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: dataset 'apparel' {REFUSAL}, not {args[0]}"), proc.stderr
    assert not (home / "apparel" / "features").exists() and not (home / "apparel" / "runs").exists()


def test_cli_pipeline_with_meta_only_refuses_and_names_the_two_commands(home: Path, tmp_path: Path) -> None:
    meta = tiny_catalog(tmp_path / "src")
    env = {**os.environ, "ANCHORREC_HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "pipeline", "--dataset", "apparel", "--release", "csv", "--meta", str(meta)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert line.startswith("error: --release csv with --meta and no --reviews makes dataset 'apparel' catalog-only")
    assert (
        f"anchorrec ingest --dataset apparel --release csv --meta {meta}, then anchorrec pretrain --dataset apparel"
        in line
    )
    assert not (home / "apparel").exists()


def test_flows_refuse_before_any_stage(home: Path, tmp_path: Path) -> None:
    """Flows called from Python or a deployment (no CLI preflight) check too."""
    import flows

    meta = tiny_catalog(tmp_path / "src")
    ingest("apparel", "csv", meta=str(meta), home=home, progress=False)
    cfg = PipelineConfig(dataset="apparel", home=str(home))
    for body in (flows._train_body, flows._tune_body):
        with pytest.raises(CatalogOnlyError, match=re.escape(REFUSAL)):
            body(cfg)
    with pytest.raises(CatalogOnlyError, match="makes dataset 'x' catalog-only"):
        flows._pipeline_body(PipelineConfig(dataset="x", home=str(home), release="csv", meta=str(meta)))
    assert not (home / "apparel" / "images").exists()


@pytest.mark.integration
def test_two_hundred_real_apparel_items_with_their_photos(shared_data: Path, home: Path, tmp_path: Path) -> None:
    src = shared_data / "amazon-apparel-tops"
    with open(src / "items.tsv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    rng = np.random.default_rng(0)
    chosen = [rows[k] for k in sorted(rng.choice(len(rows), 200, replace=False))]
    meta = tmp_path / "items.tsv"
    with open(meta, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HEADER, delimiter="\t")
        writer.writeheader()
        writer.writerows(chosen)

    report = ingest("apparel", "csv", meta=str(meta), home=home, progress=False)
    paths = dataset_paths("apparel", home)
    assert report["output"]["items"] == 200 and report["bad_records"]["total"] == 0
    assert paths.catalog_only
    items = {it["asin"]: it for it in read_table(paths.items, schemas.ITEMS).to_pylist()}
    assert sorted(items) == sorted(r["asin"] for r in chosen)
    for r in chosen:
        assert items[r["asin"]]["title"] is not None
        assert items[r["asin"]]["text"].startswith(items[r["asin"]]["title"].rstrip(" ."))
        assert r["product_type_name"] not in items[r["asin"]]["text"]

    # the photos come from the shared folder (--images), never from the network
    fetch_images(paths, workers=2, progress=False, images_dir=str(src / "images"))
    audit = read_audit(paths).to_pylist()
    assert len(audit) == 200
    assert all(r["status"] in ("ok", "cached") and r["source"] == "local_dir" for r in audit)
    assert all(paths.image(a).is_file() for a in items)


def test_pretrain_runs_on_a_catalog_only_dataset(home: Path, tmp_path: Path, one_torch_thread) -> None:
    """The encoder trains on the catalog alone: no interactions read, held-out retrieval is its metric."""
    from models.pretraining.ica import ICAConfig
    from models.pretraining.pretrain import pretrain_ica
    from store.vectors import read_features, write_features

    meta = tmp_path / "items.tsv"
    with open(meta, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter="\t")
        writer.writerow(HEADER)
        writer.writerows([f"P{k:03d}", f"Item {k}", "Acme", "Red", "SHIRT", "", ""] for k in range(40))
    ingest("cat", "csv", meta=str(meta), home=home, progress=False)
    paths = dataset_paths("cat", home)
    asins = [f"P{k:03d}" for k in range(40)]
    rng = np.random.default_rng(0)
    shared = rng.normal(size=(40, 8)).astype(np.float32)  # image and text say the same thing
    for name, modality, x in (
        ("image-x", "image", shared @ rng.normal(size=(8, 12))),
        ("text-x", "text", shared @ rng.normal(size=(8, 6))),
    ):
        write_features(
            paths.feature(name),
            asins,
            np.arange(40),
            x.astype(np.float32),
            encoder="test",
            model="synthetic",
            weights="",
            modality=modality,
            input_hash=name,
        )
    cfg = ICAConfig(d_model=16, n_layers=1, n_heads=2, epochs=2, batch_size=16, seed=0, holdout=0.2)
    summary = pretrain_ica(paths, "image-x", "text-x", cfg, run_id="cat", progress=False)
    assert paths.catalog_only and summary["n_items"] == 40 and summary["n_holdout_items"] == 8
    assert summary["epochs_run"] == 2 and "retrieval/mean_recall@10" in summary["final"]
    assert not any(k.startswith("content/") for k in summary["final"])  # nothing read from interactions
    mm = read_features(paths.feature("ica-cat"))
    assert mm.asins == asins and mm.valid.all() and mm.metadata["modality"] == "mm"


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli(user_env(home, home.parent / "prefect"), *args, timeout=300)


@pytest.mark.integration
def test_similar_on_a_catalog_only_dataset_answers_from_content_vectors(
    shared_data: Path, home: Path, tmp_path: Path
) -> None:
    """publish indexes the text vectors as run content-text-minilm; similar and SQL similar() answer
    from it and say so; recommend still refuses in one line."""
    from features.extract import extract
    from store.vectors import read_features

    meta = tmp_path / "items.tsv"
    with open(shared_data / "amazon-apparel-tops" / "items.tsv", encoding="utf-8") as src:
        meta.write_text("".join(next(src) for _ in range(201)), encoding="utf-8")  # header + 200 items
    ingest("apparel", "csv", meta=str(meta), home=home, progress=False)
    paths = dataset_paths("apparel", home)
    extract(paths, "minilm", progress=False)

    proc = _cli(home, "publish", "--dataset", "apparel", "--image-encoder", "none")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (
        "publish: content-text-minilm: content vectors of text-minilm for 200 items (0 without a vector)" in proc.stderr
    )
    assert "published content-text-minilm: content vectors text-minilm answer similar()" in proc.stdout
    assert (home / "apparel" / "index" / "content-text-minilm" / "versions" / "0001" / "items.faiss").is_file()

    items = read_table(paths.items, schemas.ITEMS)
    asin = items.column("asin")[7].as_py()
    proc = _cli(home, "similar", "--dataset", "apparel", "--asin", asin, "-k", "5")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "answered by content vectors feature_text_minilm (no interactions: content similarity)"
    assert len(lines) == 1 + 4 + 5 + 1  # the line, the table's 4 header lines, 5 rows, its bottom border
    shown = [int(line.split("│")[2]) for line in lines[5:10]]

    # the same neighbours by cosine of the stored text vectors, computed here from the feature table
    feats = read_features(paths.feature("text-minilm"))
    unit = feats.vectors / np.linalg.norm(feats.vectors, axis=1, keepdims=True)
    scores = unit @ unit[7]
    scores[7] = -np.inf
    expected = [int(feats.item_ids[j]) for j in np.argsort(-scores, kind="stable")[:5]]
    assert shown == expected and 7 not in shown

    proc = _cli(
        home, "sql", "SELECT item_id FROM (SELECT unnest(similar(7, 5), recursive := true))", "--dataset", "apparel"
    )
    assert proc.returncode == 0, proc.stderr
    assert [int(line.split("│")[1]) for line in proc.stdout.splitlines()[4:9]] == expected

    proc = _cli(home, "recommend", "--dataset", "apparel", "--user", "0")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: dataset 'apparel' {REFUSAL}, not recommend")

    from store.inventory import list_runs

    (run,) = [r for r in list_runs(paths) if r["run_id"] == "content-text-minilm"]
    assert (run["model"], run["status"], run["published"]) == (
        "content",
        "finished",
        True,
    )  # not a guess from file ages
    assert run["note"] == "content vectors of text-minilm (200 of 200 items), no training"


def test_content_vectors_default_to_mm_then_text_then_image_or_the_named_table(home: Path, tmp_path: Path) -> None:
    from store.index import choose_content_feature, content_feature, publish_content
    from store.vectors import write_features

    meta = tiny_catalog(tmp_path / "src")
    ingest("apparel", "csv", meta=str(meta), home=home, progress=False)
    paths = dataset_paths("apparel", home)
    with pytest.raises(
        ValueError,
        match="has no feature tables to publish for similar\\(\\); extract them first: "
        "anchorrec features --dataset apparel",
    ):
        choose_content_feature(paths)
    asins = ["A1", "B2", "C3", "D4", "E5"]
    rng = np.random.default_rng(0)
    for name, modality in (("image-x", "image"), ("text-x", "text")):
        vectors = rng.normal(size=(5, 4)).astype(np.float32)
        valid = np.array([True, True, True, True, modality == "text"])  # E5 has no image
        write_features(
            paths.feature(name),
            asins,
            np.arange(5),
            vectors,
            encoder="test",
            model="synthetic",
            weights="",
            modality=modality,
            input_hash=name,
            valid=valid,
            reasons=[None] * 4 + [None if modality == "text" else "no_url"],
        )
    assert choose_content_feature(paths) == "text-x"
    assert choose_content_feature(paths, "image-x") == "image-x"
    with pytest.raises(
        ValueError,
        match="--vectors nope: dataset 'apparel' has no features/nope.parquet; feature tables: image-x, text-x",
    ):
        choose_content_feature(paths, "nope")
    manifest = publish_content(paths, "image-x")
    assert manifest["run"] == "content-image-x" and manifest["count"] == 4 and manifest["without_vector"] == 1
    assert content_feature(manifest) == "image-x"
    write_features(
        paths.feature("ica-x"),
        asins,
        np.arange(5),
        rng.normal(size=(5, 4)).astype(np.float32),
        encoder="test",
        model="synthetic",
        weights="",
        modality="mm",
        input_hash="ica",
    )
    assert choose_content_feature(paths) == "ica-x"
