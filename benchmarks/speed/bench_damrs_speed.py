"""DA-MRS training speed on MMRec Sports against LightGCN, and against its unchunked form, in one process.

Issue 34 asks DA-MRS's Sports epoch (495 s at one thread, 70× LightGCN's) to come down to ≤ 10×
LightGCN's in the same run, with memory bounded at 10⁵+ items. The neighbour term needs, per batch
item, a softmax and a sum of e^{cos/τ} over every item; models/damrs.py computes those
ROW_CHUNK batch items at a time from one exp per chunk and keeps at most EXP_CACHE bytes of them
for the backward pass (ExpSum recomputes the rest), and its user-alignment KL is computed from
the logits. The variants: damrs (the working tree), damrs_chunked (git CHUNKED: row chunks, two
exps and a softmax per chunk, all recomputed in the backward, the KL from eight logs) and
damrs_before (git BEFORE: the whole batch × N matrices kept for autograd). gemm_floor is not a
model: it times only the three batch × N × d matrix products per distinct view and chunk that the
neighbour term cannot do without (the cosines forward; d/dq and d/dkeys backward), on the same
batches and shapes, so "× LightGCN" of that row is the floor no chunking goes below.

Per step: the trainer's BPR batches of epoch 0 (batch 2048), each a full step (loss, zero_grad,
backward, Adam step); LightGCN and the DA-MRS variants alternate batch by batch (who goes
first rotates), so a loaded machine slows them alike. s/epoch = median step × batches per epoch.
Peak memory is measured apart, in a child process per variant: the process's peak RSS (ru_maxrss:
mostly loading Sports and building graphs) and the peak of its two steps above the RSS before them
(VmHWM, reset through /proc/self/clear_refs).

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
from models.damrs import DAMRS, ROW_CHUNK  # noqa: E402
from models.registry import make_model  # noqa: E402
from models.training.trainer import BPRSampler  # noqa: E402

BEFORE = "28de690"  # the last commit with the unchunked neighbour term
CHUNKED = "43d2103"  # the last commit with the chunked term of two exps per chunk and the eight-log KL
COMMITS = {"damrs_before": BEFORE, "damrs_chunked": CHUNKED}
VARIANTS = ["lightgcn", "damrs", "gemm_floor", "damrs_chunked", "damrs_before"]
REPO = Path(__file__).resolve().parents[2]


def module_at(name: str) -> object:
    """models/damrs.py as it was at COMMITS[name], imported as module `name`."""
    src = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{COMMITS[name]}:models/damrs.py"], capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


class GemmFloor(torch.nn.Module):
    """The neighbour term's matrix products alone: per distinct view and ROW_CHUNK of the batch's items,
    e = q kᵀ (forward), e k and eᵀ q (backward); nothing else (no exp, ranking, graph or BPR)."""

    def __init__(self, damrs: DAMRS) -> None:
        super().__init__()
        self.chunk, self.n_items, d = ROW_CHUNK, damrs.n_items, damrs.cfg.embedding_dim
        self.views = 2 if damrs.s_t is damrs.s_v else 3  # damrs computes a view used as t and v once
        self.keys = torch.nn.functional.normalize(torch.randn(self.n_items, d), dim=1)
        self.unused = torch.nn.Parameter(torch.zeros(1))  # the optimizer's step needs a parameter

    def batch_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        q = self.keys[torch.unique(torch.cat([pos, neg]))]
        e = q.new_empty(min(self.chunk, len(q)), self.n_items)
        gk = torch.zeros_like(self.keys)
        with torch.no_grad():
            for _ in range(self.views):
                for s in range(0, len(q), self.chunk):
                    qc = q[s : s + self.chunk]
                    w = torch.mm(qc, self.keys.T, out=e[: len(qc)])
                    torch.mm(w, self.keys)
                    gk.addmm_(w.T, qc)
        return {"loss": self.unused.sum()}


def models(graph: object, which: list[str]) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    out: dict[str, torch.nn.Module] = {}
    for name in which:
        if name == "gemm_floor":
            out[name] = GemmFloor(out.get("damrs") or make_model("damrs", graph))  # type: ignore[arg-type]
        elif name in ("lightgcn", "damrs"):
            out[name] = make_model(name, graph)  # the original defaults
        else:
            mod = module_at(name)
            out[name] = mod.DAMRS(graph, mod.DAMRSConfig())  # type: ignore[attr-defined]
    return out


def step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: torch.Tensor) -> float:
    t0 = time.perf_counter()
    loss = model.batch_loss(batch[:, 0], batch[:, 1], batch[:, 2])["loss"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def proc_status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MB; NaN where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def reset_peak_rss() -> float:
    """The resident memory now (MB), and the peak (VmHWM) reset to it (Linux: clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return float("nan")
    return proc_status_mb("VmRSS")


def timed(which: list[str], n_batches: int, memory: list | None = None) -> dict[str, float]:
    """s/epoch of each model; with `memory`, [RSS with data and models loaded, peak RSS of the steps] appended."""
    data, graph = sports_graph()
    triples = torch.as_tensor(BPRSampler(data).epoch(0, 0))
    batches = list(torch.split(triples, 2048))
    ms = models(graph, which)
    opts = {n: torch.optim.Adam(m.parameters(), lr=1e-3) for n, m in ms.items()}
    times: dict[str, list[float]] = {n: [] for n in ms}
    if memory is not None:
        memory.append(reset_peak_rss())
    for b in range(n_batches + 1):
        order = which[b % len(which) :] + which[: b % len(which)]
        for n in order:
            t = step(ms[n], opts[n], batches[b])
            if b:  # the first batch warms caches and allocators
                times[n].append(t)
    if memory is not None:
        memory.append(proc_status_mb("VmHWM"))
    return {n: statistics.median(t) * len(batches) for n, t in times.items()}


def peak_rss_mb(name: str) -> tuple[float, float]:
    """Two steps of one variant in a child process: (its peak RSS, the steps' peak above the RSS before them).

    The process's peak is mostly loading Sports and building the graphs (the kNN search); the
    second number is what the training steps themselves add.
    """
    code = (
        f"import sys, resource; sys.argv=['x']; sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r}); "
        f"import benchmarks.speed.bench_damrs_speed as b; mem = []; b.timed([{name!r}], 1, mem); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, mem[1] - mem[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    whole, steps = out.stdout.strip().splitlines()[-1].split()
    return float(whole), float(steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", type=int, default=6, help="timed steps per model, after one warm-up step")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-variant peak-memory runs")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS[1:], default=VARIANTS[1:], help="DA-MRS variants")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    which = ["lightgcn", *args.variants]
    s = timed(which, args.batches)
    rss = {} if args.no_memory else {n: peak_rss_mb(n) for n in which}
    print(
        f"DA-MRS on Sports, {args.threads} thread(s), median of {args.batches} steps × batches per epoch; "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print("| model | s/epoch | × LightGCN | peak RSS MB (process) | steps' peak above it, MB |")
    print("| --- | --- | --- | --- | --- |")
    nan = (float("nan"), float("nan"))
    for n in which:
        whole, steps = rss.get(n, nan)
        print(f"| {n} | {s[n]:.1f} | {s[n] / s['lightgcn']:.1f} | {whole:.0f} | {steps:.0f} |")
    for n in which[2:]:
        if n == "gemm_floor":
            print(f"the GEMMs alone are {s[n] / s['lightgcn']:.1f}× LightGCN; DA-MRS is {s['damrs'] / s[n]:.2f}× them")
        else:
            print(f"DA-MRS now vs {n}: {s[n] / s['damrs']:.2f}× faster")


if __name__ == "__main__":
    main()
