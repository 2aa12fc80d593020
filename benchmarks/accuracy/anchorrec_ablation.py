"""Where tuned AnchorRec trails, and what the principled fixes buy (issue 17, item 4).

Starts from the configuration `anchorrec tune` chose on the dataset (tuning/anchorrec/best.json)
and its leaderboard reruns (runs lb-anchorrec-s<seed>), changes one thing per row, and trains each
row on the same seeds (runs abl-<row>-s<seed>; resumable, a finished run is not trained again).
Every row is read on test once, at its best validation epoch, like the leaderboard; a row that
would be adopted is judged on its validation column, never on test:

    test Recall@20 / NDCG@20 (mean ± std over seeds), Δ Recall@20 against the tuned row
    (mean of per-seed differences, paired t over seeds) and against the leaderboard's best
    model, Recall@20 on head / tail items (top 20% / bottom 50% by training popularity), and the
    collapse diagnostics ID overlap@3 and ID dominance (a fix must not buy accuracy by collapsing);
    and a second table of each row's weighted loss terms at its best epoch (which term the
    optimiser spends its effort on, beside the row that removes it).

Rows (each a change to the tuned configuration):

    l2/10         lambda_weight ÷ 10 — AnchorRec's L2 on final embeddings is 10× AlignRec's
    no-uia        uia_weight 0 — the user–item alignment margin term
    ui-layers-4   n_ui_layers 4 — head items lag, and the ID models chose 4 propagation layers
    no-mm         mm_branch False — no mm branch (no recovery, alignment, mm structure, smoothing)
    no-smooth     smooth_weight 0 — the graph smoothing over the mm kNN edges
    recover-5e-4  recover_lambda 0.0005 — the released config's recovery strength (ours 0.5)
    no-amp        amp_loss 0 — AMP, which holds the branches' item–item similarities to the raw features
    no-t          t_branch False — z_t out of the score: where t is the mm table itself (MMRec
                  Sports runs one text table as mm, t and v) z_mm + z_t is one branch counted twice
    uia-grad      uia_detach False — UIA's gradient also reaches the user anchor (the spec detaches it)
    uia-x10       uia_weight 0.1 — AlignRec's alignment weight: tuned AnchorRec spends <1% of its loss
                  on UIA where AlignRec spends 23% (the loss-term table)
    epochs-200    epoch cap 200 (patience as tuned) — AnchorRec peaks at the 100-epoch cap on Sports:
                  is the gap a budget artefact? Started from the tuned runs' checkpoints where the
                  home has them, so only the epochs past 100 are trained
    mm=NAME       (with --mm NAME) the mm feature table NAME instead of the tuned one, e.g. an
                  encoder pretrained on a larger catalog and applied with `--ica-from`

    .venv/bin/python benchmarks/accuracy/anchorrec_ablation.py --home /work/lb-home --dataset gift [--jobs 2]
    .venv/bin/python benchmarks/accuracy/anchorrec_ablation.py --home /work/lb-home --dataset sports --seeds 2 --jobs 2 \
        --rows no-t no-amp l2/10 ui-layers-4 no-mm no-uia uia-grad no-smooth recover-5e-4 \
        --snapshot benchmarks/results/leaderboard_sports     # many hours on 2 cores: rerun to go on

Runs are trained rows first, in the order of --rows, so the first rows finish first; --report-only
writes the table of the rows whose runs have all ended, training nothing. With --snapshot DIR each
finished run's summary is kept in DIR/runs/ (the head / tail columns come from its diagnostics, so a
kept run needs no vectors) and runs in flight in DIR/inflight/, as in leaderboard_run.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common

from benchmarks.common.run_snapshot import every, keeper, restore_inflight, restore_runs  # noqa: E402
from models.evaluation.leaderboard import best_config, kept_metrics  # noqa: E402
from models.evaluation.metrics import paired_over_seeds  # noqa: E402
from models.evaluation.run_summary import default_features, diagnose_run, keep_run_summary  # noqa: E402
from models.training.data import load_interactions  # noqa: E402
from models.training.trainer import (  # noqa: E402
    TrainConfig,
    fit_runs,
    load_metrics,
    seed_configs,
    start_from_shorter_run,
)
from store.layout import dataset_paths  # noqa: E402
from store.tables import write_json  # noqa: E402

ROWS: dict[str, dict] = {
    "l2/10": {"lambda_weight": "/10"},
    "no-uia": {"uia_weight": 0.0},
    "ui-layers-4": {"n_ui_layers": 4},
    "no-mm": {"mm_branch": False},
    "no-smooth": {"smooth_weight": 0.0},
    "recover-5e-4": {"recover_lambda": 0.0005},
    "no-amp": {"amp_loss": 0.0},
    "no-t": {"t_branch": False},
    "uia-grad": {"uia_detach": False},
    "uia-x10": {"uia_weight": 0.1},
}
# rows that change the training, not the model: started from the tuned runs' checkpoints where the
# home has them (a higher epoch cap only adds epochs to the leaderboard's runs)
TRAIN_ROWS: dict[str, dict] = {
    "epochs-200": {"epochs": 200},
}


def row_config(tuned: TrainConfig, name: str) -> TrainConfig:
    """The tuned config with row `name`'s one change."""
    if name in TRAIN_ROWS:
        return dataclasses.replace(tuned, **TRAIN_ROWS[name])
    return dataclasses.replace(tuned, model_args=row_args(tuned.model_args, ROWS[name]))


