"""The leaderboard: every tuned model's best configuration rerun on several seeds, in one report.

Why a separate step from `anchorrec tune`: a study picks a configuration on validation with one
seed; whether one model beats another is a claim about seeds and users, so each model's choice
is trained again on `seeds` seeds and the comparison report (models/evaluation/report.py:
accuracy mean ± std, paired significance, collapse diagnostics, long tail, pictures) runs over
those runs. This file adds what only a tuned comparison has: the chosen hyperparameters, the
cost (s/epoch, epochs to best, tuning wall time) and a verdict in words.

Selection stays on validation: the configuration is the study's (best.json), and the baseline
the others are tested against is the best non-AnchorRec model by mean validation Recall@20 of
its reruns. Test numbers are read, never used to choose. The reruns' seeds exclude the study's
own seed (the chosen trial would otherwise enter its own confirmation bit for bit), and nothing
binds silently: a chosen value on the edge of its grid and a rerun whose best epoch is within
patience of the epoch cap are flagged in the table.
"""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from models.evaluation.long_tail import BUCKETS
from models.evaluation.metrics import paired_over_seeds
from models.evaluation.report import compare_runs
from models.evaluation.run_summary import default_features, keep_run_summary
from models.registry import MODELS
from models.training.trainer import TrainConfig, config_changes, fit_runs, seed_configs, write_seeds_summary
from models.training.tune import search_space, study_dir, trial_config
from store.layout import DatasetPaths
from store.tables import read_json, write_json

DEFAULT_SEEDS = (1, 2, 3, 4, 5)  # tuning trains on seed 0: its chosen run never confirms itself
PROPOSED = "anchorrec"  # the model the leaderboard is about; the rest are baselines


def tuned_models(paths: DatasetPaths) -> list[str]:
    """Models with a finished study on this dataset, in registry order."""
    return [m for m in MODELS if (study_dir(paths, m) / "best.json").exists()]


def best_config(paths: DatasetPaths, model: str) -> tuple[TrainConfig, dict[str, Any]]:
    """The study's chosen configuration (its best trial's own config.json) and its best.json.

    Without the trial's run (the study was restored from a snapshot), the configuration is rebuilt
    from the study's budget and the trial's parameters, as the study built it."""
    best_path = study_dir(paths, model) / "best.json"
    if not best_path.exists():
        raise FileNotFoundError(
            f"{best_path}: no finished study of {model!r} on {paths.name!r}; "
            f"run `anchorrec tune --dataset {paths.name} --model {model}` first"
        )
    best = json.loads(best_path.read_text())
    config_path = paths.run(best["best_run_id"]) / "config.json"
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if config_path.exists():
        stored = json.loads(config_path.read_text())
        cfg = TrainConfig(**{k: v for k, v in stored.items() if k in fields})
    else:  # the run is gone (a study restored on a new machine): the study's budget and the trial's params
        base = TrainConfig(**{k: v for k, v in best["budget"].items() if k in fields})
        cfg = trial_config(base, best["best_params"], best["best_run_id"])
    return cfg, best


