"""Full-ranking evaluation on MMRec Sports: the evaluator against a fresh-buffer baseline, same process.

    .venv/bin/python benchmarks/speed/bench_evaluator.py [--threads 1] [--repeats 3] [--dim 64]

One validation pass (35,598 users × 18,357 items, train items masked, top-50) is what every
training epoch pays on Sports. The baseline is the evaluator's loop as it was before the score
buffer was shared across blocks (a fresh 256 MB score tensor per block); both must give the same
metrics. Embeddings are random with a fixed seed: the cost does not depend on their values.
Timings are the minimum over repeats, wall and CPU seconds, interleaved so a busy machine slows
both alike.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common

from benchmarks.common.sports_data import load_sports  # noqa: E402
from models.evaluation.metrics import RankingEvaluator  # noqa: E402


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def fresh_buffer_per_user(ev: RankingEvaluator, user: torch.Tensor, item: torch.Tensor) -> dict[str, np.ndarray]:
    """The evaluator's loop with a new score tensor per block (the baseline)."""
    parts: dict[str, list[torch.Tensor]] = {}
    for u, (tr_r, tr_c), (ho_r, ho_c), n_pos in ev.blocks:
        scores = user[u] @ item.T
        scores[tr_r, tr_c] = -torch.inf
        top = torch.topk(scores, ev.max_k, dim=1, sorted=True).indices
        scores.zero_()
        scores[ho_r, ho_c] = 1.0
        for name, vals in ev._from_hits(scores.gather(1, top), n_pos).items():
            parts.setdefault(name, []).append(vals)
    return {name: torch.cat(v).numpy() for name, v in parts.items()}


def timed(fn) -> tuple[float, float, object]:
    w, c = time.perf_counter(), cpu_seconds()
    out = fn()
    return time.perf_counter() - w, cpu_seconds() - c, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dim", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_sports()
    ev = RankingEvaluator(data.train_csr, data.valid_csr, (10, 20, 50), device="cpu")
    g = torch.Generator().manual_seed(0)
    user = torch.randn(data.n_users, args.dim, generator=g)
    item = torch.randn(data.n_items, args.dim, generator=g)
    runs: dict[str, list[tuple[float, float]]] = {"evaluator": [], "fresh buffer (baseline)": []}
    for _ in range(args.repeats):
        w, c, ours = timed(lambda: ev.per_user(user, item))
        runs["evaluator"].append((w, c))
        w, c, base = timed(lambda: fresh_buffer_per_user(ev, user, item))
        runs["fresh buffer (baseline)"].append((w, c))
        diff = max(float(np.abs(ours[k] - base[k]).max()) for k in base)
        if diff != 0.0:
            raise SystemExit(f"metrics differ from the baseline by {diff}")
    print(
        f"MMRec Sports valid: {len(ev.users)} users × {ev.n_items} items, {len(ev.blocks)} blocks, "
        f"{args.threads} thread(s), dim {args.dim}; metrics identical to the baseline"
    )
    print(f"| loop | wall s (min of {args.repeats}) | CPU s (min) |")
    print("| --- | --- | --- |")
    for name, r in runs.items():
        print(f"| {name} | {min(x[0] for x in r):.2f} | {min(x[1] for x in r):.2f} |")
    base_w = min(x[0] for x in runs["fresh buffer (baseline)"])
    ours_w = min(x[0] for x in runs["evaluator"])
    print(f"ratio evaluator / baseline (wall): {ours_w / base_w:.2f}")


if __name__ == "__main__":
    main()
