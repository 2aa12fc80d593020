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
import shutil
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from models.evaluation.cold import division_table
from models.evaluation.long_tail import BUCKETS
from models.evaluation.metrics import paired_over_seeds
from models.evaluation.report import compare_runs
from models.evaluation.run_summary import default_features, keep_run_summary
from models.registry import MODELS, is_fixed, read_features
from models.training.trainer import (
    DATA_FIELDS,
    FEATURE_MODALITIES,
    TrainConfig,
    check_shorter_run,
    config_changes,
    ended_early,
    fit_runs,
    seed_configs,
    start_from_shorter_run,
    write_seeds_summary,
)
from models.training.tune import search_space, study_dir, trial_config
from store.layout import DatasetPaths
from store.tables import read_json, write_json

DEFAULT_SEEDS = (1, 2, 3, 4, 5)  # tuning trains on seed 0: its chosen run never confirms itself
PROPOSED = "anchorrec"  # the model the leaderboard is about; the rest are baselines


def tuned_models(paths: DatasetPaths) -> list[str]:
    """Models with a finished study on this dataset, in registry order."""
    return [m for m in MODELS if (study_dir(paths, m) / "best.json").exists()]


def best_config(
    paths: DatasetPaths, model: str, tables: Mapping[str, str] | None = None
) -> tuple[TrainConfig, dict[str, Any]]:
    """The study's chosen configuration (its best trial's own config.json) and its best.json.

    Without the trial's run (the study was restored from a snapshot), the configuration is rebuilt
    from the study's budget and the trial's parameters, as the study built it. `tables` replaces the
    feature tables of the modalities it names (`leaderboard --table mm=ica-…`): for a study whose
    table is gone with the machine that made it, rerun on the table the current code makes."""
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
    return with_tables(cfg, tables), best


def with_tables(cfg: TrainConfig, tables: Mapping[str, str] | None) -> TrainConfig:
    """The configuration reading `tables` for the modalities it already reads (a model without `mm`
    does not gain one)."""
    if not tables:
        return cfg
    return dataclasses.replace(cfg, features={k: tables.get(k, v) for k, v in cfg.features.items()})


def parse_tables(given: Sequence[str]) -> dict[str, str]:
    """`--table MOD=NAME` options as {modality: table}; one line naming the bad one."""
    out: dict[str, str] = {}
    for item in given:
        mod, sep, name = item.partition("=")
        if not sep or mod not in FEATURE_MODALITIES or not name:
            raise ValueError(f"--table {item!r}: give MODALITY=TABLE with a modality of v, t or mm, e.g. mm=ica-1a2b3c")
        out[mod] = name
    return out


