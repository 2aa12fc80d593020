"""Seconds per training epoch on MMRec Sports (MiniLM keyword vectors as t and v) per model.

One epoch as the trainer runs it (models/training/trainer.py: BPRSampler epoch 0, batch 2048, loss,
backward, fused Adam, then `on_epoch_end`), at each model's defaults, timed wall and CPU.

    .venv/bin/python benchmarks/speed/epoch_speed.py --threads 1 --models lightgcn vbpr freedom
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common

from benchmarks.common.sports_data import sports_graph  # noqa: E402
from models.registry import make_model  # noqa: E402
from models.training.trainer import BPRSampler  # noqa: E402


def one_epoch(name: str, data, graph, batch_size: int) -> tuple[float, float, float]:
    """(wall s, CPU s, mean loss) of one epoch of model `name`."""
    torch.manual_seed(0)
    model = make_model(name, graph)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    triples = torch.as_tensor(BPRSampler(data).epoch(0, 0), device=graph.device)
    t0, c0, total, n = time.perf_counter(), time.process_time(), 0.0, 0
    for start in range(0, len(triples), batch_size):
        b = triples[start : start + batch_size]
        loss = model.batch_loss(b[:, 0], b[:, 1], b[:, 2])["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total, n = total + float(loss.detach()), n + 1
    if hasattr(model, "on_epoch_end"):
        model.on_epoch_end(0)
    if graph.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0, total / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["lightgcn", "vbpr", "freedom"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data, graph = sports_graph(device=args.device)
    print(
        f"Sports: {data.n_users} users, {data.n_items} items, {len(data.train)} training pairs; "
        f"{args.threads} thread(s), {args.device}"
    )
    print("| model | s/epoch (wall) | s/epoch (CPU) | mean loss |\n| --- | --- | --- | --- |")
    for name in args.models:
        wall, cpu, loss = one_epoch(name, data, graph, args.batch_size)
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {loss:.4f} |", flush=True)


if __name__ == "__main__":
    main()
