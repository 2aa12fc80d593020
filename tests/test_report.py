"""The comparison report, long-tail buckets and per-run diagnostics on a tiny synthetic dataset."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from models.evaluation import long_tail, report, run_summary
from models.evaluation.metrics import ranking_metrics
from models.training.data import load_interactions
from store import schemas
from store.errors import StoreError
from store.layout import DatasetPaths, dataset_paths
from store.tables import read_json, write_json, write_table
from store.vectors import write_features, write_vectors

N_USERS, N_ITEMS, DIM = 60, 48, 8
CATS = ["Sports", "Outdoor", "Fitness", "Cycling"]


def _dataset(home: Path) -> DatasetPaths:
    """Items in 4 categories (text features follow them), users who mostly stay in one category."""
    rng = np.random.default_rng(0)
    paths = dataset_paths("tiny", home)
    cat = np.arange(N_ITEMS) % 4
    asins = [f"A{i:04d}" for i in range(N_ITEMS)]
    items = pa.table(
        {
            "item_id": np.arange(N_ITEMS, dtype=np.int32),
            "asin": asins,
            "title": [f"item {i}" for i in range(N_ITEMS)],
            "description": [""] * N_ITEMS,
            "brand": [None] * N_ITEMS,
            "categories": [["Sports & Outdoors", CATS[c]] for c in cat],
            "image_url": [None] * N_ITEMS,
            "text": [f"item {i}" for i in range(N_ITEMS)],
        }
    )
    write_table(items, paths.items, schemas.ITEMS)
    rows = []
    for u in range(N_USERS):
        home_cat = u % 4
        pool = np.flatnonzero(cat == home_cat)
        # popularity skew: low item ids are bought far more often
        p = 1.0 / (1 + np.arange(len(pool)))
        chosen = rng.choice(pool, 7, replace=False, p=p / p.sum())
        for j, i in enumerate(chosen):
            rows.append((u, int(i), "train" if j < 5 else ("valid" if j == 5 else "test")))
    inter = pa.table(
        {
            "user_id": np.array([r[0] for r in rows], np.int32),
            "item_id": np.array([r[1] for r in rows], np.int32),
            "rating": pa.nulls(len(rows), pa.float32()),
            "timestamp": np.zeros(len(rows), np.int64),
            "split": [r[2] for r in rows],
        }
    )
    write_table(inter, paths.interactions, schemas.INTERACTIONS)
    centers = rng.standard_normal((4, 16))
    text = centers[cat] + 0.3 * rng.standard_normal((N_ITEMS, 16))
    vision = rng.standard_normal((N_ITEMS, 6))
    common = dict(encoder="test", model="test", weights="none", input_hash="x")
    write_features(paths.feature("text-test"), asins, np.arange(N_ITEMS), text, modality="text", **common)
    write_features(paths.feature("image-test"), asins, np.arange(N_ITEMS), vision, modality="image", **common)
    return paths


def _run(paths: DatasetPaths, run_id: str, model: str, seed: int, with_id: bool) -> dict:
    rng = np.random.default_rng(100 + seed + (7 if model == "anchorrec" else 0))
    data = load_interactions(paths)
    users = rng.standard_normal((N_USERS, DIM)).astype(np.float32)
    id_items = rng.standard_normal((N_ITEMS, DIM)).astype(np.float32)
    items = id_items if model == "lightgcn" else id_items + rng.standard_normal((N_ITEMS, DIM)).astype(np.float32)
    d = paths.run(run_id)
    write_vectors(d / "user_vectors.parquet", "user_id", np.arange(N_USERS), users)
    write_vectors(d / "item_vectors.parquet", "item_id", np.arange(N_ITEMS), items)
    if with_id:
        write_vectors(d / run_summary.ID_ITEM_VECTORS, "item_id", np.arange(N_ITEMS), id_items)
    feats = {} if model == "lightgcn" else {"t": "text-test", "v": "image-test", "mm": "text-test"}
    write_json({"model": model, "seed": seed, "features": feats, "run_id": run_id}, d / "config.json")
    test = ranking_metrics(users, items, data.train_csr, data.test_csr, ks=(10, 20, 50))
    valid = ranking_metrics(users, items, data.train_csr, data.valid_csr, ks=(10, 20, 50))
    history = [{"epoch": e, "loss": 0.7 / (e + 1), "valid": {"recall@20": 0.1 + 0.01 * e}} for e in range(4)]
    metrics = {
        "run_id": run_id,
        "model": model,
        "seed": seed,
        "best_epoch": 3,
        "epochs_run": 4,
        "valid": valid,
        "test": test,
        "history": history,
        "timings": {"train_s_per_epoch": 0.5},
    }
    write_json(metrics, d / "metrics.json")
    return metrics


# ------------------------------------------------------------------ long tail


def test_popularity_buckets_shares_and_ties() -> None:
    counts = np.array([5, 5, 3, 1, 0, 0, 2, 9, 0, 0])
    r = sp.csr_matrix(np.repeat(np.eye(10), 1, axis=0) * counts)  # column sums = counts
    b = long_tail.popularity_buckets(r)
    # ranked: 7(9), 0(5), 1(5), 2(3), 6(2), 3(1), then zeros by id 4, 5, 8, 9
    assert b.tolist() == [0, 1, 1, 2, 2, 2, 1, 0, 2, 2]
    assert np.bincount(b).tolist() == [2, 3, 5]
    with pytest.raises(ValueError, match="edges"):
        long_tail.popularity_buckets(r, (0.5, 0.2))


def test_long_tail_by_hand() -> None:
    # one user, scores 5, 4, 3, 2, 1: top-2 = items 0, 1; held out {1, 3}; buckets 0,0 head, 1 mid, 2.. tail
    user = np.array([[1.0]])
    items = np.array([[5.0], [4.0], [3.0], [2.0], [1.0]])
    train = sp.csr_matrix((1, 5))
    held = sp.csr_matrix(([1.0, 1.0], ([0, 0], [1, 3])), shape=(1, 5))
    buckets = np.array([0, 0, 1, 2, 2])
    lt = long_tail.long_tail(user, items, train, held, buckets, ks=(2,))
    g = 1 / np.log2(3)
    assert lt["all"]["recall@2"] == pytest.approx(0.5)
    assert lt["all"]["ndcg@2"] == pytest.approx(g / (1 + g))
    assert lt["head"]["recall@2"] == pytest.approx(1.0) and lt["head"]["ndcg@2"] == pytest.approx(g)
    assert lt["tail"]["recall@2"] == 0.0 and lt["tail"]["n_users"] == 1
    assert lt["mid"]["n_users"] == 0 and np.isnan(lt["mid"]["recall@2"])
    # training items are excluded from the ranking: with item 0 trained, top-2 = 1, 2
    lt2 = long_tail.long_tail(user, items, sp.csr_matrix(([1.0], ([0], [0])), shape=(1, 5)), held, buckets, ks=(2,))
    assert lt2["all"]["recall@2"] == pytest.approx(0.5) and lt2["all"]["ndcg@2"] == pytest.approx(1 / (1 + g))


def test_long_tail_buckets_add_up_and_all_matches_ranking_metrics(home: Path) -> None:
    paths = _dataset(home)
    data = load_interactions(paths)
    rng = np.random.default_rng(1)
    u, i = rng.standard_normal((N_USERS, DIM)), rng.standard_normal((N_ITEMS, DIM))
    buckets = long_tail.popularity_buckets(data.train_csr)
    lt = long_tail.long_tail(u, i, data.train_csr, data.test_csr, buckets, ks=(10, 20))
    for k in (10, 20):
        assert sum(lt[b][f"hits@{k}"] for b in long_tail.BUCKETS) == lt["all"][f"hits@{k}"] > 0
        ref = ranking_metrics(u, i, data.train_csr, data.test_csr, ks=(10, 20))
        assert lt["all"][f"recall@{k}"] == pytest.approx(ref[f"recall@{k}"], abs=1e-9)
        assert lt["all"][f"ndcg@{k}"] == pytest.approx(ref[f"ndcg@{k}"], abs=1e-6)
    assert sum(lt[b]["n_heldout"] for b in long_tail.BUCKETS) == lt["all"]["n_heldout"] == data.test_csr.nnz
    assert sum(lt[b]["n_items"] for b in long_tail.BUCKETS) == N_ITEMS


# ------------------------------------------------------------------ one run


def test_diagnose_run_writes_json_and_pictures_and_reuses_them(home: Path) -> None:
    paths = _dataset(home)
    _run(paths, "anchor-s0", "anchorrec", 0, with_id=True)
    d = run_summary.diagnose_run(paths, "anchor-s0", projection_sample=40)
    run_dir = paths.run("anchor-s0")
    saved = read_json(run_dir / "diagnostics.json")
    assert saved["coherence.text@1"] == pytest.approx(d["coherence.text@1"])
    assert {
        "coherence.vision@3",
        "id_dominance",
        "silhouette.id",
        "silhouette.content",
        "alignment",
        "id_overlap@3",
    } <= set(saved)
    for png in saved["pictures"].values():
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = run_summary.diagnose_run(paths, "anchor-s0", projection_sample=40)
    assert again["seconds"] == saved["seconds"]  # reused, not recomputed
    changed = run_summary.diagnose_run(paths, "anchor-s0", projection_sample=40, top=2, pictures=False)
    assert "coherence.text@3" not in changed and "coherence.text@2" in changed


@pytest.mark.filterwarnings("ignore:Number of distinct clusters")
def test_projection_labels_use_the_first_level_where_items_differ(home: Path) -> None:
    paths = _dataset(home)
    data = load_interactions(paths)
    labels, legend = run_summary.projection_labels(paths, data)
    assert legend == "category" and set(labels) == set(CATS)
    # no categories (MMRec imports): content clusters when features are given, else popularity
    items = pq.read_table(paths.items)
    items = items.set_column(
        items.schema.get_field_index("categories"), "categories", pa.array([[]] * N_ITEMS, pa.list_(pa.string()))
    )
    write_table(items, paths.items, schemas.ITEMS)
    text = np.repeat(np.eye(12)[:4], N_ITEMS // 4, axis=0)  # 4 exact content groups
    labels, legend = run_summary.projection_labels(paths, data, {"text": text})
    assert legend.startswith("content cluster") and len(set(labels)) == 4
    for g in range(4):  # items with the same content share a colour
        assert len(set(labels[g * (N_ITEMS // 4) : (g + 1) * (N_ITEMS // 4)])) == 1
    labels, legend = run_summary.projection_labels(paths, data)
    assert legend.startswith("popularity") and sorted(set(labels)) == ["head", "mid", "tail"]


# ------------------------------------------------------------------ the report


def _cells(md: str, section: str) -> list[list[str]]:
    body = md.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in body.splitlines() if ln.startswith("|")][2:]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in rows]


def test_compare_runs_renders_tables_and_pictures(home: Path) -> None:
    paths = _dataset(home)
    metrics = {}
    for model in ("lightgcn", "anchorrec"):
        for seed in (0, 1):
            rid = f"{model}-s{seed}"
            metrics[rid] = _run(paths, rid, model, seed, with_id=rid == "anchorrec-s0")
    out = report.compare_runs(paths, list(metrics), baseline="lightgcn", projection_sample=40)
    assert out.name == "report.md" and out.parent.parent == paths.runs_dir
    md = out.read_text()

    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) >= 5  # curves, coherence, long tail, one projection per model
    for rel in links:
        assert not Path(rel).is_absolute()
        assert (out.parent / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    acc = {row[0]: row for row in _cells(md, "Accuracy")}
    assert set(acc) == {"lightgcn", "anchorrec"}
    keys = ["recall@10", "recall@20", "ndcg@10", "ndcg@20"]
    for model in acc:
        assert acc[model][1] == "2"
        for col, key in enumerate(keys, start=2):
            vals = np.array([metrics[f"{model}-s{s}"]["test"][key] for s in (0, 1)])
            assert acc[model][col] == f"{vals.mean():.4f} ± {vals.std(ddof=1):.4f}"

    sig = _cells(md, "Paired significance")
    assert [r[:3] for r in sig] == [["anchorrec", k, "0,1"] for k in keys]
    n_test_users = int((np.diff(load_interactions(paths).test_csr.indptr) > 0).sum())
    assert all(r[3] == str(n_test_users) for r in sig)
    data = read_json(out.parent / "report.json")
    rec = [s for s in data["significance"] if s["metric"] == "recall@20"][0]
    expected = np.mean(
        [
            metrics[f"anchorrec-s{s}"]["test"]["recall@20"] - metrics[f"lightgcn-s{s}"]["test"]["recall@20"]
            for s in (0, 1)
        ]
    )
    assert rec["mean_diff"] == pytest.approx(expected, abs=1e-9)

    diag = {row[0]: row for row in _cells(md, "Positional-collapse diagnostics")}
    header = [ln for ln in md.split("## Positional-collapse diagnostics", 1)[1].splitlines() if ln.startswith("|")][0]
    assert "text@1" in header and "vision@3" in header and "ID dominance" in header
    col = header.strip("|").split("|").index(" ID overlap@3 ")
    # lightgcn's final space is its ID space by construction (no file needed): overlap is total
    assert diag["lightgcn"][col] == "1.000 ± 0.000"
    # anchorrec-s1 has no ID-space file: its diagnostics are skipped and the report says so
    assert diag["anchorrec"][col].endswith("± 0.000") and float(diag["anchorrec"][col].split()[0]) < 0.5
    assert re.search(r"ID-space diagnostics skipped \(runs: anchorrec-s1\)", md)
    for rid in metrics:
        assert (paths.run(rid) / "diagnostics.json").exists()

    tail = _cells(md, "Long tail")
    assert {(r[0], r[1]) for r in tail} == {
        (m, b) for m in ("lightgcn", "anchorrec") for b in ("all", "head", "mid", "tail")
    }
    all_rows = {r[0]: r for r in tail if r[1] == "all"}
    for model in ("lightgcn", "anchorrec"):
        vals = np.array([metrics[f"{model}-s{s}"]["test"]["recall@20"] for s in (0, 1)])
        assert all_rows[model][4] == f"{vals.mean():.4f} ± {vals.std(ddof=1):.4f}"


def test_runs_kept_as_summaries_give_the_same_report_without_vectors(home: Path) -> None:
    """A leaderboard snapshot keeps config, metrics, diagnostics and per-user metrics, not vectors:
    the report from those equals the one from the vectors, and other settings are refused."""
    paths = _dataset(home)
    runs = [f"{m}-s{s}" for m in ("lightgcn", "anchorrec") for s in (0, 1)]
    for rid in runs:
        model, seed = rid.split("-s")
        _run(paths, rid, model, int(seed), with_id=True)
        run_summary.keep_run_summary(paths, rid, {"text": "text-test"}, projection_sample=40)
        assert (paths.run(rid) / run_summary.PER_USER).exists() and (paths.run(rid) / "projection.png").exists()
    full = report.compare_runs(
        paths,
        runs,
        baseline="lightgcn",
        out=home / "full" / "report.md",
        features={"text": "text-test"},
        projection_sample=40,
    )
    for rid in runs:  # what a machine that lost its disk gets back from the snapshot
        for f in paths.run(rid).glob("*.parquet"):
            f.unlink()
    kept = report.compare_runs(
        paths,
        runs,
        baseline="lightgcn",
        out=home / "kept" / "report.md",
        features={"text": "text-test"},
        projection_sample=40,
    )
    a, b = read_json(full.parent / "report.json"), read_json(kept.parent / "report.json")
    assert a["significance"] == b["significance"] and a["accuracy"] == b["accuracy"]
    assert a["diagnostics"] == b["diagnostics"] and set(a["pictures"]) == set(b["pictures"])
    assert (kept.parent / "projection-anchorrec.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(StoreError, match="diagnostics.json: the run's vectors are not here"):
        run_summary.diagnose_run(paths, "anchorrec-s0", {"text": "text-test"}, top=2)
    (paths.run("lightgcn-s1") / run_summary.PER_USER).unlink()
    with pytest.raises(StoreError, match="per_user.npz: the run's vectors are not here"):
        run_summary.run_per_user(paths, "lightgcn-s1", load_interactions(paths))


def test_compare_runs_refuses_bad_input(home: Path) -> None:
    paths = _dataset(home)
    _run(paths, "a", "lightgcn", 0, with_id=False)
    _run(paths, "b", "lightgcn", 0, with_id=False)
    with pytest.raises(ValueError, match="same seed"):
        report.compare_runs(paths, ["a", "b"])
    with pytest.raises(ValueError, match="baseline"):
        report.compare_runs(paths, ["a"], baseline="alignrec")
    with pytest.raises(ValueError, match="empty"):
        report.compare_runs(paths, [])


def test_training_curves_of_ten_models_by_five_seeds_keep_their_layout(tmp_path: Path, monkeypatch) -> None:
    """A leaderboard plots 50 runs: one legend entry per model, outside the axes, no layout warning."""
    import warnings

    import matplotlib.pyplot as plt

    from models.evaluation import plots

    histories = {
        f"model{m} s{s}": [
            {"epoch": e, "loss": (10.0 if m == 0 else 0.5) / (e + 1), "valid": {"recall@20": 0.1 * e}} for e in range(5)
        ]
        for m in range(10)
        for s in range(5)
    }
    captured = {}
    real_save = plots._save

    def keep(fig, out):
        captured["legends"] = [[t.get_text() for t in lg.get_texts()] for lg in fig.legends]
        captured["yscale"] = fig.axes[0].get_yscale()
        return real_save(fig, out)

    monkeypatch.setattr(plots, "_save", keep)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = plots.training_curves(histories, tmp_path / "curves.png")
    plt.close("all")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert captured["legends"] == [[f"model{m} (5 runs)" for m in range(10)]]
    assert captured["yscale"] == "log"  # losses 20x apart share one readable axis


def test_a_one_dimensional_model_still_gets_its_projection():
    """Popularity's vectors are one number per item: t-SNE starts from random, not from a 2-D PCA."""
    from models.evaluation.plots import tsne_2d

    x = np.random.default_rng(0).random((40, 1)).astype(np.float32)
    out = tsne_2d(x)
    assert out.shape == (40, 2) and np.isfinite(out).all()