def run_leaderboard(
    paths: DatasetPaths,
    models: Sequence[str] | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    out: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    jobs: int = 1,
    cap: int | None = None,
    configs_from: DatasetPaths | None = None,
    tables: Mapping[str, str] | None = None,
    untuned_defaults: bool = False,
    target_tables: Mapping[str, str] | None = None,
    **report_args: Any,
) -> Path:
    """Rerun each model's tuned configuration on `seeds` (resumable: runs lb-<model>-s<seed>), `jobs`
    runs at once, and write leaderboard.md/.json with the comparison report's sections below the
    leaderboard's own.

    With `cap`, the converged table: each choice continued to that epoch cap (runs
    lb-<model>-cap<N>-s<seed>, from the capped reruns' checkpoints where this home has them, see
    `continue_capped`), in reports/leaderboard-cap<N>/ with the capped table beside it.

    With `configs_from`, the studies are another dataset's (the item-cold leaderboard: every model at
    its main leaderboard's tuned configuration, `borrowed_config`); parameter-free models (pop,
    content_knn) need no study. `tables` replaces the studies' feature tables (`best_config`); the
    table says which."""
    source = configs_from or paths
    models = list(models) if models else tuned_models(source)
    if not models:
        raise ValueError(
            f"no tuned model on {paths.name!r}: run `anchorrec tune --dataset {paths.name} --model M` first"
        )
    if not seeds:
        raise ValueError("seeds must not be empty: e.g. --seeds 5")
    if configs_from is None:
        chosen = {m: best_config(paths, m, tables) for m in models}  # every study checked before any training
    else:
        chosen = borrowed_configs(paths, configs_from, models, tables, untuned_defaults, target_tables)
        log(f"configurations tuned on {configs_from.name!r}, trained on {paths.name!r}")
    for m, (cfg, best) in chosen.items():
        tuned_on = (best.get("budget") or {}).get("seed", cfg.seed)
        if tuned_on in seeds:
            raise ValueError(
                f"seed {tuned_on} is the seed {m}'s study tuned on: its rerun would be the chosen trial "
                f"itself; rerun on seeds that exclude it (the default: {', '.join(map(str, DEFAULT_SEEDS))})"
            )
    if cap is not None:
        chosen = {m: (capped(cfg, cap), best) for m, (cfg, best) in chosen.items()}
    configs = {m: seed_configs(cfg, run_base(m, cap), seeds) for m, (cfg, _) in chosen.items()}
    log(
        f"leaderboard: {', '.join(models)} on {len(seeds)} seed(s) each with the study's configuration"
        + (f", continued to an epoch cap of {cap}" if cap is not None else "")
        + (f", {jobs} runs at once" if jobs > 1 else "")
    )
    flat = [c for cs in configs.values() for c in cs]  # one pool for all models: no core idles at a model's last seed
    results = {c.run_id: kept for c in flat if (kept := kept_metrics(paths, c)) is not None}
    if results:
        log(f"{len(results)} run(s) kept as summaries from an earlier machine: not trained again")
    features = report_args.pop("features", None) or default_features([c.to_json() for c in flat])
    summary_args = {k: report_args[k] for k in ("top", "n_clusters", "sample", "projection_sample") if k in report_args}
    todo = [c for c in flat if c.run_id not in results]
    if cap is not None:
        continue_capped(paths, todo, log)
        results.update({c.run_id: kept for c in todo if (kept := kept_metrics(paths, c)) is not None})
        todo = [c for c in flat if c.run_id not in results]
    if todo:  # each run's report summary is made as it ends: a kept summary (snapshot) suffices from then on
        after = partial(keep_run_summary, features=features, **summary_args)
        results.update(zip([c.run_id for c in todo], fit_runs(paths, todo, progress=progress, jobs=jobs, after=after)))
    reruns = {
        m: write_seeds_summary(paths, run_base(m, cap), [results[c.run_id] for c in cs]) for m, cs in configs.items()
    }
    baseline = pick_baseline(reruns)
    rows = leaderboard_rows(chosen, reruns)
    for model, s in reruns.items():
        rows[model]["diverged"] = diverged_runs(paths, s["runs"])
    folder = "leaderboard" if cap is None else f"leaderboard-cap{cap}"
    out = Path(out) if out is not None else paths.root / "reports" / folder / "leaderboard.md"
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
    verdict = verdict_lines(rows, report, baseline) + cold_verdict(paths, reruns)
    shorter = paths.root / "reports" / "leaderboard" / "leaderboard.json"
    side = side_by_side(read_json(shorter), rows, baseline) if cap is not None and shorter.exists() else None
    verdict += side["verdict"] if side else []
    lines = render(paths, rows, verdict, baseline, seeds, report_path.name, jobs)
    if tables:
        lines[1:1] = ["", tables_note(tables, [best for _, best in chosen.values()])]
    if cap is not None:
        lines[1:1] = [
            "",
            f"Converged: every rerun continued to an epoch cap of {cap} with the study's patience (MMRec's "
            "protocol: 1,000 epochs, patience 20), from the capped reruns' checkpoints where this home kept them; "
            "otherwise trained again from epoch 0, or, for a rerun that early stopping had ended, copied from its "
            "kept summary (`copied_from` in its metrics.json).",
        ]
    lines += side["lines"] if side else []
    out.write_text("\n".join(lines) + "\n")
    write_json(
        {
            "dataset": paths.name,
            "seeds": list(seeds),
            "jobs": jobs,
            "baseline": baseline,
            "models": rows,
            "verdict": verdict,
            "report": report_path.name,
            "cap": cap,
            "tables": dict(tables or {}),
            "configs_from": configs_from.name if configs_from else None,
            "untuned_defaults": untuned_defaults,
        },
        out.with_suffix(".json"),
    )
    return out


