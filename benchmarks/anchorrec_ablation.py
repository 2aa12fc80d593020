"""Where tuned AnchorRec trails, and what the principled fixes buy (issue 17, item 4).

Starts from the configuration `anchorrec tune` chose on the dataset (tuning/anchorrec/best.json)
and its leaderboard reruns (runs lb-anchorrec-s<seed>), changes one thing per row, and trains each
row on the same seeds (runs abl-<row>-s<seed>; resumable, a finished run is not trained again).
Every row is read on test once, at its best validation epoch, like the leaderboard; a row that
would be adopted is judged on its validation column, never on test:

    test Recall@20 / NDCG@20 (mean ± std over seeds), Δ Recall@20 against the tuned row
    (mean of per-seed differences, paired t over seeds) and against the leaderboard's best
    model, and Recall@20 on head / tail items (top 20% / bottom 50% by training popularity).

Rows (each a change to the tuned configuration):

    l2/10         lambda_weight ÷ 10 — AnchorRec's L2 on final embeddings is 10× AlignRec's
    no-uia        uia_weight 0 — the user–item alignment margin term
    ui-layers-4   n_ui_layers 4 — head items lag, and the ID models chose 4 propagation layers
    no-mm         mm_branch False — no mm branch (no recovery, alignment, mm structure, smoothing)
    no-smooth     smooth_weight 0 — the graph smoothing over the mm kNN edges
    recover-5e-4  recover_lambda 0.0005 — the released config's recovery strength (ours 0.5)
    mm=NAME       (with --mm NAME) the mm feature table NAME instead of the tuned one, e.g. an
                  encoder pretrained on a larger catalog and applied with `--ica-from`

    .venv/bin/python benchmarks/anchorrec_ablation.py --home /work/lb-home --dataset gift [--jobs 2]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.evaluation.leaderboard import best_config  # noqa: E402
from models.evaluation.report import long_tail, popularity_buckets, run_vectors  # noqa: E402
from models.training.data import load_interactions  # noqa: E402
from models.training.trainer import fit_runs, load_metrics, seed_configs  # noqa: E402
from store.layout import dataset_paths  # noqa: E402
from store.tables import write_json  # noqa: E402

ROWS: dict[str, dict] = {
    "l2/10": {"lambda_weight": "/10"},
    "no-uia": {"uia_weight": 0.0},
    "ui-layers-4": {"n_ui_layers": 4},
    "no-mm": {"mm_branch": False},
    "no-smooth": {"smooth_weight": 0.0},
    "recover-5e-4": {"recover_lambda": 0.0005},
}


def row_args(tuned: dict, change: dict) -> dict:
    """The tuned model_args with one row's change ('/10' divides the tuned or default value)."""
    from models.anchorrec import AnchorRecConfig

    args = dict(tuned)
    for key, value in change.items():
        if value == "/10":
            value = args.get(key, getattr(AnchorRecConfig(), key)) / 10
        args[key] = value
    return args