def run_leaderboard(
    paths: DatasetPaths,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    out: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    jobs: int = 1,
    **report_args: Any,
) -> Path:
    """Rerun each model's tuned configuration on `seeds` (resumable: runs lb-<model>-s<seed>), `jobs`
    runs at once, and write leaderboard.md/.json with the comparison report's sections below the
    leaderboard's own."""
    models = list(models) if models else tuned_models(paths)
    if not models:
        raise ValueError(
            f"no tuned model on {paths.name!r}: run `anchorrec tune --dataset {paths.name} --model M` first"
        )
    if not seeds:
        raise ValueError("seeds must not be empty: e.g. --seeds 5")
    chosen = {m: best_config(paths, m) for m in models}  # every study checked before any training
    for m, (cfg, best) in chosen.items():
        tuned_on = (best.get("budget") or {}).get("seed", cfg.seed)
        if tuned_on in seeds:
            raise ValueError(
                f"seed {tuned_on} is the seed {m}'s study tuned on: its rerun would be the chosen trial "
                f"itself; rerun on seeds that exclude it (the default: {', '.join(map(str, DEFAULT_SEEDS))})"
            )
    configs = {m: seed_configs(cfg, f"lb-{m}", seeds) for m, (cfg, _) in chosen.items()}
    log(
        f"leaderboard: {', '.join(models)} on {len(seeds)} seed(s) each with the study's configuration"
        + (f", {jobs} runs at once" if jobs > 1 else "")
    )
    flat = [c for cs in configs.values() for c in cs]  # one pool for all models: no core idles at a model's last seed
    results = {c.run_id: m for c in flat if (m := kept_metrics(paths, c)) is not None}
    if results:
        log(f"{len(results)} run(s) kept as summaries from an earlier machine: not trained again")
    features = report_args.pop("features", None) or default_features([c.to_json() for c in flat])
    summary_args = {k: report_args[k] for k in ("top", "n_clusters", "sample", "projection_sample") if k in report_args}
    todo = [c for c in flat if c.run_id not in results]
    if todo:  # each run's report summary is made as it ends: a kept summary (snapshot) suffices from then on
        after = partial(keep_run_summary, features=features, **summary_args)
        results.update(zip([c.run_id for c in todo], fit_runs(paths, todo, progress=progress, jobs=jobs, after=after)))
    reruns = {m: write_seeds_summary(paths, f"lb-{m}", [results[c.run_id] for c in cs]) for m, cs in configs.items()}
    baseline = pick_baseline(reruns)
    rows = leaderboard_rows(chosen, reruns)
    for model, s in reruns.items():
        rows[model]["diverged"] = diverged_runs(paths, s["runs"])
    out = Path(out) if out is not None else paths.root / "reports" / "leaderboard" / "leaderboard.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    run_ids = [rid for s in reruns.values() for rid in s["runs"]]
    report_path = compare_runs(
        paths,
        run_ids,
        baseline=baseline,
        out=out.parent / "report.md",
        features=features,
        title=f"Runs behind the leaderboard on {paths.name}",
        **report_args,
    )
    report = json.loads((out.parent / "report.json").read_text())
    verdict = verdict_lines(rows, report, baseline)
    out.write_text("\n".join(render(paths, rows, verdict, baseline, seeds, report_path.name, jobs)) + "\n")
    write_json(
        {
            "dataset": paths.name,
            "seeds": list(seeds),
            "jobs": jobs,
            "baseline": baseline,
            "models": rows,
            "verdict": verdict,
            "report": report_path.name,
        },
        out.with_suffix(".json"),
    )
    return out


def kept_metrics(paths: DatasetPaths, cfg: TrainConfig) -> dict[str, Any] | None:
    """metrics.json of a run kept as its summary (no checkpoint: a snapshot brought its small files
    to this machine), or None for a run to train or continue. A kept run of another configuration
    is refused: its run id would mix two settings in one table."""
    run_dir = paths.run(cfg.run_id)
    if (run_dir / "checkpoint.pt").exists() or not paths.metrics(cfg.run_id).exists():
        return None
    stored = read_json(run_dir / "config.json")
    changed = [k for k in config_changes(stored, cfg.to_json()) if k not in ("n_users", "n_items")]
    if changed:
        raise ValueError(
            f"{run_dir}: a kept run of another configuration (fields {changed}); the study's choice "
            "changed since it ran: delete the run directory to train it again"
        )
    return read_json(paths.metrics(cfg.run_id))


def pick_baseline(reruns: dict[str, dict[str, Any]]) -> str:
    """The best model other than AnchorRec by mean validation Recall@20 (AnchorRec if alone)."""
    others = {m: s for m, s in reruns.items() if m != PROPOSED} or reruns
    return max(others, key=lambda m: others[m]["valid_mean"]["recall@20"])


