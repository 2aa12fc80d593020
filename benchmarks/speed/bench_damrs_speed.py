"""DA-MRS training speed on MMRec Sports against LightGCN, and against its unchunked form, in one process.

Issue 34 asks DA-MRS's Sports epoch (495 s at one thread, 70× LightGCN's) to come down to ≤ 10×
LightGCN's in the same run, with memory bounded at 10⁵+ items. The neighbour term needs, per batch
item, a softmax and a sum of e^{cos/τ} over every item; models/damrs.py computes those
ROW_CHUNK batch items at a time and recomputes them chunk by chunk in the backward pass (ExpSum),
where the version before (git 28de690) built and kept the whole batch × N matrices for autograd.

Per step: the trainer's BPR batches of epoch 0 (batch 2048), each a full step (loss, zero_grad,
backward, Adam step); LightGCN, DA-MRS now and DA-MRS before alternate batch by batch (who goes
first rotates), so a loaded machine slows them alike. s/epoch = median step × batches per epoch.
Peak memory of one step is measured apart (ru_maxrss of a child process per variant).

    .venv/bin/python benchmarks/speed/bench_damrs_speed.py --threads 1 --batches 6
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common

from benchmarks.common.sports_data import sports_graph  # noqa: E402
from models.registry import make_model  # noqa: E402
from models.training.trainer import BPRSampler  # noqa: E402

BEFORE = "28de690"  # the last commit with the unchunked neighbour term
REPO = Path(__file__).resolve().parents[2]


def before_module() -> object:
    """models/damrs.py as it was at BEFORE, imported under another name."""
    src = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{BEFORE}:models/damrs.py"], capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "damrs_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("damrs_before", path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["damrs_before"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def models(graph: object, which: list[str]) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    out: dict[str, torch.nn.Module] = {}
    for name in which:
        if name in ("lightgcn", "damrs"):
            out[name] = make_model(name, graph)  # the original defaults
        else:
            mod = before_module()
            out[name] = mod.DAMRS(graph, mod.DAMRSConfig())  # type: ignore[attr-defined]
    return out


def step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: torch.Tensor) -> float:
    t0 = time.perf_counter()
    loss = model.batch_loss(batch[:, 0], batch[:, 1], batch[:, 2])["loss"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def timed(which: list[str], n_batches: int) -> dict[str, float]:
    data, graph = sports_graph()
    triples = torch.as_tensor(BPRSampler(data).epoch(0, 0))
    batches = list(torch.split(triples, 2048))
    ms = models(graph, which)
    opts = {n: torch.optim.Adam(m.parameters(), lr=1e-3) for n, m in ms.items()}
    times: dict[str, list[float]] = {n: [] for n in ms}
    for b in range(n_batches + 1):
        order = which[b % len(which) :] + which[: b % len(which)]
        for n in order:
            t = step(ms[n], opts[n], batches[b])
            if b:  # the first batch warms caches and allocators
                times[n].append(t)
    return {n: statistics.median(t) * len(batches) for n, t in times.items()}


def peak_rss_mb(name: str) -> float:
    """One step of one variant in a child process: its peak resident memory."""
    code = (
        f"import sys, resource; sys.argv=['x']; sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r}); "
        f"import benchmarks.speed.bench_damrs_speed as b; b.timed([{name!r}], 1); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", type=int, default=6, help="timed steps per model, after one warm-up step")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-variant peak-memory runs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    which = ["lightgcn", "damrs", "damrs_before"]
    s = timed(which, args.batches)
    rss = {} if args.no_memory else {n: peak_rss_mb(n) for n in which}
    print(
        f"DA-MRS on Sports, {args.threads} thread(s), median of {args.batches} steps × batches per epoch; "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print("| model | s/epoch | × LightGCN | peak RSS MB (one step) |")
    print("| --- | --- | --- | --- |")
    for n in which:
        print(f"| {n} | {s[n]:.1f} | {s[n] / s['lightgcn']:.1f} | {rss.get(n, float('nan')):.0f} |")
    print(f"DA-MRS now vs before: {s['damrs_before'] / s['damrs']:.2f}× faster")


if __name__ == "__main__":
    main()