def kept_metrics(paths: DatasetPaths, cfg: TrainConfig) -> dict[str, Any] | None:
    """metrics.json of a run kept as its summary (no checkpoint: a snapshot brought its small files
    to this machine), or None for a run to train or continue. A kept run of another configuration
    is refused: its run id would mix two settings in one table."""
    run_id = _run_id(cfg)
    run_dir = paths.run(run_id)
    if (run_dir / "checkpoint.pt").exists() or not paths.metrics(run_id).exists():
        return None
    stored = read_json(run_dir / "config.json")
    changed = [k for k in config_changes(stored, cfg.to_json()) if k not in DATA_FIELDS]
    if changed:
        raise ValueError(
            f"{run_dir}: a kept run of another configuration (fields {changed}); the study's choice "
            "changed since it ran: delete the run directory to train it again"
        )
    return read_json(paths.metrics(run_id))


def tables_note(tables: Mapping[str, str], bests: Sequence[dict[str, Any]]) -> str:
    """The sentence that says which studies' tables a rerun replaced (their best.json), and by what."""
    studied = {}
    for best in bests:
        features = (best.get("budget") or {}).get("features") or {}
        studied.update({k: v for k, v in features.items() if k in tables and v != tables[k]})
    swaps = ", ".join(
        f"{k} reads {tables[k]}" + (f" (the studies chose on {studied[k]})" if k in studied else "") for k in tables
    )
    return f"Feature tables replaced for these reruns (`--table`): {swaps}; the hyperparameters are the studies' own."


def borrowed_configs(
    paths: DatasetPaths,
    source: DatasetPaths,
    models: Sequence[str],
    tables: Mapping[str, str] | None = None,
    untuned_defaults: bool = False,
    target_tables: Mapping[str, str] | None = None,
) -> dict[str, tuple[TrainConfig, dict[str, Any]]]:
    """Each model's configuration as tuned on `source`, reading `paths`' own feature tables.

    Why: the item-cold protocol changes the split, not the models, so the fair cold comparison is
    each model at the configuration its main leaderboard chose. The v/t tables carry the same names
    on both datasets (same extractor); `mm` is the target's own ICA run with the source run's
    configuration (pretrained on the target's warm items only). pop and content_knn have no
    hyperparameter and no study: they get their defaults. With `untuned_defaults`, a model that
    has no study on `source` (Sports' main leaderboard tuned three) trains at its own defaults under
    the studies' shared budget (epoch cap, patience, batch), and the table says so; without it,
    the missing study is an error naming the command. `target_tables` gives the target's tables
    outright instead of matching them (recompute_leaderboard.py: the kept runs name the tables they
    read, and an ICA run's name changes with the pretraining code)."""
    studied = [m for m in models if not is_fixed(m)]
    if untuned_defaults:
        studied = [m for m in studied if (study_dir(source, m) / "best.json").exists()]
    tuned = {m: best_config(source, m, tables) for m in studied}
    tables_read = {mod: table for cfg, _ in tuned.values() for mod, table in cfg.features.items()}
    target = dict(target_tables) if target_tables else {}
    target |= {mod: matching_table(paths, source, t) for mod, t in tables_read.items() if mod not in target}
    out = {
        m: (dataclasses.replace(cfg, features={k: target[k] for k in cfg.features}), best)
        for m, (cfg, best) in tuned.items()
    }
    budget = shared_budget([cfg for cfg, _ in tuned.values()])
    for m in models:
        if is_fixed(m):
            cfg = TrainConfig(model=m, features=read_features(m, target))
            out[m] = (cfg, {"best_params": {}, "trials": 0, "budget": {"seed": None}})
        elif m not in out:
            cfg = TrainConfig(model=m, features=read_features(m, target), **budget)
            why = f"no study on {source.name}: the model's defaults under the studies' budget"
            out[m] = (cfg, {"best_params": {}, "trials": 0, "budget": {"seed": None}, "untuned": why})
    return {m: out[m] for m in models}


BUDGET_FIELDS = ("epochs", "patience", "batch_size", "eval_every", "knn_k")


def shared_budget(configs: Sequence[TrainConfig]) -> dict[str, Any]:
    """The budget the studies share (their first one's; TrainConfig's defaults when there is none)."""
    return {k: getattr(configs[0], k) for k in BUDGET_FIELDS} if configs else {}