def leaderboard_rows(chosen: dict[str, tuple[TrainConfig, dict]], reruns: dict[str, dict[str, Any]]) -> dict[str, dict]:
    """Per model: chosen hyperparameters, test mean ± std, the search and its cost, and what binds."""
    rows = {}
    for model, (cfg, best) in chosen.items():
        s = reruns[model]
        rows[model] = {
            "params": best["best_params"],
            "valid_recall@20": s["valid_mean"]["recall@20"],
            "test_mean": s["test_mean"],
            "test_std": s["test_std"],
            "best_epochs": s["best_epochs"],
            "epochs_to_best": float(np.mean(s["best_epochs"])),
            "tuning": {
                "trials": best["trials"],
                "complete": best.get("complete"),
                "pruned": best.get("pruned"),
                "distinct": best.get("done"),
                "duplicates": best.get("duplicates"),
                "epochs_trained": best.get("epochs_trained"),
                "grid_size": best.get("grid_size"),
                "wall_s": best.get("wall_s_total"),
                "epochs": cfg.epochs,
                "patience": cfg.patience,
            },
            "on_grid_edge": grid_edges(best["best_params"], best.get("space") or search_space(model)),
            "near_cap": near_cap(s["best_epochs"], s["runs"], cfg.epochs, cfg.patience),
        }
    ranked = sorted(rows.items(), key=lambda kv: -kv[1]["test_mean"]["recall@20"])
    return {m: {**row, "rank": rank} for rank, (m, row) in enumerate(ranked, start=1)}