def row_args(tuned: dict, change: dict) -> dict:
    """The tuned model_args with one row's change ('/10' divides the tuned or default value)."""
    from models.anchorrec import AnchorRecConfig

    args = dict(tuned)
    for key, value in change.items():
        if value == "/10":
            value = args.get(key, getattr(AnchorRecConfig(), key)) / 10
        args[key] = value
    return args


def run_stats(paths, run_ids: list[str], data, features: dict[str, str]) -> list[dict]:
    """Per seed: valid and test R@20, test N@20, head / tail test R@20 and the collapse diagnostics
    (ID overlap@3, ID dominance) from the run's diagnostics (made as it ended; computed now for a
    run that has its vectors and none yet): a fix that buys accuracy by collapsing is no fix."""
    out = []
    for rid in run_ids:
        metrics = load_metrics(paths, rid)
        diag = diagnose_run(paths, rid, features, data=data)
        tail = diag["long_tail"]
        out.append(
            {
                "run": rid,
                "valid": metrics["valid"]["recall@20"],
                "recall@20": metrics["test"]["recall@20"],
                "ndcg@20": metrics["test"]["ndcg@20"],
                "head": tail["head"]["recall@20"],
                "tail": tail["tail"]["recall@20"],
                "id_overlap@3": diag.get("id_overlap@3"),
                "id_dominance": diag.get("id_dominance"),
                "loss_terms": loss_terms(metrics),
            }
        )
    return out