def matching_table(paths: DatasetPaths, source: DatasetPaths, table: str) -> str:
    """`table` of `source` as `paths` has it: the same name, or for an ICA table the target's ICA run
    with the same configuration and inputs; one line naming what to run when there is none."""
    if not table.startswith("ica-"):
        if not paths.feature(table).exists():
            raise FileNotFoundError(
                f"{paths.feature(table)}: {paths.name!r} lacks the feature table {table!r} the configurations "
                f"of {source.name!r} read; run `anchorrec features --dataset {paths.name}` with the same encoders"
            )
        return table
    if not (source.run(table) / "config.json").exists():
        have = ", ".join(r.name for r in sorted(source.runs_dir.glob("ica-*"))) or "none"
        raise FileNotFoundError(
            f"{source.run(table)}: the studies of {source.name!r} chose on {table}, which this home lacks (made "
            f"on another machine or by older code; its ICA runs: {have}); rerun on one of them with --table mm=RUN"
        )
    wanted = _ica_signature(source.run(table) / "config.json")
    found = [
        run.name
        for run in sorted(paths.runs_dir.glob("ica-*"))
        if paths.feature(run.name).exists() and _ica_signature(run / "config.json") == wanted
    ]
    if len(found) != 1:
        raise FileNotFoundError(
            f"{paths.runs_dir}: {len(found)} ICA runs with the configuration of {source.name}/{table} "
            f"({', '.join(found) or 'none'}); run `anchorrec pretrain --dataset {paths.name}` with the same "
            "settings (one run)"
        )
    return found[0]


def _ica_signature(config_path: Path) -> tuple:
    if not config_path.exists():
        return ()
    c = read_json(config_path)
    keys = ("image_feature", "text_feature", "image_tokens", "text_tokens")
    return (json.dumps(c.get("config"), sort_keys=True), *(c.get(k) for k in keys))


def _space(model: str) -> Mapping[str, Sequence]:
    return {} if is_fixed(model) else search_space(model)


COLD_VERDICT = (("cold", "ndcg@20", "ranked among the cold test items"), ("all", "recall@20", "ranked among all items"))


def cold_verdict(paths: DatasetPaths, reruns: dict[str, dict[str, Any]]) -> list[str]:
    """On a dataset with cold items: which model is best on them, and whether AnchorRec's design
    helps there, paired by seed against the best other model with a cold path.

    Cold is read by NDCG@20: on a small catalog the cold test items can number 20 or fewer, and
    Recall@20 among them is then 1 for every model; `all` by Recall@20 (new items compete with the
    catalog, as they do when served)."""
    lines = []
    for division, key, how in COLD_VERDICT:
        per_seed = _division_per_seed(paths, reruns, division, key)
        if per_seed:
            lines += _division_lines(per_seed, sorted(set(reruns) - set(per_seed)), division, key, how)
    return lines


def _division_per_seed(
    paths: DatasetPaths, reruns: dict[str, dict[str, Any]], division: str, key: str
) -> dict[str, dict[int, float]]:
    """model → seed → the division's metric, for models with it on every seed (a cold path)."""
    per_seed: dict[str, dict[int, float]] = {}
    for model, s in reruns.items():
        values = {}
        for rid in s["runs"]:
            m = read_json(paths.metrics(rid))
            part = (m.get("test_divisions") or {}).get(division)
            if part is not None:
                values[int(m["seed"])] = float(part[key])
        if values and len(values) == len(s["runs"]):
            per_seed[model] = values
    return per_seed


def _division_lines(
    per_seed: dict[str, dict[int, float]], without: list[str], division: str, key: str, how: str
) -> list[str]:
    mean = {m: float(np.mean(list(v.values()))) for m, v in per_seed.items()}
    ranked = sorted(mean, key=lambda m: -mean[m])
    lines = [
        f"Item-cold protocol, {division} division ({how}), test {key}: best **{ranked[0]}** "
        f"{mean[ranked[0]]:.4f}; "
        + ", ".join(f"{m} {mean[m]:.4f}" for m in ranked[1:])
        + (f". No honest cold path, left out: {', '.join(without)}." if without else ".")
    ]
    others = [m for m in ranked if m != PROPOSED]
    if PROPOSED in per_seed and others:
        rival = others[0]
        seeds = sorted(set(per_seed[PROPOSED]) & set(per_seed[rival]))
        a, b = [per_seed[PROPOSED][x] for x in seeds], [per_seed[rival][x] for x in seeds]
        diff, p = paired_over_seeds(a, b)
        wins = sum(x > y for x, y in zip(a, b))
        lines.append(
            f"anchorrec vs {rival} (best other, {division} division) on {key}: {diff:+.4f}, paired t over seeds "
            f"p = {p:.3g}, better on {wins}/{len(seeds)} seeds: the modality-preserving design " + _helps(diff, p)
        )
    return lines