def grid_edges(params: dict[str, Any], space: dict[str, Sequence]) -> dict[str, str]:
    """Chosen numeric values at the lowest or highest value of their grid: the search could not look past them."""
    out = {}
    for name, value in params.items():
        grid = [v for v in space.get(name, ()) if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(grid) < 2 or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if value == max(grid):
            out[name] = f"{value} = top of {sorted(grid)}"
        elif value == min(grid):
            out[name] = f"{value} = bottom of {sorted(grid)}"
    return out


def near_cap(best_epochs: Sequence[int], run_ids: Sequence[str], cap: int, patience: int) -> list[str]:
    """Reruns whose best epoch is within patience of the epoch cap: the cap, not early stopping, ended them."""
    return [f"{rid} (best epoch {ep} of cap {cap})" for rid, ep in zip(run_ids, best_epochs) if ep + 1 > cap - patience]


def diverged_runs(paths: DatasetPaths, run_ids: Sequence[str]) -> dict[str, int]:
    """Runs whose loss turned non-finite, with the epoch: each was tested at its best epoch before."""
    out = {}
    for rid in run_ids:
        epoch = json.loads(paths.metrics(rid).read_text()).get("diverged_at_epoch")
        if epoch is not None:
            out[rid] = int(epoch)
    return out


def verdict_lines(rows: dict[str, dict], report: dict[str, Any], baseline: str) -> list[str]:
    """Which model is best, by how much, and whether AnchorRec keeps its collapse and tail edge."""
    ranked = list(rows)
    best, lines = ranked[0], []
    r20 = {m: rows[m]["test_mean"]["recall@20"] for m in ranked}
    if len(ranked) > 1:
        second = ranked[1]
        lines.append(
            f"Best on test Recall@20: **{best}** {r20[best]:.4f}, {r20[best] - r20[second]:+.4f} "
            f"({(r20[best] / r20[second] - 1) * 100:+.1f}%) over {second} {r20[second]:.4f}."
        )
    else:
        lines.append(f"Only {best} was tuned: {r20[best]:.4f} test Recall@20.")
    sig = [s for s in report["significance"] if s["metric"] == "recall@20" and "t_pvalue" in s]
    for s in sig:
        lines.append(
            f"{s['model']} vs {baseline} (best baseline by validation): Δ Recall@20 {s['mean_diff']:+.4f}, "
            f"paired t p = {s['t_pvalue']:.3g}, better on {s['seeds_better']}/{len(s['seeds'])} seeds."
        )
    if PROPOSED in rows and baseline != PROPOSED:
        lines += _advantages(report, baseline)
        lines += _by_popularity(report, baseline)
    for m, row in rows.items():
        if row.get("near_cap"):
            lines.append(
                f"{m}: the {row['tuning']['epochs']}-epoch cap, not early stopping, ended {len(row['near_cap'])} "
                f"of {len(row['best_epochs'])} reruns (best epoch within patience of the cap): its figure "
                "partly measures convergence speed."
            )
        if row.get("on_grid_edge"):
            lines.append(
                f"{m} chose values on the edge of their grid ({'; '.join(row['on_grid_edge'].values())}): "
                "the search could not look beyond them."
            )
        if row.get("diverged"):
            runs = ", ".join(f"{rid} at epoch {ep}" for rid, ep in row["diverged"].items())
            lines.append(
                f"{m}: {len(row['diverged'])} of {len(row['best_epochs'])} seeds diverged (loss not finite: {runs}); "
                "each is tested at its best validation epoch before that, which its mean ± std includes."
            )
    return lines


def _per_seed(report: dict[str, Any], model: str, get: Callable[[dict], float | None]) -> dict[int, float]:
    """{seed: value} of a per-run diagnostic for one model's runs (runs without the value left out)."""
    out = {}
    for rid, run in report["runs"].items():
        if run["model"] == model and (value := get(report["diagnostics"][rid])) is not None:
            out[int(run["seed"])] = float(value)
    return out


def _paired_with_baseline(
    report: dict[str, Any], baseline: str, get: Callable[[dict], float | None]
) -> tuple[list[float], list[float], float, float] | None:
    """AnchorRec's and the baseline's values on their common seeds, the mean difference and the
    paired t over seeds; None when they share no seed."""
    ours, theirs = _per_seed(report, PROPOSED, get), _per_seed(report, baseline, get)
    seeds = sorted(set(ours) & set(theirs))
    if not seeds:
        return None
    a, b = [ours[s] for s in seeds], [theirs[s] for s in seeds]
    return (a, b, *paired_over_seeds(a, b))


ADVANTAGE_ALPHA = 0.05  # below this paired-over-seeds p an edge is called kept; above, within seed noise


def _advantages(report: dict[str, Any], baseline: str) -> list[str]:
    """AnchorRec against the best baseline on ID overlap, ID dominance and tail Recall@20, paired by
    seed: an edge in the means alone is not a claim (on Sports the tail numbers are under 0.01 and
    differ by less than a seed's spread), so each line says on how many seeds it holds and its p."""
    checks = [
        ("ID overlap@3", lambda d: d.get("id_overlap@3"), "lower"),
        ("ID dominance", lambda d: d.get("id_dominance"), "lower"),
        ("tail Recall@20", lambda d: d["long_tail"]["tail"]["recall@20"], "higher"),
    ]
    lines = []
    for name, get, better in checks:
        if (paired := _paired_with_baseline(report, baseline, get)) is None:
            continue
        a, b, diff, p = paired
        sign = 1.0 if better == "higher" else -1.0
        wins = sum(sign * (x - y) > 0 for x, y in zip(a, b))
        if sign * diff <= 0:
            word = "no advantage"
        elif p < ADVANTAGE_ALPHA or (np.isnan(p) and wins == len(a) > 1):
            word = "keeps its advantage"
        else:
            word = "ahead in the mean, not resolved over seeds"
        lines.append(
            f"{PROPOSED} {name} {np.mean(a):.4f} vs {baseline} {np.mean(b):.4f} ({better} is better): {word} "
            f"after tuning (better on {wins}/{len(a)} seeds, paired t over seeds p = {p:.3g})."
        )
    return lines


def _bucket_recall20(diagnostics: dict[str, Any], bucket: str) -> float | None:
    return diagnostics["long_tail"].get(bucket, {}).get("recall@20")


def _by_popularity(report: dict[str, Any], baseline: str) -> list[str]:
    """Where AnchorRec wins or loses against the baseline: Recall@20 on head / mid / tail items,
    paired by seed (issue 17: a gap is only actionable once it is placed)."""
    parts = []
    for bucket in BUCKETS:
        if (paired := _paired_with_baseline(report, baseline, partial(_bucket_recall20, bucket=bucket))) is None:
            continue
        a, b, diff, p = paired
        wins = sum(x > y for x, y in zip(a, b))
        parts.append(
            f"{bucket} {np.mean(a):.4f} vs {np.mean(b):.4f} ({diff:+.4f}, better on {wins}/{len(a)} seeds, p = {p:.3g})"
        )
    if not parts:
        return []
    return [
        f"{PROPOSED} vs {baseline}, test Recall@20 by item popularity (head / mid / tail: top 20% / next 30% / "
        f"bottom 50% by training interactions): " + "; ".join(parts) + "."
    ]


def _cell(value: Any) -> str:
    return "–" if value is None else str(value)


def render(
    paths: DatasetPaths,
    rows: dict[str, dict],
    verdict: list[str],
    baseline: str,
    seeds: Sequence[int],
    report_name: str,
    jobs: int = 1,
) -> list[str]:
    lines = [
        f"# Leaderboard on {paths.name}",
        "",
        f"Each model's configuration chosen by `anchorrec tune` on validation Recall@20 (equal trial budget, epoch cap "
        f"and patience), then trained on seeds {', '.join(map(str, seeds))}; test metrics mean ± std over seeds. "
        f"Significance, collapse diagnostics, long tail and pictures: [{report_name}]({report_name}).",
        "",
    ]
    lines += ["## Verdict", ""] + [f"- {v}" for v in verdict] + [""]
    keys = ["recall@10", "recall@20", "ndcg@10", "ndcg@20"]
    lines += [
        "## Accuracy (test)",
        "",
        "| model | " + " | ".join(keys) + " | valid R@20 |",
        "| --- | " + " | ".join("---" for _ in keys) + " | --- |",
    ]
    for m, r in rows.items():
        cells = [f"{r['test_mean'][k]:.4f} ± {r['test_std'][k]:.4f}" for k in keys]
        lines.append(
            f"| {m}{' (baseline)' if m == baseline else ''} | " + " | ".join(cells) + f" | {r['valid_recall@20']:.4f} |"
        )
    lines += [
        "",
        "## Search and cost",
        "",
        "| model | distinct settings tried / budget (grid) | pruned | repeats not retrained | epochs trained in tuning "
        "| tuning wall s | epochs to best (mean) | epoch cap / patience |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m, r in rows.items():
        t = r["tuning"]
        lines.append(
            f"| {m} | {_cell(t.get('distinct'))} / {t['trials']} ({_cell(t.get('grid_size'))}) | {_cell(t['pruned'])} | "
            f"{_cell(t.get('duplicates'))} | {_cell(t.get('epochs_trained'))} | {_cell(t['wall_s'])} | "
            f"{r['epochs_to_best']:.1f} | {t['epochs']} / {t['patience']} |"
        )
    lines += ["", "## What binds", ""]
    for m, r in rows.items():
        edges = "; ".join(f"{k} {v}" for k, v in r.get("on_grid_edge", {}).items()) or "none"
        cap = ", ".join(r.get("near_cap", [])) or "none"
        lines.append(
            f"- {m}: on a grid edge: {edges}. Best epoch within patience of the cap: "
            f"{len(r.get('near_cap', []))} of {len(r['best_epochs'])} reruns ({cap})."
        )
    timing = f" (reruns {jobs} at once, one torch thread each)" if jobs > 1 else ""
    lines += [
        "",
        f"s/epoch per run: the report's Runs table{timing}.",
        "",
        "## Chosen hyperparameters",
        "",
        "| model | parameters |",
        "| --- | --- |",
    ]
    lines += [f"| {m} | `{json.dumps(r['params'], sort_keys=True)}` |" for m, r in rows.items()]
    return lines
