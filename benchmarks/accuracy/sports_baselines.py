"""Each baseline trained once on MMRec Sports at its original defaults: the table issue 16 asks for.

MiniLM keyword vectors as t and v (benchmarks/common/sports_data.py). MMRec's protocol: lr 1e-3, batch
2048, Adam without weight decay, validation Recall@20 every epoch, early stopping after 20
epochs without improvement (epoch cap 1000 as in MMRec's overall.yaml), test read once at the
best validation epoch. lr decay as each model's yaml: 0.96 per 50 epochs for LATTICE and SMORE
(`learning_rate_scheduler: [0.96, 50]`), none otherwise (MMRec's default [1.0, 50]). Model
arguments are each config's defaults (the originals' published ones).

Every run checkpoints each epoch under $ANCHORREC_BENCH_WORK/runs/sports-<model>-s<seed>; start
the same command again after a kill or a session end and it continues where it stopped, then
goes on to the next model. Results accumulate in benchmarks/results/baselines_sports.json and
the table in benchmarks/results/baselines_sports.md.

    .venv/bin/python benchmarks/accuracy/sports_baselines.py --threads 1 \
        --models vbpr freedom bm3 lattice lgmrec smore damrs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common

from benchmarks.common.report import epoch_logger  # noqa: E402
from benchmarks.common.sports_data import WORK, sports_graph  # noqa: E402
from models.training.trainer import TrainConfig, fit  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"
LR_DECAY = {"lattice": 0.96, "smore": 0.96}  # the models whose MMRec yaml sets [0.96, 50]
ORDER = ["vbpr", "freedom", "bm3", "lattice", "lgmrec", "smore", "damrs"]


class SliceEnd(Exception):
    """The time budget of this call is spent: the run stops at its last checkpoint and resumes next call."""


def train_one(
    model: str,
    seed: int,
    epochs: int,
    patience: int,
    data,
    graph,
    device: str | None = None,
    deadline: float = float("inf"),
) -> dict:
    """Train (or resume) one model's Sports run; its summary row. Past `deadline` (time.monotonic)
    the run stops after its next epoch's checkpoint (SliceEnd): the same command goes on from there."""
    cfg = TrainConfig(
        model=model,
        lr=1e-3,
        lr_decay=LR_DECAY.get(model, 1.0),
        epochs=epochs,
        patience=patience,
        batch_size=2048,
        seed=seed,
        knn_k=10,
        run_id=f"sports-{model}-s{seed}",
        device=device,
    )

    show = epoch_logger(f"{model} ")

    def log(epoch: int, rec: dict) -> None:
        show(epoch, rec)
        if time.monotonic() > deadline:  # after the epoch's checkpoint: nothing is lost
            raise SliceEnd(f"{model}: time budget spent after epoch {epoch}")

    m = fit(data, graph, cfg, WORK / "runs" / cfg.run_id, progress=False, callback=log)
    return {
        "model": model,
        "seed": seed,
        "lr_decay": cfg.lr_decay,
        "patience": patience,
        "valid_recall@20": m["valid"]["recall@20"],
        "valid_ndcg@20": m["valid"]["ndcg@20"],
        "test_recall@20": m["test"]["recall@20"],
        "test_ndcg@20": m["test"]["ndcg@20"],
        "best_epoch": m["best_epoch"],
        "epochs_run": m["epochs_run"],
        "train_s_per_epoch": m["timings"]["train_s_per_epoch"],
        "eval_s": m["timings"]["eval_s_per_eval"],
        "threads": torch.get_num_threads(),
        "finished": time.strftime("%Y-%m-%d %H:%M"),
    }


def write_table(rows: dict[str, dict], command: str) -> str:
    lines = [
        "# Baselines on MMRec Sports at their original defaults (MiniLM keyword vectors as t and v)",
        "",
        f"- machine: {platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}; "
        "other jobs shared the machine (s/epoch is indicative; see parity/epoch_speed.py for quiet figures)",
        f"- command: `{command}`",
        "- protocol: lr 1e-3, batch 2048, patience 20 on validation Recall@20, epoch cap 1000; test read once",
        "",
        "| model | test R@20 | test N@20 | valid R@20 | best epoch | epochs run | s/train epoch | s/eval | threads | finished |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in [m for m in ORDER if m in rows] + sorted(set(rows) - set(ORDER)):
        r = rows[name]
        lines.append(
            f"| {name} | {r['test_recall@20']:.4f} | {r['test_ndcg@20']:.4f} | {r['valid_recall@20']:.4f} | "
            f"{r['best_epoch']} | {r['epochs_run']} | {r['train_s_per_epoch']:.1f} | {r['eval_s']:.1f} | "
            f"{r['threads']} | {r['finished']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=ORDER)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--patience", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", type=Path, default=RESULTS / "baselines_sports.json")
    ap.add_argument("--device", default=None, help="cpu, cuda, … (default: CUDA when present)")
    ap.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="S",
        help="stop after the first epoch that ends past S seconds (at its checkpoint); rerun to go on",
    )
    args = ap.parse_args()
    deadline = time.monotonic() + args.time_budget if args.time_budget else float("inf")
    if args.patience < 20:
        ap.error("--patience: the comparison uses MMRec's stopping_step of 20 or more")
    torch.set_num_threads(args.threads)
    data, graph = sports_graph(device=args.device)
    rows = json.loads(args.results.read_text()) if args.results.exists() else {}
    command = ".venv/bin/python benchmarks/accuracy/sports_baselines.py " + " ".join(sys.argv[1:])
    for model in args.models:
        if model in rows and rows[model].get("epochs") == args.epochs and rows[model].get("patience") == args.patience:
            continue  # finished in an earlier call (a slice)
        try:
            rows[model] = train_one(model, args.seed, args.epochs, args.patience, data, graph, args.device, deadline)
        except SliceEnd as end:
            print(f"slice ended: {end}; run the same command again to continue", flush=True)
            return
        rows[model].update(epochs=args.epochs)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(rows, indent=1, sort_keys=True))
        table = write_table(rows, command)
        args.results.with_suffix(".md").write_text(table)
        print(table, flush=True)


if __name__ == "__main__":
    main()