def _helps(diff: float, p: float) -> str:
    if p < 0.05:
        return "helps on new items." if diff > 0 else "does not help on new items."
    return "is not resolved on new items by these seeds."


def _run_id(cfg: TrainConfig) -> str:
    """The run id of a leaderboard rerun (seed_configs names every one)."""
    if cfg.run_id is None:
        raise ValueError(f"{cfg.model}: a leaderboard rerun's config has no run_id")
    return cfg.run_id


def run_base(model: str, cap: int | None) -> str:
    """Run-id stem of a model's reruns: lb-<model>, or lb-<model>-cap<N> for the converged table."""
    return f"lb-{model}" if cap is None else f"lb-{model}-cap{cap}"


def capped(cfg: TrainConfig, cap: int) -> TrainConfig:
    """The chosen configuration with a higher epoch cap; everything else (patience included) as chosen."""
    if cap < cfg.epochs:
        raise ValueError(f"--epochs {cap}: below the studies' cap {cfg.epochs}; the converged table only goes further")
    return dataclasses.replace(cfg, epochs=cap)


def continue_capped(paths: DatasetPaths, todo: Sequence[TrainConfig], log: Callable[[str], None]) -> None:
    """Start each converged run from its capped rerun: from its checkpoint (same seed, same batches,
    same lr schedule: the first epochs are identical), so only the epochs past the old cap are
    trained; or, for a capped rerun kept only as its summary (a snapshot) that early stopping ended
    before the cap, as a copy of that summary: the longer budget would have ended there too."""
    started: dict[str, int] = {}
    copied: list[str] = []
    for cfg in todo:
        run_id = _run_id(cfg)
        short_id = f"{run_base(cfg.model, None)}-s{cfg.seed}"
        epoch = start_from_shorter_run(paths.run(short_id), paths.run(run_id), cfg)
        if epoch is not None:
            started[run_id] = epoch
        elif copy_ended_summary(paths.run(short_id), paths.run(run_id), cfg):
            copied.append(run_id)
    if started:
        log(
            f"{len(started)} run(s) continue from their capped rerun's checkpoint "
            f"(at epochs {min(started.values())}–{max(started.values())}); only the epochs past it are trained"
        )
    if copied:
        log(f"{len(copied)} run(s) ended by early stopping before the cap, kept as summaries: copied, not trained")


def copy_ended_summary(src_dir: Path, dst_dir: Path, cfg: TrainConfig) -> bool:
    """Copy a kept capped run (summary only, no checkpoint) as its own converged run when early
    stopping or divergence ended it before the cap; False where it has a checkpoint (continued
    instead), is no kept run, or the cap ended it (then it must be trained: `fit` does, from epoch 0)."""
    if (dst_dir / "checkpoint.pt").exists() or (src_dir / "checkpoint.pt").exists():
        return False
    if not (src_dir / "metrics.json").exists() or not (src_dir / "config.json").exists():
        return False
    stored = read_json(src_dir / "config.json")
    check_shorter_run(src_dir, stored, dst_dir.name, cfg)
    metrics = read_json(src_dir / "metrics.json")
    early = ended_early(metrics["epochs_run"], metrics["best_epoch"], cfg.patience)
    if metrics.get("stopped_by_hand") or not (early or metrics.get("diverged_at_epoch") is not None):
        return False
    dst_dir.mkdir(parents=True, exist_ok=True)
    for f in src_dir.iterdir():
        if f.is_file() and f.name not in ("config.json", "metrics.json"):
            shutil.copy2(f, dst_dir / f.name)
    write_json({**stored, "epochs": cfg.epochs, "run_id": dst_dir.name}, dst_dir / "config.json")
    ended = {"run_id": dst_dir.name, "resumed_from_epoch": metrics["epochs_run"], "copied_from": src_dir.name}
    write_json({**metrics, **ended}, dst_dir / "metrics.json")
    return True


