"""How far a different CPU moves a Sports run: the MiniLM table, its kNN graph and AnchorRec's first epoch.

Runs are bit-exact on one machine (a resumed or continued run retraces its first run), yet the
converged AnchorRec reruns' first 100 epochs were not equal to the capped reruns trained on other
machines (epoch-0 loss 0.603625 vs 0.603556), while LightGCN, which reads no features, retraced
them exactly. This script tests the explanation on one machine: it embeds the Sports keywords
twice in child processes, once with the CPU's full instruction set and once limited to AVX2
(oneDNN, MKL and ATen dispatch), as on an older machine, then compares the two tables, their
top-10 cosine graphs, and the epoch-0 loss of AnchorRec in the Sports leaderboard's configuration
on each (seed 3). On a machine without AVX-512 both children take the same code paths and every
difference is 0.

    .venv/bin/python benchmarks/accuracy/cpu_isa_drift.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the repository root: the package, benchmarks.common

from benchmarks.common.sports_data import load_sports  # noqa: E402
from models.training.data import InteractionData, build_graph_data  # noqa: E402
from models.training.graphs import knn_search  # noqa: E402
from models.training.trainer import TrainConfig, done_epochs, fit  # noqa: E402
from models.training.tune import trial_config  # noqa: E402

AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
STUDY = REPO / "benchmarks" / "results" / "leaderboard_sports" / "studies" / "anchorrec" / "best.json"


def embed(path: Path, env: dict[str, str]) -> np.ndarray:
    """The keyword table as a child process with `env` computes it (the ISA is fixed at process start)."""
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); from pathlib import Path; "
        f"from benchmarks.common.sports_data import minilm_keywords; minilm_keywords(cache=Path({str(path)!r}))"
    )
    subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1", **env}, check=True, capture_output=True
    )
    return np.load(path)


def leaderboard_config(seed: int) -> TrainConfig:
    """AnchorRec as the Sports leaderboard chose it (its kept study), for one epoch on `seed`."""
    best = json.loads(STUDY.read_text())
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    base = TrainConfig(**{k: v for k, v in best["budget"].items() if k in fields})
    return dataclasses.replace(trial_config(base, best["best_params"], "isa"), epochs=1, seed=seed)


def first_epoch_loss(data: InteractionData, x: np.ndarray, cfg: TrainConfig) -> float:
    """The epoch-0 loss of `cfg` with `x` as every modality's table (the feature names in cfg: labels only)."""
    graph = build_graph_data(data, {m: x for m in cfg.features}, knn_k=cfg.knn_k, device="cpu", knn_self=cfg.knn_self)
    run = Path(tempfile.mkdtemp()) / "isa"
    fit(data, graph, cfg, run, progress=False)
    return float(done_epochs(run)[0]["loss"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    full, avx2 = embed(tmp / "full.npy", {}), embed(tmp / "avx2.npy", AVX2)
    top_full, top_avx2 = knn_search(full, 10)[0], knn_search(avx2, 10)[0]
    sets = sum(set(a) != set(b) for a, b in zip(top_full.tolist(), top_avx2.tolist()))
    data, cfg = load_sports(), leaderboard_config(args.seed)
    loss_full, loss_avx2 = first_epoch_loss(data, full, cfg), first_epoch_loss(data, avx2, cfg)
    print(f"Sports MiniLM table and AnchorRec epoch 0 (seed {args.seed}), full ISA vs AVX2 only; 1 thread")
    print("| quantity | full ISA | AVX2 | difference |")
    print("| --- | --- | --- | --- |")
    print(
        f"| table: rows differing / max abs difference | | | {(full != avx2).any(1).sum()} / {np.abs(full - avx2).max():.2e} |"
    )
    print(f"| top-10 graph: items whose neighbour set differs | | | {sets} of {len(full)} |")
    print(f"| top-10 graph: items whose neighbour order differs | | | {(top_full != top_avx2).any(1).sum()} |")
    print(f"| AnchorRec epoch-0 loss | {loss_full:.7f} | {loss_avx2:.7f} | {loss_avx2 - loss_full:+.2e} |")


if __name__ == "__main__":
    main()
