"""Seed reruns on MMRec Sports: J runs at once in worker processes vs one run on J threads.

    .venv/bin/python benchmarks/speed/bench_parallel_runs.py [--model lightgcn] [--epochs 3] [--jobs 2]

What `anchorrec leaderboard --jobs J` buys: the same J runs (same config, seeds 0..J-1, E epochs
with a validation pass each) trained (a) one after another, each on J torch threads, and (b) all
at once through `fit_runs(..., jobs=J)`, one thread each. Throughput is runs per hour; the ratio
(b)/(a) is the figure. Both phases run in this call, (a) first; stop other jobs while it runs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common

from benchmarks.common.sports_data import WORK, load_sports  # noqa: E402
from models.training.trainer import TrainConfig, fit_runs, seed_configs  # noqa: E402
from store.layout import dataset_paths  # noqa: E402


def timed_runs(paths, configs: list[TrainConfig], jobs: int) -> float:
    for c in configs:
        shutil.rmtree(paths.run(c.run_id), ignore_errors=True)
    t0 = time.perf_counter()
    fit_runs(paths, configs, progress=False, jobs=jobs)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lightgcn", choices=["lightgcn"], help="models without feature tables")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    load_sports()  # imports the interactions once, outside the timings
    paths = dataset_paths("mmrec-sports", WORK / "home")
    cfg = TrainConfig(model=args.model, epochs=args.epochs, patience=args.epochs, lr=1e-3)
    seeds = range(args.jobs)
    torch.set_num_threads(args.jobs)
    serial = timed_runs(paths, seed_configs(cfg, "bench-serial", seeds), jobs=1)
    parallel = timed_runs(paths, seed_configs(cfg, "bench-parallel", seeds), jobs=args.jobs)
    n = len(seeds)
    print(f"MMRec Sports, {args.model}, {n} runs of {args.epochs} epochs (train + validation pass each)")
    print("| how | wall s | runs/hour |")
    print("| --- | --- | --- |")
    print(f"| one after another, {args.jobs} torch threads each | {serial:.1f} | {3600 * n / serial:.2f} |")
    print(
        f"| {args.jobs} worker processes, 1 thread each (leaderboard --jobs {args.jobs}) | {parallel:.1f} | "
        f"{3600 * n / parallel:.2f} |"
    )
    print(f"throughput ratio parallel / serial: {serial / parallel:.2f}")


if __name__ == "__main__":
    main()
