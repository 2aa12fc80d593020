"""One run's summary files: its diagnostics, per-user test metrics and pictures, made while its
vectors are here, and the loading of a run whether its vectors are kept or only its summary.

A leaderboard snapshot carries these small files (config.json, metrics.json, diagnostics.json,
per_user.npz, pictures) to a machine that lost its disk; the comparison report (report.py) and the
leaderboard read them from there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from models.evaluation import diagnostics, plots
from models.evaluation.long_tail import BUCKETS, long_tail, popularity_buckets
from models.evaluation.metrics import ranking_metrics
from models.training.data import InteractionData, load_interactions, load_modalities, warm_subset
from store.errors import StoreError
from store.layout import DatasetPaths
from store.tables import atomic_path, read_json, read_table, write_json
from store.vectors import array_hash, read_vectors

ID_ITEM_VECTORS = "id_item_vectors.parquet"
DIAGNOSTICS = "diagnostics.json"
PER_USER = "per_user.npz"
MODALITY_NAMES = {"t": "text", "v": "vision"}  # coherence is reported for these (METHOD.md)
REPORT_KS = (10, 20)


@dataclass
class RunInfo:
    run_id: str
    model: str
    seed: int
    config: dict[str, Any]
    metrics: dict[str, Any]
    dir: Path = field(repr=False, default=Path("."))


def load_run(paths: DatasetPaths, run_id: str) -> RunInfo:
    """config.json + metrics.json of a finished run (StoreError naming the file otherwise)."""
    run_dir = paths.run(run_id)
    config = read_json(run_dir / "config.json")
    metrics = read_json(paths.metrics(run_id))
    if "test" not in metrics:
        raise StoreError(paths.metrics(run_id), "has no 'test' metrics: the run did not finish", "rerun training")
    model = config.get("model") or metrics.get("model")
    if not model:
        raise StoreError(run_dir / "config.json", "has no 'model'", "rerun training")
    return RunInfo(run_id, str(model), int(config.get("seed", metrics.get("seed", 0))), config, metrics, run_dir)


def vectors_kept(paths: DatasetPaths, run_id: str) -> bool:
    """False for a run kept as its summary only (metrics, diagnostics, per-user test metrics)."""
    return paths.user_vectors(run_id).exists() and paths.item_vectors(run_id).exists()


def _summary_only(path: Path, what: str) -> StoreError:
    return StoreError(
        path,
        f"the run's vectors are not here (a kept summary) and this file, which would give its {what}, "
        "is missing or was made with other settings",
        "retrain the run, or report it with the settings its summary was made with",
    )


def load_report_data(paths: DatasetPaths) -> InteractionData:
    """The interactions a report and the diagnostics read: the warm sub-catalog when the dataset has
    cold items (the split a run's `test` metrics and per-user file are computed on), else all."""
    data = load_interactions(paths)
    return warm_subset(data) if len(data.cold_items) else data


def run_vectors(
    paths: DatasetPaths, run_id: str, data: InteractionData
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(user, item, ID-space item or None) matrices of a run, rows in id order, checked against the data.

    On a warm sub-catalog (`load_report_data`) the item rows are the warm items', in warm order,
    whether the run wrote every item (a cold path) or the warm ones only."""
    out: list[np.ndarray | None] = []
    for path, key, n in (
        (paths.user_vectors(run_id), "user_id", data.n_users),
        (paths.item_vectors(run_id), "item_id", data.n_items),
        (paths.run(run_id) / ID_ITEM_VECTORS, "item_id", data.n_items),
    ):
        if key == "item_id" and path.name == ID_ITEM_VECTORS and not path.exists():
            out.append(None)
            continue
        ids, vectors, _ = read_vectors(path, key)
        if key == "item_id" and data.holdout is not None:
            ids, vectors = _warm_rows(path, ids, vectors, data.holdout.warm_ids)
        if len(ids) != n or not np.array_equal(np.sort(ids), np.arange(n)):
            raise StoreError(
                path,
                f"holds {len(ids)} rows, expected {key} 0..{n - 1}",
                "the run was trained on another version of the dataset: rerun it",
            )
        mat = np.empty_like(vectors)
        mat[ids] = vectors
        out.append(mat)
    users, items = out[0], out[1]
    assert users is not None and items is not None  # only the ID-space table may be absent
    return users, items, out[2]


def _warm_rows(path: Path, ids: np.ndarray, vectors: np.ndarray, warm_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A run's warm item rows re-indexed to warm order (0..n_warm-1)."""
    pos = np.full(int(max(ids.max(initial=-1), warm_ids.max(initial=-1))) + 1, -1, np.int64)
    pos[ids] = np.arange(len(ids))
    rows = pos[warm_ids]
    if (rows < 0).any():
        raise StoreError(
            path,
            f"has no vector for {int((rows < 0).sum())} warm item(s)",
            "the run was trained on another split: rerun it",
        )
    return np.arange(len(warm_ids)), vectors[rows]


def default_features(configs: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """{'text': table, 'vision': table} from the runs' configs (first run that names one wins)."""
    out: dict[str, str] = {}
    for cfg in configs:
        for modality, name in MODALITY_NAMES.items():
            table = (cfg.get("features") or {}).get(modality)
            if table and name not in out:
                out[name] = table
    return out


# ------------------------------------------------------------------------------ one run


def _item_categories(paths: DatasetPaths, n_items: int) -> list[list[str]]:
    if not paths.items.exists():
        return [[] for _ in range(n_items)]
    t = read_table(paths.items, columns=["item_id", "categories"])
    cats: list[list[str]] = [[] for _ in range(n_items)]
    for i, c in zip(t.column("item_id").to_pylist(), t.column("categories").to_pylist()):
        if 0 <= i < n_items:
            cats[i] = list(c or [])
    return cats


def projection_labels(
    paths: DatasetPaths, data: InteractionData, raw: Mapping[str, np.ndarray] | None = None, seed: int = 0
) -> tuple[np.ndarray, str]:
    """Colours of the t-SNE pictures: item categories (plots.category_labels); without categories,
    KMeans clusters of the raw content features (then the picture shows directly whether the
    final space keeps the content's grouping); without features, popularity buckets."""
    labels, level = plots.category_labels(_item_categories(paths, data.n_items))
    if level:
        return labels, "category"
    content = diagnostics._content_space(raw or {})
    if content is not None and data.n_items > 10:
        clusters = diagnostics.kmeans_labels(content, 10, seed)
        return np.array([f"content cluster {c}" for c in clusters], dtype=object), "content cluster (no categories)"
    names = np.array(BUCKETS, dtype=object)
    return names[popularity_buckets(data.train_csr)], "popularity (no categories)"


def diagnose_run(
    paths: DatasetPaths,
    run_id: str,
    features: dict[str, str] | None = None,
    *,
    data: InteractionData | None = None,
    top: int = 3,
    n_clusters: int = 10,
    seed: int = 0,
    sample: int | None = 4000,
    projection_sample: int = 2000,
    pictures: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Diagnostics of one run → runs/<run_id>/diagnostics.json (+ training_curves.png, projection.png).

    `features` maps a display name to a feature table, e.g. {'text': 'text-minilm', 'vision':
    'image-clip'}; by default the run's own t and v tables. The result is reused while the run's
    vectors and these settings are unchanged (force=True recomputes); a run kept as its summary (no
    vectors) returns its diagnostics.json if made with these settings, else a StoreError.
    """
    info = load_run(paths, run_id)
    features = dict(features) if features is not None else default_features([info.config])
    settings = {
        "features": features,
        "top": top,
        "n_clusters": n_clusters,
        "seed": seed,
        "sample": sample,
        "buckets": list(BUCKETS),
    }
    want_pictures = {"projection_sample": projection_sample} if pictures else None
    out_path = info.dir / DIAGNOSTICS
    cached = read_json(out_path) if out_path.exists() else {}
    cached_settings = {k: v for k, v in cached.get("inputs", {}).items() if not k.endswith("_hash")}
    usable = cached_settings == settings and (want_pictures is None or cached.get("pictures_inputs") == want_pictures)
    if not vectors_kept(paths, run_id):
        if not usable:
            raise _summary_only(out_path, "diagnostics")
        return cached
    data = data or load_report_data(paths)
    user, item, id_item = run_vectors(paths, run_id, data)
    id_note = None
    if id_item is None and info.model == "lightgcn":
        id_item = item  # LightGCN has no content branch: its final item space is its ID space
        id_note = "lightgcn: ID space = final item space (the model has no content branch)"
    inputs = {
        "item_vectors_hash": array_hash(item),
        "id_item_vectors_hash": array_hash(id_item) if id_item is not None else None,
        **settings,
    }
    if usable and not force and cached.get("inputs") == inputs:
        return cached
    t0 = time.perf_counter()
    raw = load_modalities(paths, features, asins=data.asins) if features else {}
    diag: dict[str, Any] = diagnostics.diagnose_embeddings(
        item, user, data.train_csr, raw, id_item, top=top, n_clusters=n_clusters, seed=seed, sample=sample
    )
    if id_note:
        diag["notes"] = list(diag["notes"]) + [id_note]
    buckets = popularity_buckets(data.train_csr)
    diag["long_tail"] = long_tail(user, item, data.train_csr, data.test_csr, buckets, ks=REPORT_KS)
    diag.update(run_id=run_id, model=info.model, seed=info.seed, inputs=inputs)
    if pictures:
        pics = {"training_curves": "training_curves.png"}
        plots.training_curves(
            {f"{info.model} s{info.seed}": info.metrics.get("history", [])}, info.dir / pics["training_curves"]
        )
        labels, legend = projection_labels(paths, data, raw, seed)
        plots.projection(
            id_item,
            item,
            labels,
            info.dir / "projection.png",
            projection_sample,
            seed,
            f"{info.model} s{info.seed}",
            legend,
        )
        pics["projection"] = "projection.png"
        diag["pictures"], diag["pictures_inputs"] = pics, want_pictures
    diag["seconds"] = round(time.perf_counter() - t0, 2)
    write_json(diag, out_path)
    return diag


def run_per_user(paths: DatasetPaths, run_id: str, data: InteractionData) -> dict[str, np.ndarray]:
    """Per-user test metrics of a run ({'users': ids, 'recall@20': …}), cached in per_user.npz.

    The paired tests need them per user; cached beside the diagnostics they outlive the vectors, so a
    run kept as its summary is still compared user by user."""
    path = paths.run(run_id) / PER_USER
    split = array_hash(data.test_csr.indptr, data.test_csr.indices)
    if not vectors_kept(paths, run_id):
        if not path.exists():
            raise _summary_only(path, "per-user test metrics")
        with np.load(path) as z:
            if str(z["split"]) != split:
                raise StoreError(path, "was computed on another test split", "retrain the run on this dataset")
            return {k: z[k] for k in z.files if k not in ("key", "split")}
    user, item, _ = run_vectors(paths, run_id, data)
    key = array_hash(user, item) + str(REPORT_KS)
    if path.exists():
        with np.load(path) as z:
            if str(z["key"]) == key and str(z["split"]) == split:
                return {k: z[k] for k in z.files if k not in ("key", "split")}
    out = ranking_metrics(user, item, data.train_csr, data.test_csr, ks=REPORT_KS, per_user=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, key=key, split=split, **out)
    return out


def keep_run_summary(
    paths: DatasetPaths,
    run_id: str,
    features: dict[str, str] | None = None,
    *,
    top: int = 3,
    n_clusters: int = 10,
    sample: int | None = 4000,
    projection_sample: int = 2000,
) -> None:
    """What a report needs of a run, made while its vectors are here: diagnostics.json with its
    pictures, and per_user.npz. A leaderboard calls it as each run ends, so that these small files
    (kept by a snapshot) report the run on a machine that has lost the vectors."""
    data = load_report_data(paths)
    diagnose_run(
        paths,
        run_id,
        features,
        data=data,
        top=top,
        n_clusters=n_clusters,
        sample=sample,
        projection_sample=projection_sample,
        pictures=True,
    )
    run_per_user(paths, run_id, data)
