"""Training speed: our AnchorRec vs the same model computed the reference's way, in one process.

Both implementations hold the same parameters (one state_dict) and give the same loss (checked
on the first batch); only the per-batch computation differs (see benchmarks/reference_structure.py).
The batches are the trainer's (models.train.BPRSampler, epoch 0, batch 2048) and each step is
the trainer's: loss, zero_grad, backward, Adam step. The two run interleaved batch by batch so
that a busy machine slows both alike; the epoch time is the median step time × batches per epoch
(with --batches < an epoch: say so when quoting it). Goal: ≥ 5× on CPU.

    .venv/bin/python benchmarks/bench_train_speed.py --batches 12 --threads 1
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reference_structure import ReferenceStructureAnchorRec  # noqa: E402
from sports_data import sports_graph  # noqa: E402

from models.anchorrec import AnchorRec, AnchorRecConfig  # noqa: E402
from models.train import BPRSampler  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "train_speed.md"
SPORTS_ARGS = dict(aal_loss=0.01, amp_loss=0.01, tau=0.25, n_layers=1, lambda_weight=1e-3, recover_lambda=0.0005)


def step(model, opt, b) -> tuple[float, dict[str, float]]:
    t0 = time.perf_counter()
    terms = model.batch_loss(b[:, 0], b[:, 1], b[:, 2])
    opt.zero_grad(set_to_none=True)
    terms["loss"].backward()
    opt.step()
    vals = {k: float(v.detach()) for k, v in terms.items()}
    if b.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, vals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=12, help="timed batches per implementation (0: a whole epoch)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--finetune-features", action="store_true")
    ap.add_argument("--device", default=None)
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    data, graph = sports_graph(device=args.device)
    cfg = AnchorRecConfig(**SPORTS_ARGS, finetune_features=args.finetune_features)
    torch.manual_seed(0)
    ours = AnchorRec(graph, cfg).to(graph.device)
    ref = ReferenceStructureAnchorRec(graph, cfg).to(graph.device)
    ref.load_state_dict(ours.state_dict())
    # the trainer's optimizer (models/train.py: fused Adam), the same for both
    opts = {name: torch.optim.Adam(m.parameters(), lr=1e-3, fused=True) for name, m in (("ours", ours), ("ref", ref))}
    models = {"ours": ours, "ref": ref}

    triples = torch.as_tensor(BPRSampler(data).epoch(0, 0), device=graph.device)
    per_epoch = math.ceil(len(triples) / 2048)
    n = per_epoch if args.batches <= 0 else min(args.batches, per_epoch - 1)
    times: dict[str, list[float]] = {"ours": [], "ref": []}
    first: dict[str, dict[str, float]] = {}
    for k in range(n + 1):  # batch 0 is warm-up (and the equality check), not timed
        b = triples[k * 2048 : (k + 1) * 2048]
        for name in ("ours", "ref"):
            t, vals = step(models[name], opts[name], b)
            if k == 0:
                first[name] = vals
            else:
                times[name].append(t)
        print(f"batch {k}: ours {times['ours'][-1] if k else 0:.2f}s ref {times['ref'][-1] if k else 0:.2f}s", flush=True)
    worst = max(abs(first["ours"][key] - first["ref"][key]) / max(abs(first["ref"][key]), 1e-12) for key in first["ref"])

    med = {k: statistics.median(v) for k, v in times.items()}
    epoch = {k: v * per_epoch for k, v in med.items()}
    ratio = med["ref"] / med["ours"]
    cmd = "ANCHORREC_BENCH_WORK=/tmp/anchorrec_work .venv/bin/python " + " ".join(["benchmarks/bench_train_speed.py", *sys.argv[1:]])
    scaled = "" if n == per_epoch else f" (median of {n} interleaved batches × {per_epoch} batches per epoch)"
    lines = [
        "# Training speed: AnchorRec, ours vs the reference's per-batch structure",
        "",
        "- date: 2026-11-24",
        f"- machine: 2-core x86_64 CPU, 24 GB, no GPU, shared with other jobs; torch threads {torch.get_num_threads()}, device {graph.device}",
        f"- command: `{cmd}`",
        f"- data: MMRec Sports ({data.n_users} users, {data.n_items} items, {len(data.train)} train pairs), MiniLM keyword "
        f"vectors as t, v, mm; model args `{SPORTS_ARGS}`, finetune_features={args.finetune_features}; batch 2048, fused Adam (as models/train.py)",
        f"- same parameters in both; first-batch loss terms agree to a relative {worst:.1e}",
        "",
        "| implementation | median s / batch | s / epoch" + scaled + " |",
        "| --- | --- | --- |",
        f"| reference structure (full forward + all-item projections per batch) | {med['ref']:.3f} | {epoch['ref']:.0f} |",
        f"| ours (models/anchorrec.py) | {med['ours']:.3f} | {epoch['ours']:.0f} |",
        f"| speed-up | {ratio:.2f}× | |",
        "",
        f"Goal ≥ 5× on CPU: {'reached' if ratio >= 5 else 'NOT reached'} (measured {ratio:.2f}×).",
        "",
    ]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