def loss_terms(metrics: dict) -> dict[str, float]:
    """The weighted loss terms of the epoch the run was read at (its best): which term the optimiser
    actually spends its effort on, so a row that removes a term can be read against its size."""
    best = next((h for h in metrics.get("history", []) if h.get("epoch") == metrics.get("best_epoch")), {})
    return {
        k: float(v)
        for k, v in best.items()
        if k not in ("epoch", "loss", "lr") and not k.endswith("_s") and isinstance(v, (int, float))
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", required=True)
    ap.add_argument("--dataset", default="gift")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument(
        "--rows",
        nargs="+",
        default=[*ROWS, *TRAIN_ROWS],
        choices=[*ROWS, *TRAIN_ROWS],
        help="rows, trained in this order",
    )
    ap.add_argument("--mm", action="append", default=[], help="also a row with this mm feature table (repeatable)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (worker processes, one torch thread each)")
    ap.add_argument(
        "--snapshot",
        type=Path,
        metavar="DIR",
        help="keep finished runs' summaries (and runs in flight) here and start what the home lacks from them",
    )
    ap.add_argument(
        "--report-only", action="store_true", help="train nothing: the table of the rows whose runs have ended"
    )
    ap.add_argument(
        "--out",
        type=Path,
        help="table path without suffix (.md and .json are written; default "
        "benchmarks/results/anchorrec_ablation_<dataset>)",
    )
    args = ap.parse_args(argv)
    args.command = " ".join(a for a in (sys.argv[1:] if argv is None else argv) if a != "--report-only")
    paths = dataset_paths(args.dataset, args.home)
    board_path = paths.root / "reports" / "leaderboard" / "leaderboard.json"
    if args.report_only and not board_path.exists():
        ap.error(
            f"{board_path}: no leaderboard on {args.dataset} yet; the tuned row is its lb-anchorrec runs: "
            f"run benchmarks/accuracy/leaderboard_run.py --dataset {args.dataset} first"
        )
    for mm in args.mm:
        if not paths.feature(mm).exists():
            ap.error(f"--mm {mm}: no feature table {paths.feature(mm)}")
    try:
        cfg, _ = best_config(paths, "anchorrec")
    except (FileNotFoundError, ValueError) as e:  # no study, or one that cannot be read: one line, exit 2
        ap.error(str(e))
    seeds = list(range(args.seeds))
    variants = [(name, row_config(cfg, name)) for name in args.rows]
    variants += [(f"mm={mm}", dataclasses.replace(cfg, features={**cfg.features, "mm": mm})) for mm in args.mm]
    runs = {
        name: seed_configs(row_cfg, f"abl-{name.replace('/', '-').replace('=', '-')}", seeds)
        for name, row_cfg in variants
    }
    features = default_features([cfg.to_json()])
    if args.snapshot:
        restore_runs(paths.runs_dir, args.snapshot)
        restore_inflight(paths.runs_dir, args.snapshot)
    if not args.report_only:
        for name in set(runs) & set(TRAIN_ROWS):
            for seed, c in zip(seeds, runs[name]):
                if kept_metrics(paths, c) is None:
                    start_from_shorter_run(paths.run(f"lb-anchorrec-s{seed}"), paths.run(c.run_id), c)
        train(paths, [c for cs in runs.values() for c in cs], features, args.jobs, args.snapshot)
    if not board_path.exists():  # the rows need only the study's choice; the table needs the leaderboard's reruns
        print(
            f"rows trained; no leaderboard yet ({board_path}): rerun with --report-only once it has ended", flush=True
        )
        return
    board = json.loads(board_path.read_text())
    best_model = max(board["models"], key=lambda m: board["models"][m]["test_mean"]["recall@20"])
    data = load_interactions(paths)
    stats = {
        "tuned": run_stats(paths, [f"lb-anchorrec-s{s}" for s in seeds], data, features),
        f"best: {best_model}": run_stats(paths, [f"lb-{best_model}-s{s}" for s in seeds], data, features),
    }
    for name, cs in runs.items():
        if all(paths.metrics(c.run_id).exists() for c in cs):
            stats[name] = run_stats(paths, [c.run_id for c in cs], data, features)
            print(name, f"test R@20 {np.mean([s['recall@20'] for s in stats[name]]):.4f}", flush=True)
        else:
            print(f"{name}: not every seed has ended yet; left out of the table", flush=True)
    write_results(paths, args, stats, best_model, cfg.model_args)


def train(paths, configs: list, features: dict[str, str], jobs: int, snapshot: Path | None) -> None:
    """Train the runs not kept as summaries (resumable: finished runs load, started ones continue),
    each run's report summary made as it ends; with a snapshot, kept there every minute."""
    todo = [c for c in configs if kept_metrics(paths, c) is None]
    if not todo:
        return
    kept = every(60.0, keeper(paths.runs_dir, snapshot, "abl-", ("abl-",))) if snapshot else nullcontext()
    with kept:
        fit_runs(paths, todo, progress=False, jobs=jobs, after=partial(keep_run_summary, features=features))


def write_results(paths, args, stats: dict[str, list[dict]], best_model: str, tuned_args: dict) -> None:
    keys = ("valid", "recall@20", "ndcg@20", "head", "tail", "id_overlap@3", "id_dominance")
    col = {name: {k: [s.get(k) for s in rows] for k in keys} for name, rows in stats.items()}
    tuned, best = col["tuned"]["recall@20"], col[f"best: {best_model}"]["recall@20"]
    lines = [
        f"# AnchorRec ablation on {paths.name}: one change to the tuned configuration per row",
        "",
        f"Tuned model_args: `{json.dumps(tuned_args, sort_keys=True)}`; seeds 0..{args.seeds - 1}; the tuned row "
        f"is the leaderboard's lb-anchorrec runs. Δ is the mean per-seed difference (paired t over seeds). "
        f"Head / tail: items in the top 20% / bottom 50% by training popularity. ID overlap@3 and ID "
        f"dominance are the collapse diagnostics of the report (lower: the vectors say more than the "
        f"ID graph). Command that trains the rows (with --report-only it only writes this table): "
        f"`.venv/bin/python benchmarks/accuracy/anchorrec_ablation.py {args.command}`",
        "",
        *(
            [
                f"Only {args.seeds} seeds a row (each run costs hours here): a difference within about two of the "
                f"tuned row's seed std ({2 * np.std(tuned):.4f}) is not resolved, whatever its p.",
                "",
            ]
            if args.seeds < 5
            else []
        ),
        f"| row | change | valid R@20 | test R@20 | test N@20 | Δ R@20 vs tuned (p) | Δ R@20 vs {best_model} (p) "
        "| head R@20 | tail R@20 | ID overlap@3 | ID dominance |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, c in col.items():
        vs_tuned = _delta(c["recall@20"], tuned) if name != "tuned" else "—"
        vs_best = _delta(c["recall@20"], best) if name != f"best: {best_model}" else "—"
        if name in ROWS or name in TRAIN_ROWS:
            change = f"`{json.dumps(ROWS.get(name) or TRAIN_ROWS[name])}`"
        elif name.startswith("mm="):
            change = f"`{json.dumps({'features.mm': name[3:]})}`"
        else:
            change = "—"
        lines.append(
            f"| {name} | {change} | {np.mean(c['valid']):.4f} | {np.mean(c['recall@20']):.4f} ± {np.std(c['recall@20']):.4f} | "
            f"{np.mean(c['ndcg@20']):.4f} | {vs_tuned} | {vs_best} | "
            f"{np.mean(c['head']):.4f} | {np.mean(c['tail']):.4f} | {_mean(c['id_overlap@3'], '.2f')} | "
            f"{_mean(c['id_dominance'], '.1f')} |"
        )
    lines += ["", *loss_table(stats)]
    out = args.out or REPO / "benchmarks" / "results" / f"anchorrec_ablation_{paths.name}"
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    write_json(
        {"dataset": paths.name, "best_model": best_model, "tuned_args": tuned_args, "rows": stats},
        out.with_suffix(".json"),
    )
    print("\n".join(lines))


def loss_table(stats: dict[str, list[dict]]) -> list[str]:
    """Per row, each weighted loss term at the best epoch (mean over seeds) and its share of their sum."""
    terms = sorted({k for rows in stats.values() for s in rows for k in s.get("loss_terms", {})})
    if not terms:
        return []
    lines = [
        "Weighted loss terms at the best epoch (mean over seeds; share of their sum), to read beside the row "
        "that removes each term: a term near 0% of the loss is one the optimiser hardly spends effort on.",
        "",
        "| row | " + " | ".join(terms) + " |",
        "| --- |" + " --- |" * len(terms),
    ]
    for name, rows in stats.items():
        has = {t for t in terms if all(t in s.get("loss_terms", {}) for s in rows)}  # every seed has it
        mean = {t: np.mean([s["loss_terms"][t] for s in rows]) if t in has else None for t in terms}
        total = sum(v for v in mean.values() if v is not None)
        cells = ["" if v is None else f"{v:.2g} ({_share(v, total)})" for v in mean.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _share(value: float, total: float) -> str:
    return "–" if total <= 0 else "<1%" if 0 < value / total < 0.01 else f"{value / total:.0%}"


def _delta(values: list[float], baseline: list[float]) -> str:
    """Mean per-seed difference and its paired-t p, as the table prints it."""
    d, p = paired_over_seeds(values, baseline)
    return f"{d:+.4f} ({p:.3g})"


def _mean(values: list, fmt: str) -> str:
    """The mean, or '–' where a run's diagnostics lack the figure (a summary kept before it was made)."""
    return "–" if any(v is None for v in values) else format(float(np.mean(values)), fmt)


if __name__ == "__main__":
    main()
