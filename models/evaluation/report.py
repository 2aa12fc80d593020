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
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from models.evaluation import plots
from models.evaluation.cold import division_summary, division_table
from models.evaluation.long_tail import BUCKETS
from models.evaluation.metrics import paired_test
from models.evaluation.run_summary import (
    REPORT_KS,
    RunInfo,
    default_features,
    diagnose_run,
    load_report_data,
    load_run,
    projection_labels,
    run_per_user,
    run_vectors,
    vectors_kept,
)
from models.training.data import InteractionData, load_modalities
from store.layout import DatasetPaths
from store.tables import write_json

# ------------------------------------------------------------------------------ report


def _mean_std(values: Sequence[float | None]) -> tuple[float, float]:
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
            raise ValueError(
                f"model {model!r} has two runs with the same seed ({sorted(seeds)}): pass one run per seed"
            )
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
            row: dict[str, Any] = {
                "model": model,
                "baseline": baseline,
                "metric": metric,
                "seeds": [r.seed for r, _ in pairs],
            }
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
            row["seeds_better"] = int(
                sum(per_user[r.run_id][metric].mean() > per_user[b.run_id][metric].mean() for r, b in pairs)
            )
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
    data = load_report_data(paths)  # the warm sub-catalog when the dataset has cold items

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
                    "model": r.model,
                    "seed": r.seed,
                    "best_epoch": r.metrics.get("best_epoch"),
                    "epochs_run": r.metrics.get("epochs_run"),
                    "stopped_by_hand": r.metrics.get("stopped_by_hand", False),
                    "valid": r.metrics.get("valid", {}),
                    "test": r.metrics["test"],
                }
                for r in runs
            },
            "accuracy": {
                m: {k: _mean_std([r.metrics["test"].get(k) for r in rs]) for k in metric_keys}
                for m, rs in groups.items()
            },
            "test_divisions": {m: division_summary([r.metrics for r in rs]) for m, rs in groups.items()},
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
    lines.append(
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')}; test split; full ranking with training items excluded; "
        "model selection on the validation split only."
    )
    lines.append("")
    lines.append("## Runs")
    lines.append("")
    rows = [
        [
            r.run_id,
            r.model,
            r.seed,
            r.metrics.get("best_epoch", "–"),
            r.metrics.get("epochs_run", "–"),
            f"{r.metrics.get('timings', {}).get('train_s_per_epoch', float('nan')):.1f}",
            f"{r.metrics.get('timings', {}).get('train_cpu_s_per_epoch', float('nan')):.1f}",
        ]
        for rs in groups.values()
        for r in rs
    ]
    # CPU seconds beside wall seconds: on a shared (or paused) machine wall time measures the neighbours
    lines += _table(["run", "model", "seed", "best epoch", "epochs run", "s / epoch", "CPU s / epoch"], rows)

    lines += ["## Accuracy (test, mean ± std over seeds)", ""]
    rows = [
        [m, len(rs)] + [_fmt(_mean_std([r.metrics["test"].get(k) for r in rs])) for k in metric_keys]
        for m, rs in groups.items()
    ]
    lines += _table(["model", "seeds"] + list(metric_keys), rows)
    lines.append("std is the sample standard deviation over seeds (0 with one seed).")
    lines.append("")
    lines += division_table({m: division_summary([r.metrics for r in rs]) for m, rs in groups.items()})

    lines += [f"## Paired significance against {baseline}", ""]
    if sig:
        rows = []
        for s in sig:
            if "note" in s:
                rows.append([s["model"], s["metric"], "–", "–", "–", "–", "–", s["note"]])
                continue
            rows.append(
                [
                    s["model"],
                    s["metric"],
                    ",".join(map(str, s["seeds"])),
                    s["n"],
                    f"{s['mean_diff']:+.4f}",
                    _p(s["t_pvalue"]),
                    _p(s["wilcoxon_pvalue"]),
                    f"{s['seeds_better']}/{len(s['seeds'])}",
                ]
            )
        lines += _table(
            [
                "model",
                "metric",
                "seeds paired",
                "users",
                f"mean Δ vs {baseline}",
                "paired t p",
                "Wilcoxon p",
                "seeds better",
            ],
            rows,
        )
        lines.append(
            "Per-user test metrics recomputed from each run's vectors, averaged over the paired seeds, "
            "compared across the same users; p-values are not corrected for multiple comparisons."
        )
    else:
        lines.append(f"Only {baseline} was run: nothing to compare.")
    lines.append("")

    lines += ["## Positional-collapse diagnostics (mean ± std over seeds)", ""]
    all_diags = [diags[r.run_id] for rs in groups.values() for r in rs]
    cols = _diag_columns(all_diags, top)
    rows = [
        [m] + [_fmt(_mean_std([diags[r.run_id].get(k) for r in rs]), 3) for k, _ in cols] for m, rs in groups.items()
    ]
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
            rows.append(
                [
                    m,
                    b,
                    first[b].get("n_items", "all"),
                    f"{share:.1%}",
                    _fmt(_mean_std([x["recall@20"] for x in lt])),
                    _fmt(_mean_std([x["ndcg@20"] for x in lt])),
                ]
            )
    lines += _table(["model", "bucket", "items", "share of held-out", "recall@20", "ndcg@20"], rows)
    lines.append(
        "Buckets by training interactions: head = top 20% of items, mid = next 30%, tail = last 50%. The ranking is "
        "the full one; a bucket's recall counts only its held-out items (users with none in it are left out)."
    )
    lines.append("")

    lines += ["## Pictures", ""]
    for name, rel in pictures.items():
        lines += [f"### {name}", "", f"![{name}]({rel})", ""]
    return lines
