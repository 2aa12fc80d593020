"""Compare trained runs (models × seeds) on one dataset: one markdown report with its pictures.

What a reader gets, and why each part is there:
- test Recall/NDCG@10/20 as mean ± std over seeds — one seed is an anecdote;
- paired significance against a baseline model, on per-user test metrics recomputed from the
  runs' vectors and paired across the same users (and the same seeds) — two means ± std that
  overlap can still differ consistently user by user, and the converse;
- the positional-collapse diagnostics of models.evaluation.diagnostics — AnchorRec's claim is about the
  geometry of the item space, which accuracy alone cannot show;
- the long tail: test metrics on held-out items of each popularity bucket (AlignRec reports its
  gains there; a popularity-driven space wins the head and loses the tail);
- the pictures (training curves, t-SNE of ID vs final item space, coherence and long-tail bars).

Per run, `diagnose_run` writes runs/<run_id>/diagnostics.json (+ its pictures) and `run_per_user`
per_user.npz; the report reuses them while the run's vectors and the settings are unchanged. A run
kept as its summary only (those files, config.json and metrics.json, without vectors: what a
leaderboard snapshot carries to a machine that lost its disk) is reported from them.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from models.evaluation import diagnostics, plots
from models.evaluation.metrics import paired_test, per_user_metrics
from models.training.data import InteractionData, load_interactions, load_modalities
from store.errors import StoreError
from store.layout import DatasetPaths
from store.tables import atomic_path, read_json, read_table, write_json
from store.vectors import array_hash, read_vectors

ID_ITEM_VECTORS = "id_item_vectors.parquet"
DIAGNOSTICS = "diagnostics.json"
PER_USER = "per_user.npz"
MODALITY_NAMES = {"t": "text", "v": "vision"}  # coherence is reported for these (METHOD.md)
BUCKETS = ("head", "mid", "tail")
REPORT_KS = (10, 20)


# ------------------------------------------------------------------------------ runs


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
    return StoreError(path, f"the run's vectors are not here (a kept summary) and this file, which would give its {what}, "
                      "is missing or was made with other settings", "retrain the run, or report it with the settings "
                      "its summary was made with")


def run_vectors(paths: DatasetPaths, run_id: str, data: InteractionData) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(user, item, ID-space item or None) matrices of a run, rows in id order, checked against the data."""
    out = []
    for path, key, n in (
        (paths.user_vectors(run_id), "user_id", data.n_users),
        (paths.item_vectors(run_id), "item_id", data.n_items),
        (paths.run(run_id) / ID_ITEM_VECTORS, "item_id", data.n_items),
    ):
        if key == "item_id" and path.name == ID_ITEM_VECTORS and not path.exists():
            out.append(None)
            continue
        ids, vectors, _ = read_vectors(path, key)
        if len(ids) != n or not np.array_equal(np.sort(ids), np.arange(n)):
            raise StoreError(path, f"holds {len(ids)} rows, expected {key} 0..{n - 1}", "the run was trained on another version of the dataset: rerun it")
        mat = np.empty_like(vectors)
        mat[ids] = vectors
        out.append(mat)
    return out[0], out[1], out[2]