def side_by_side(capped_board: dict[str, Any], rows: dict[str, dict], baseline: str) -> dict[str, list[str]]:
    """The capped and the converged table in one: test Recall@20, rank and epochs to best, then
    what a longer budget changed, in words."""
    before = capped_board["models"]
    lines = [
        "",
        f"## Capped ({_cap_of(before)} epochs) and converged, side by side",
        "",
        "| model | capped R@20 | converged R@20 | change | rank capped → converged | epochs to best capped → converged |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for m, r in rows.items():
        b = before.get(m)
        if b is None:
            continue
        r0, r1 = b["test_mean"]["recall@20"], r["test_mean"]["recall@20"]
        lines.append(
            f"| {m} | {r0:.4f} | {r1:.4f} | {r1 - r0:+.4f} | {b['rank']} → {r['rank']} | "
            f"{b['epochs_to_best']:.1f} → {r['epochs_to_best']:.1f} |"
        )
    common = [m for m in rows if m in before]
    if not common:
        return {"lines": lines, "verdict": []}
    order0 = sorted(common, key=lambda m: before[m]["rank"])
    order1 = sorted(common, key=lambda m: rows[m]["rank"])
    verdict = [
        "Against the capped table: the ranking "
        + ("is unchanged" if order0 == order1 else f"changes ({' > '.join(order0)} → {' > '.join(order1)})")
        + f"; best capped {order0[0]}, best converged {order1[0]}."
    ]
    if PROPOSED in common and baseline in common and baseline != PROPOSED:
        gap0 = before[PROPOSED]["test_mean"]["recall@20"] - before[baseline]["test_mean"]["recall@20"]
        gap1 = rows[PROPOSED]["test_mean"]["recall@20"] - rows[baseline]["test_mean"]["recall@20"]
        verdict.append(
            f"AnchorRec against {baseline} on test Recall@20: {gap0:+.4f} capped, {gap1:+.4f} converged "
            f"({_gap_words(gap0, gap1)})."
        )
    return {"lines": lines, "verdict": verdict}


def _gap_words(gap0: float, gap1: float) -> str:
    """What the longer budget did to AnchorRec's gap: closed a share of it, none, or reversed it."""
    if abs(gap1 - gap0) < 5e-5:
        return "unchanged"
    if gap0 >= 0:
        return "ahead capped" if gap1 >= 0 else "ahead capped, behind converged"
    if gap1 >= 0:
        return "the longer budget closes the whole gap"
    if gap1 > gap0:
        return f"the longer budget closes {1 - gap1 / gap0:.0%} of the gap"
    return "the gap widens"


def _cap_of(board_models: dict[str, dict]) -> str:
    caps = sorted({r["tuning"]["epochs"] for r in board_models.values()})
    return "/".join(map(str, caps))


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
            # the item-cold protocol's divisions; a warm dataset's row has no such key, as before it existed
            **({"test_divisions": s["test_divisions"]} if s.get("test_divisions") else {}),
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
            "on_grid_edge": grid_edges(best["best_params"], best.get("space") or _space(model)),
            **({"untuned": best["untuned"]} if best.get("untuned") else {}),
            "near_cap": near_cap(s["best_epochs"], s["runs"], cfg.epochs, cfg.patience),
        }
    ranked = sorted(rows.items(), key=lambda kv: -kv[1]["test_mean"]["recall@20"])
    return {m: {**row, "rank": rank} for rank, (m, row) in enumerate(ranked, start=1)}


def grid_edges(params: dict[str, Any], space: Mapping[str, Sequence]) -> dict[str, str]:
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
    lines += [""] + division_table({m: r.get("test_divisions") for m, r in rows.items()})
    lines += [
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
            + (
                "– | not trained (no weights) |"
                if is_fixed(m)  # pop, content_knn: no epoch, so no cap or patience met
                else f"{r['epochs_to_best']:.1f} | {t['epochs']} / {t['patience']} |"
            )
        )
    lines += ["", "## What binds", ""]
    for m, r in rows.items():
        if is_fixed(m):
            lines.append(f"- {m}: nothing to tune or train.")
            continue
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
    lines += [
        f"| {m} | {r['untuned'] if r.get('untuned') else '`' + json.dumps(r['params'], sort_keys=True) + '`'} |"
        for m, r in rows.items()
    ]
    return lines