def run_stats(paths, run_ids: list[str], data, buckets: np.ndarray) -> list[dict]:
    """Per seed: test R@20 / N@20 and head / tail R@20 of the run's published-at-best vectors."""
    out = []
    for rid in run_ids:
        metrics = load_metrics(paths, rid)
        test = metrics["test"]
        user, item, _ = run_vectors(paths, rid, data)
        tail = long_tail(user, item, data.train_csr, data.test_csr, buckets)
        out.append({"run": rid, "valid": metrics["valid"]["recall@20"], "recall@20": test["recall@20"], "ndcg@20": test["ndcg@20"],
                    "head": tail["head"]["recall@20"], "tail": tail["tail"]["recall@20"]})
    return out


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean per-seed difference a − b and the paired t-test's p over seeds."""
    from scipy import stats

    diff = np.asarray(a) - np.asarray(b)
    p = float(stats.ttest_rel(a, b).pvalue) if len(a) > 1 and np.any(diff != diff[0]) else float("nan")
    return float(diff.mean()), p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", required=True)
    ap.add_argument("--dataset", default="gift")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--mm", action="append", default=[], help="also a row with this mm feature table (repeatable)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (worker processes, one torch thread each)")
    args = ap.parse_args()
    paths = dataset_paths(args.dataset, args.home)
    board = json.loads((paths.root / "reports" / "leaderboard" / "leaderboard.json").read_text())
    best_model = max(board["models"], key=lambda m: board["models"][m]["test_mean"]["recall@20"])
    cfg, _ = best_config(paths, "anchorrec")
    seeds = list(range(args.seeds))
    data = load_interactions(paths)
    buckets = popularity_buckets(data.train_csr)
    stats = {"tuned": run_stats(paths, [f"lb-anchorrec-s{s}" for s in seeds], data, buckets),
             f"best: {best_model}": run_stats(paths, [f"lb-{best_model}-s{s}" for s in seeds], data, buckets)}
    for mm in args.mm:
        if not paths.feature(mm).exists():
            ap.error(f"--mm {mm}: no feature table {paths.feature(mm)}")
    variants = [(name, dataclasses.replace(cfg, model_args=row_args(cfg.model_args, ROWS[name]))) for name in args.rows]
    variants += [(f"mm={mm}", dataclasses.replace(cfg, features={**cfg.features, "mm": mm})) for mm in args.mm]
    runs = {name: seed_configs(row_cfg, f"abl-{name.replace('/', '-').replace('=', '-')}", seeds)
            for name, row_cfg in variants}
    fit_runs(paths, [c for cs in runs.values() for c in cs], progress=False, jobs=args.jobs)  # resumable: done runs load
    for name, cs in runs.items():
        stats[name] = run_stats(paths, [c.run_id for c in cs], data, buckets)
        print(name, f"test R@20 {np.mean([s['recall@20'] for s in stats[name]]):.4f}", flush=True)
    write_results(paths, args, stats, best_model, cfg.model_args)


def write_results(paths, args, stats: dict[str, list[dict]], best_model: str, tuned_args: dict) -> None:
    col = {name: {k: [s[k] for s in rows] for k in ("valid", "recall@20", "ndcg@20", "head", "tail")} for name, rows in stats.items()}
    tuned, best = col["tuned"]["recall@20"], col[f"best: {best_model}"]["recall@20"]
    lines = [f"# AnchorRec ablation on {paths.name}: one change to the tuned configuration per row", "",
             f"Tuned model_args: `{json.dumps(tuned_args, sort_keys=True)}`; seeds 0..{args.seeds - 1}; the tuned row "
             f"is the leaderboard's lb-anchorrec runs. Δ is the mean per-seed difference (paired t over seeds). "
             f"Head / tail: items in the top 20% / bottom 50% by training popularity. Command: "
             f"`.venv/bin/python benchmarks/anchorrec_ablation.py {' '.join(sys.argv[1:])}`", "",
             f"| row | change | valid R@20 | test R@20 | test N@20 | Δ R@20 vs tuned (p) | Δ R@20 vs {best_model} (p) | head R@20 | tail R@20 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, c in col.items():
        d_t, p_t = paired(c["recall@20"], tuned)
        d_b, p_b = paired(c["recall@20"], best)
        if name in ROWS:
            change = json.dumps(ROWS[name])
        elif name.startswith("mm="):
            change = json.dumps({"features.mm": name[3:]})
        else:
            change = ""
        lines.append(f"| {name} | `{change}` | {np.mean(c['valid']):.4f} | {np.mean(c['recall@20']):.4f} ± {np.std(c['recall@20']):.4f} | "
                     f"{np.mean(c['ndcg@20']):.4f} | {d_t:+.4f} ({p_t:.3g}) | {d_b:+.4f} ({p_b:.3g}) | "
                     f"{np.mean(c['head']):.4f} | {np.mean(c['tail']):.4f} |")
    out = REPO / "benchmarks" / "results" / f"anchorrec_ablation_{paths.name}"
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    write_json({"dataset": paths.name, "best_model": best_model, "tuned_args": tuned_args, "rows": stats}, out.with_suffix(".json"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