def default_features(configs: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """{'text': table, 'vision': table} from the runs' configs (first run that names one wins)."""
    out: dict[str, str] = {}
    for cfg in configs:
        for modality, name in MODALITY_NAMES.items():
            table = (cfg.get("features") or {}).get(modality)
            if table and name not in out:
                out[name] = table
    return out


# ------------------------------------------------------------------------------ long tail


def popularity_buckets(train_csr: sp.spmatrix, edges: Sequence[float] = (0.2, 0.5)) -> np.ndarray:
    """Bucket index per item: 0 = head (top 20% of items by training interactions), 1 = mid
    (next 30%), 2 = tail (the remaining 50%) with the default edges (cumulative item shares).

    Items are ranked by count, ties by item id, so every bucket has exactly its share of items.
    """
    edges = [float(e) for e in edges]
    if any(not 0 < e < 1 for e in edges) or edges != sorted(edges):
        raise ValueError(f"edges must be increasing shares in (0, 1), got {edges}")
    counts = np.asarray(train_csr.sum(axis=0)).ravel()
    n = len(counts)
    order = np.lexsort((np.arange(n), -counts))  # most popular first, ties by id
    cuts = [int(round(e * n)) for e in edges]
    bucket = np.empty(n, dtype=np.int64)
    bucket[order] = np.searchsorted(cuts, np.arange(n), side="right")
    return bucket


@torch.no_grad()
def top_k(
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    train_csr: sp.spmatrix,
    users: np.ndarray,
    k: int,
    block: int = 2048,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """(len(users), k) top-scored items per user, training items excluded (full ranking)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    u_all = torch.as_tensor(np.asarray(user_emb, np.float32), device=dev)
    i_all = torch.as_tensor(np.asarray(item_emb, np.float32), device=dev)
    train_csr = sp.csr_matrix(train_csr)
    k = min(k, i_all.shape[0])
    out = np.empty((len(users), k), dtype=np.int64)
    for start in range(0, len(users), block):
        u = users[start : start + block]
        scores = u_all[torch.as_tensor(u, device=dev)] @ i_all.T
        tr = train_csr[u]
        rows = np.repeat(np.arange(len(u)), np.diff(tr.indptr))
        scores[torch.as_tensor(rows, device=dev), torch.as_tensor(tr.indices.astype(np.int64), device=dev)] = -torch.inf
        out[start : start + len(u)] = torch.topk(scores, k, dim=1).indices.cpu().numpy()
    return out


def long_tail(
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    train_csr: sp.spmatrix,
    heldout_csr: sp.spmatrix,
    buckets: np.ndarray,
    ks: Sequence[int] = (20,),
    names: Sequence[str] = BUCKETS,
) -> dict[str, dict[str, float]]:
    """Test metrics restricted to held-out items of each popularity bucket (plus 'all').

    The ranking is the ordinary full ranking over all items; only the hits are split: for a
    bucket B and a user with held-out items H_B ≠ ∅ in B, recall@k = |top-k ∩ H_B| / |H_B| and
    ndcg@k = Σ_{hits in B at rank r} 1/log2(r+1) / IDCG(min(|H_B|, k)), averaged over the users
    that have held-out items in B. Hits of the buckets add up to the hits of 'all'.
    """
    heldout_csr = sp.csr_matrix(heldout_csr)
    buckets = np.asarray(buckets, dtype=np.int64)
    if buckets.shape != (heldout_csr.shape[1],) or buckets.min(initial=0) < 0 or buckets.max(initial=0) >= len(names):
        raise ValueError(f"buckets must hold one index in 0..{len(names) - 1} per item ({heldout_csr.shape[1]} items)")
    n_heldout = np.diff(heldout_csr.indptr)
    users = np.flatnonzero(n_heldout > 0)
    max_k = max(ks)
    top = top_k(user_emb, item_emb, train_csr, users, max_k)
    sub = heldout_csr[users]
    sub.sort_indices()
    n_items = heldout_csr.shape[1]
    rows = np.repeat(np.arange(len(users), dtype=np.int64), np.diff(sub.indptr))
    keys = rows * n_items + sub.indices  # sorted: rows ascend, indices sorted within a row
    q = np.arange(len(users), dtype=np.int64)[:, None] * n_items + top
    pos = np.minimum(np.searchsorted(keys, q), max(len(keys) - 1, 0))
    hit = keys[pos] == q if len(keys) else np.zeros(top.shape, dtype=bool)
    discount = 1.0 / np.log2(np.arange(2, max_k + 2))
    ideal = np.cumsum(discount)
    n_buckets = len(names)
    per_bucket = np.bincount(rows * n_buckets + buckets[sub.indices], minlength=len(users) * n_buckets)
    per_bucket = per_bucket.reshape(len(users), n_buckets)
    out: dict[str, dict[str, float]] = {}
    groups = [("all", None)] + [(name, b) for b, name in enumerate(names)]
    for name, b in groups:
        if b is None:
            in_b, n_b = hit, n_heldout[users]
        else:
            in_b = hit & (buckets[top] == b)
            n_b = per_bucket[:, b]
        mask = n_b > 0
        res: dict[str, float] = {"n_users": int(mask.sum()), "n_heldout": int(n_b.sum())}
        if b is not None:
            res["n_items"] = int((buckets == b).sum())
        for k in ks:
            kk = min(k, top.shape[1])
            hits_k = in_b[:, :kk]
            res[f"hits@{k}"] = int(hits_k.sum())
            if mask.any():
                rec = hits_k.sum(1)[mask] / n_b[mask]
                idcg = ideal[np.minimum(n_b[mask], kk) - 1]
                ndcg = (hits_k[mask] * discount[:kk]).sum(1) / idcg
                res[f"recall@{k}"], res[f"ndcg@{k}"] = float(rec.mean()), float(ndcg.mean())
            else:
                res[f"recall@{k}"] = res[f"ndcg@{k}"] = float("nan")
        out[name] = res
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
    settings = {"features": features, "top": top, "n_clusters": n_clusters, "seed": seed, "sample": sample,
                "buckets": list(BUCKETS)}
    want_pictures = {"projection_sample": projection_sample} if pictures else None
    out_path = info.dir / DIAGNOSTICS
    cached = read_json(out_path) if out_path.exists() else {}
    cached_settings = {k: v for k, v in cached.get("inputs", {}).items() if not k.endswith("_hash")}
    usable = cached_settings == settings and (want_pictures is None or cached.get("pictures_inputs") == want_pictures)
    if not vectors_kept(paths, run_id):
        if not usable:
            raise _summary_only(out_path, "diagnostics")
        return cached
    data = data or load_interactions(paths)
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
        plots.training_curves({f"{info.model} s{info.seed}": info.metrics.get("history", [])}, info.dir / pics["training_curves"])
        labels, legend = projection_labels(paths, data, raw, seed)
        plots.projection(id_item, item, labels, info.dir / "projection.png", projection_sample, seed, f"{info.model} s{info.seed}", legend)
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
    out = per_user_metrics(user, item, data.train_csr, data.test_csr, ks=REPORT_KS)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, key=key, split=split, **out)
    return out


def keep_run_summary(paths: DatasetPaths, run_id: str, features: dict[str, str] | None = None, *, top: int = 3,
                     n_clusters: int = 10, sample: int | None = 4000, projection_sample: int = 2000) -> None:
    """What a report needs of a run, made while its vectors are here: diagnostics.json with its
    pictures, and per_user.npz. A leaderboard calls it as each run ends, so that these small files
    (kept by a snapshot) report the run on a machine that has lost the vectors."""
    data = load_interactions(paths)
    diagnose_run(paths, run_id, features, data=data, top=top, n_clusters=n_clusters, sample=sample,
                 projection_sample=projection_sample, pictures=True)
    run_per_user(paths, run_id, data)


# ------------------------------------------------------------------------------ report


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _fmt(ms: tuple[float, float], digits: int = 4) -> str:
    m, s = ms
    if np.isnan(m):
        return "–"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def _p(p: float) -> str:
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _group(runs: Sequence[RunInfo]) -> dict[str, list[RunInfo]]:
    groups: dict[str, list[RunInfo]] = {}
    for r in runs:
        groups.setdefault(r.model, []).append(r)
    for model, rs in groups.items():
        seeds = [r.seed for r in rs]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"model {model!r} has two runs with the same seed ({sorted(seeds)}): pass one run per seed")
        rs.sort(key=lambda r: r.seed)
    return dict(sorted(groups.items()))


def significance(
    groups: Mapping[str, Sequence[RunInfo]],
    per_user: Mapping[str, dict[str, np.ndarray]],
    baseline: str,
    metrics: Sequence[str],
) -> list[dict[str, Any]]:
    """Paired tests of each model against `baseline` on per-user test metrics.

    Runs are paired by seed; each user's metric is averaged over the paired seeds, then a paired
    t-test and a Wilcoxon signed-rank test compare the two models across users. 'seeds_better'
    counts the paired seeds where the model's mean beats the baseline's.
    """
    base = {r.seed: r for r in groups[baseline]}
    rows = []
    for model, runs in groups.items():
        if model == baseline:
            continue
        pairs = [(r, base[r.seed]) for r in runs if r.seed in base]
        for metric in metrics:
            row: dict[str, Any] = {"model": model, "baseline": baseline, "metric": metric, "seeds": [r.seed for r, _ in pairs]}
            if not pairs:
                row["note"] = "no seed in common with the baseline"
                rows.append(row)
                continue
            users = per_user[pairs[0][0].run_id]["users"]
            for r, b in pairs:
                for rid in (r.run_id, b.run_id):
                    if not np.array_equal(per_user[rid]["users"], users):
                        raise ValueError(f"run {rid} was evaluated on other users than {pairs[0][0].run_id}")
            a = np.mean([per_user[r.run_id][metric] for r, _ in pairs], axis=0)
            bb = np.mean([per_user[b.run_id][metric] for _, b in pairs], axis=0)
            row.update(paired_test(a, bb))
            row["seeds_better"] = int(sum(per_user[r.run_id][metric].mean() > per_user[b.run_id][metric].mean() for r, b in pairs))
            rows.append(row)
    return rows


def _diag_columns(diags: Sequence[Mapping[str, Any]], top: int) -> list[tuple[str, str]]:
    keys: list[tuple[str, str]] = []
    names = sorted({k.split(".", 1)[1].split("@")[0] for d in diags for k in d if k.startswith("coherence.")})
    for name in names:
        keys += [(f"coherence.{name}@{r}", f"{name}@{r}") for r in range(1, top + 1)]
    keys += [
        ("id_dominance", "ID dominance"),
        (f"id_overlap@{top}", f"ID overlap@{top}"),
        ("silhouette.id", "sil. ID"),
        ("silhouette.content", "sil. content"),
        ("silhouette.final", "sil. final"),
        ("silhouette.final_by_content", "sil. final (content clusters)"),
        ("alignment", "alignment"),
        ("uniformity", "uniformity"),
    ]
    return [(k, label) for k, label in keys if any(k in d for d in diags)]


def compare_runs(
    paths: DatasetPaths,
    run_ids: list[str],
    baseline: str | None = None,
    out: Path | None = None,
    *,
    features: dict[str, str] | None = None,
    top: int = 3,
    n_clusters: int = 10,
    sample: int | None = 4000,
    projection_sample: int = 2000,
    title: str | None = None,
) -> Path:
    """Write the comparison report of `run_ids` (grouped by config.json 'model', one run per seed).

    `baseline` is a model name (default: lightgcn when present, else the first model); `out` the
    report file (default runs/report-<timestamp>/report.md; the pictures go beside it and are
    linked relatively). `features` as in `diagnose_run`, by default the runs' t and v tables.
    Returns the report's path; the numbers also go to report.json beside it.
    """
    if not run_ids:
        raise ValueError("run_ids is empty: give at least one run")
    runs = [load_run(paths, r) for r in run_ids]
    groups = _group(runs)
    if baseline is None:
        baseline = "lightgcn" if "lightgcn" in groups else next(iter(groups))
    if baseline not in groups:
        raise ValueError(f"baseline model {baseline!r} is not among the runs' models {sorted(groups)}")
    out = Path(out) if out is not None else paths.runs_dir / f"report-{time.strftime('%Y%m%d-%H%M%S')}" / "report.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    features = dict(features) if features is not None else default_features([r.config for r in runs])
    data = load_interactions(paths)

    diags: dict[str, dict[str, Any]] = {}
    per_user: dict[str, dict[str, np.ndarray]] = {}
    for r in runs:
        diags[r.run_id] = diagnose_run(
            paths, r.run_id, features, data=data, top=top, n_clusters=n_clusters, sample=sample, pictures=False
        )
        per_user[r.run_id] = run_per_user(paths, r.run_id, data)

    metric_keys = [f"{m}@{k}" for m in ("recall", "ndcg") for k in REPORT_KS]
    sig = significance(groups, per_user, baseline, metric_keys)
    raw = load_modalities(paths, features, asins=data.asins) if features else {}
    pictures = _report_pictures(paths, data, raw, groups, diags, out.parent, top, projection_sample)
    lines = _render(paths, groups, diags, per_user, sig, baseline, features, pictures, metric_keys, top, title)
    out.write_text("\n".join(lines) + "\n")
    write_json(
        {
            "dataset": paths.name,
            "baseline": baseline,
            "features": features,
            "runs": {
                r.run_id: {
                    "model": r.model, "seed": r.seed, "best_epoch": r.metrics.get("best_epoch"),
                    "epochs_run": r.metrics.get("epochs_run"), "stopped_by_hand": r.metrics.get("stopped_by_hand", False),
                    "valid": r.metrics.get("valid", {}), "test": r.metrics["test"],
                }
                for r in runs
            },
            "accuracy": {
                m: {k: _mean_std([r.metrics["test"].get(k) for r in rs]) for k in metric_keys} for m, rs in groups.items()
            },
            "significance": sig,
            "diagnostics": diags,
            "pictures": pictures,
        },
        out.parent / "report.json",
    )
    return out


def _report_pictures(
    paths: DatasetPaths,
    data: InteractionData,
    raw: Mapping[str, np.ndarray],
    groups: Mapping[str, Sequence[RunInfo]],
    diags: Mapping[str, Mapping[str, Any]],
    folder: Path,
    top: int,
    projection_sample: int,
) -> dict[str, str]:
    pics: dict[str, str] = {}
    histories = {f"{r.model} s{r.seed}": r.metrics.get("history", []) for rs in groups.values() for r in rs}
    if any(histories.values()):
        plots.training_curves(histories, folder / "training_curves.png")
        pics["training curves"] = "training_curves.png"
    coh = {
        model: {
            k.split(".", 1)[1]: _mean_std([diags[r.run_id][k] for r in rs])
            for k in diags[rs[0].run_id]
            if k.startswith("coherence.")
        }
        for model, rs in groups.items()
    }
    if any(coh.values()):
        plots.coherence_bars(coh, folder / "coherence.png", top)
        pics["coherence"] = "coherence.png"
    tail = {
        model: {b: _mean_std([diags[r.run_id]["long_tail"][b]["recall@20"] for r in rs]) for b in BUCKETS}
        for model, rs in groups.items()
    }
    plots.bucket_bars(tail, BUCKETS, folder / "long_tail.png", "recall@20")
    pics["long tail"] = "long_tail.png"
    labels, legend = projection_labels(paths, data, raw)
    for model, rs in groups.items():
        name = f"projection-{model}.png"
        r = next((r for r in rs if vectors_kept(paths, r.run_id)), None)
        if r is None:  # kept summaries only: the picture their diagnostics drew, if any
            drawn = [r.dir / "projection.png" for r in rs if (r.dir / "projection.png").exists()]
            if drawn:
                shutil.copyfile(drawn[0], folder / name)
                pics[f"projection {model}"] = name
            continue
        _, item, id_item = run_vectors(paths, r.run_id, data)
        if id_item is None and model == "lightgcn":
            id_item = item
        plots.projection(id_item, item, labels, folder / name, projection_sample, 0, f"{model} (seed {r.seed})", legend)
        pics[f"projection {model}"] = name
    return pics


def _render(
    paths: DatasetPaths,
    groups: Mapping[str, Sequence[RunInfo]],
    diags: Mapping[str, Mapping[str, Any]],
    per_user: Mapping[str, Mapping[str, np.ndarray]],
    sig: Sequence[Mapping[str, Any]],
    baseline: str,
    features: Mapping[str, str],
    pictures: Mapping[str, str],
    metric_keys: Sequence[str],
    top: int,
    title: str | None,
) -> list[str]:
    lines = [f"# {title or f'Comparison on {paths.name}'}", ""]
    lines.append(f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')}; test split; full ranking with training items excluded; "
                 "model selection on the validation split only.")
    lines.append("")
    lines.append("## Runs")
    lines.append("")
    rows = [
        [r.run_id, r.model, r.seed, r.metrics.get("best_epoch", "–"), r.metrics.get("epochs_run", "–"),
         f"{r.metrics.get('timings', {}).get('train_s_per_epoch', float('nan')):.1f}",
         f"{r.metrics.get('timings', {}).get('train_cpu_s_per_epoch', float('nan')):.1f}"]
        for rs in groups.values() for r in rs
    ]
    # CPU seconds beside wall seconds: on a shared (or paused) machine wall time measures the neighbours
    lines += _table(["run", "model", "seed", "best epoch", "epochs run", "s / epoch", "CPU s / epoch"], rows)

    lines += ["## Accuracy (test, mean ± std over seeds)", ""]
    rows = [[m, len(rs)] + [_fmt(_mean_std([r.metrics["test"].get(k) for r in rs])) for k in metric_keys] for m, rs in groups.items()]
    lines += _table(["model", "seeds"] + list(metric_keys), rows)
    lines.append("std is the sample standard deviation over seeds (0 with one seed).")
    lines.append("")

    lines += [f"## Paired significance against {baseline}", ""]
    if sig:
        rows = []
        for s in sig:
            if "note" in s:
                rows.append([s["model"], s["metric"], "–", "–", "–", "–", "–", s["note"]])
                continue
            rows.append([s["model"], s["metric"], ",".join(map(str, s["seeds"])), s["n"], f"{s['mean_diff']:+.4f}",
                         _p(s["t_pvalue"]), _p(s["wilcoxon_pvalue"]), f"{s['seeds_better']}/{len(s['seeds'])}"])
        lines += _table(["model", "metric", "seeds paired", "users", f"mean Δ vs {baseline}", "paired t p", "Wilcoxon p", "seeds better"], rows)
        lines.append("Per-user test metrics recomputed from each run's vectors, averaged over the paired seeds, "
                     "compared across the same users; p-values are not corrected for multiple comparisons.")
    else:
        lines.append(f"Only {baseline} was run: nothing to compare.")
    lines.append("")

    lines += ["## Positional-collapse diagnostics (mean ± std over seeds)", ""]
    all_diags = [diags[r.run_id] for rs in groups.values() for r in rs]
    cols = _diag_columns(all_diags, top)
    rows = [[m] + [_fmt(_mean_std([diags[r.run_id].get(k) for r in rs]), 3) for k, _ in cols] for m, rs in groups.items()]
    lines += _table(["model"] + [label for _, label in cols], rows)
    feat_desc = ", ".join(f"{k} = `{v}`" for k, v in features.items()) or "none"
    two_hop = np.mean([d["two_hop_mean"] for d in all_diags])
    lines += [
        f"- Raw features: {feat_desc}. When two names point to the same table their columns are equal by construction.",
        "- Coherence name@r: mean cosine of the raw feature between each item and its r-th nearest item in the final item "
        "space (neighbours by cosine of the final vectors). Higher = neighbourhoods follow content.",
        f"- ID dominance: mean number of other items sharing ≥ 1 training user with each of the top-{top} neighbours "
        f"(2-hop co-interaction neighbourhood); the mean over all items is {two_hop:.1f}. Lower = less popularity-driven.",
        f"- ID overlap@{top}: share of final-space top-{top} neighbours that are also ID-space neighbours (1 = collapsed onto ID).",
        "- Silhouettes: KMeans (k = {k}) on L2-normalised vectors of each space; 'final (content clusters)' judges the content "
        "space's clusters in the final space.".format(k=all_diags[0].get("n_clusters", "?")),
        "- Alignment / uniformity (Wang & Isola 2020) of the normalised final user and item vectors (lower = better for both).",
    ]
    notes: dict[str, list[str]] = {}
    for d in all_diags:
        for n in d.get("notes", []):
            notes.setdefault(n, []).append(str(d.get("run_id")))
    lines += [f"- Note: {n} (runs: {', '.join(rs)})." for n, rs in sorted(notes.items())]
    lines.append("")

    lines += ["## Long tail (test, by item popularity bucket, mean ± std over seeds)", ""]
    first = all_diags[0]["long_tail"]
    rows = []
    for m, rs in groups.items():
        for b in ("all",) + BUCKETS:
            lt = [diags[r.run_id]["long_tail"][b] for r in rs]
            share = first[b]["n_heldout"] / max(first["all"]["n_heldout"], 1)
            rows.append([m, b, first[b].get("n_items", "all"), f"{share:.1%}", _fmt(_mean_std([x["recall@20"] for x in lt])),
                         _fmt(_mean_std([x["ndcg@20"] for x in lt]))])
    lines += _table(["model", "bucket", "items", "share of held-out", "recall@20", "ndcg@20"], rows)
    lines.append("Buckets by training interactions: head = top 20% of items, mid = next 30%, tail = last 50%. The ranking is "
                 "the full one; a bucket's recall counts only its held-out items (users with none in it are left out).")
    lines.append("")

    lines += ["## Pictures", ""]
    for name, rel in pictures.items():
        lines += [f"### {name}", "", f"![{name}]({rel})", ""]
    return lines
