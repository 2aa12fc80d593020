"""Training speed: our AnchorRec vs the same model computed the reference's way, in one process.

Both implementations hold the same parameters (one state_dict) and give the same loss (checked
on the first batch); only the per-batch computation differs (see benchmarks/common/reference_structure.py).
The batches are the trainer's (models.training.trainer.BPRSampler, epoch 0, batch 2048) and each step is a
trainer's: loss, zero_grad, backward, Adam step — ours with models/training/trainer.py's fused Adam, the
reference with its trainer's (MMRec's) plain torch.optim.Adam, and a second reference copy with
fused Adam so the model computation's ratio is shown apart from the optimizer's. They run
interleaved batch by batch (rotating who goes first) so that a busy machine slows all alike; the
epoch time is the median step time × batches per epoch (with --batches < an epoch: say so when
quoting it). Goal: ≥ 5× on CPU.

    .venv/bin/python benchmarks/speed/bench_train_speed.py --batches 0 --threads 2     # one whole epoch, both cores
    .venv/bin/python benchmarks/speed/bench_train_speed.py --batches 30 --threads 1    # quicker, one core
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common

from benchmarks.common.reference_structure import ReferenceStructureAnchorRec  # noqa: E402
from benchmarks.common.report import save_and_show  # noqa: E402
from benchmarks.common.sports_data import sports_graph  # noqa: E402
from models.anchorrec import AnchorRec, AnchorRecConfig  # noqa: E402
from models.training.trainer import BPRSampler  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results" / "train_speed.md"
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
    ap.add_argument("--batches", type=int, default=16, help="timed batches per implementation (0: a whole epoch)")
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
    ref_fused = ReferenceStructureAnchorRec(graph, cfg).to(graph.device)
    ref_fused.load_state_dict(ours.state_dict())
    models = {"ours": ours, "ref": ref, "ref_fused": ref_fused}
    # ours: the trainer's fused Adam (models/training/trainer.py); ref: the reference trainer's (MMRec's)
    # plain torch.optim.Adam; ref_fused: the reference structure with our optimizer, so that
    # ref_fused / ours is the model computation's ratio alone
    opts = {
        "ours": torch.optim.Adam(ours.parameters(), lr=1e-3, fused=True),
        "ref": torch.optim.Adam(ref.parameters(), lr=1e-3),
        "ref_fused": torch.optim.Adam(ref_fused.parameters(), lr=1e-3, fused=True),
    }

    triples = torch.as_tensor(BPRSampler(data).epoch(0, 0), device=graph.device)
    per_epoch = math.ceil(len(triples) / 2048)
    n = per_epoch if args.batches <= 0 else min(args.batches, per_epoch - 1)
    times: dict[str, list[float]] = {name: [] for name in models}
    first: dict[str, dict[str, float]] = {}
    order = list(models)
    for k in range(n + 1):  # batch 0 is warm-up (and the equality check), not timed
        b = triples[k * 2048 : (k + 1) * 2048]
        for name in order[k % 3 :] + order[: k % 3]:  # rotate who goes first: no fixed position
            t, vals = step(models[name], opts[name], b)
            if k == 0:
                first[name] = vals
            else:
                times[name].append(t)
        if k:
            print(f"batch {k}: " + " ".join(f"{name} {times[name][-1]:.2f}s" for name in models), flush=True)
    worst = max(
        abs(first["ours"][key] - first["ref"][key]) / max(abs(first["ref"][key]), 1e-12) for key in first["ref"]
    )
    assert first["ref"] == first["ref_fused"], "the two reference copies must compute the same first batch"

    med = {k: statistics.median(v) for k, v in times.items()}
    epoch = {k: v * per_epoch for k, v in med.items()}
    ratio, model_ratio = med["ref"] / med["ours"], med["ref_fused"] / med["ours"]
    # the spread of the per-batch ratio: batch k of each implementation ran back to back
    per_batch = sorted(r / o for r, o in zip(times["ref"], times["ours"]))
    q1, q3 = per_batch[len(per_batch) // 4], per_batch[(3 * len(per_batch)) // 4]
    cmd = "ANCHORREC_BENCH_WORK=/tmp/anchorrec_work .venv/bin/python " + " ".join(
        ["benchmarks/speed/bench_train_speed.py", *sys.argv[1:]]
    )
    scaled = "" if n == per_epoch else f" (median of {n} interleaved batches × {per_epoch} batches per epoch)"
    lines = [
        "# Training speed: AnchorRec, our trainer vs the reference's per-batch structure",
        "",
        f"- date: {time.strftime('%Y-%m-%d')}",
        f"- machine: 2-core x86_64 CPU, 24 GB, no GPU; torch threads {torch.get_num_threads()}, device {graph.device}",
        f"- command: `{cmd}`",
        f"- data: MMRec Sports ({data.n_users} users, {data.n_items} items, {len(data.train)} train pairs), MiniLM keyword "
        f"vectors as t, v, mm; model args `{SPORTS_ARGS}`, finetune_features={args.finetune_features}; batch 2048",
        f"- same parameters in all three; first-batch loss terms agree to a relative {worst:.1e}",
        "",
        "| implementation | optimizer | median s / batch | s / epoch" + scaled + " |",
        "| --- | --- | --- | --- |",
        "| reference structure (full forward + all-item projections per batch) | torch.optim.Adam (the reference "
        f"trainer's) | {med['ref']:.3f} | {epoch['ref']:.0f} |",
        f"| reference structure, our optimizer | fused Adam | {med['ref_fused']:.3f} | {epoch['ref_fused']:.0f} |",
        f"| ours (models/anchorrec.py + models/training/trainer.py) | fused Adam | {med['ours']:.3f} | {epoch['ours']:.0f} |",
        f"| speed-up of the trainer (reference / ours) | | {ratio:.2f}× (per-batch quartiles {q1:.2f}–{q3:.2f}) | |",
        f"| speed-up of the model computation alone (same optimizer) | | {model_ratio:.2f}× | |",
        "",
        f"Goal ≥ 5× on CPU: {'reached' if ratio >= 5 else 'NOT reached'} (measured {ratio:.2f}×).",
        "",
    ]
    save_and_show(args.results, lines)


if __name__ == "__main__":
    main()
