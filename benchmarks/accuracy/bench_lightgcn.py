"""LightGCN on the MMRec Sports and Baby sets against the MMRec leaderboard (Recall@20).

    .venv/bin/python benchmarks/accuracy/bench_lightgcn.py --datasets baby sports --home /tmp/bench_home

Imports ../shared/data/mmrec-<name> with pipelines.mmrec.import_mmrec when the dataset is not in
--home yet, trains with the project trainer (selection on validation), and prints test Recall@20
and NDCG@20 against the leaderboard with wall and CPU seconds per epoch and per evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common

from models.training.trainer import TrainConfig, train  # noqa: E402
from store.layout import dataset_paths  # noqa: E402

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
LEADERBOARD = {"sports": {"recall@20": 0.0864}, "baby": {"recall@20": 0.0754}}  # MMRec toolbox leaderboard


def ensure_dataset(name: str, home: Path):
    paths = dataset_paths(f"mmrec-{name}", home)
    if not paths.interactions.exists():
        from pipelines.mmrec import import_mmrec

        import_mmrec(SHARED / f"mmrec-{name}", f"mmrec-{name}", home=home, progress=False)
    return paths


def speed_ratio(paths, batches: int = 20) -> dict:
    """CPU seconds per training batch: this LightGCN vs MMRec's structure (full COO forward per batch)."""
    import torch.nn.functional as F

    from models.registry import make_model
    from models.training.trainer import BPRSampler, prepare

    data, graph = prepare(paths, TrainConfig(model="lightgcn"))
    triples = torch.as_tensor(BPRSampler(data).epoch(0, 0))[: batches * 2048]
    torch.manual_seed(0)
    model = make_model("lightgcn", graph)

    def ours(b):
        return model.batch_loss(b[:, 0], b[:, 1], b[:, 2])["loss"]

    def reference(b):  # every batch: full propagation with torch.sparse.mm on COO, then gather
        ego = torch.cat([model.user_emb.weight, model.item_emb.weight])
        outs, x = [ego], ego
        for _ in range(model.cfg.n_layers):
            x = torch.sparse.mm(graph.adj, x)
            outs.append(x)
        e = torch.stack(outs, 1).mean(1)
        u, i = e[: data.n_users], e[data.n_users :]
        uu, p, n = u[b[:, 0]], i[b[:, 1]], i[b[:, 2]]
        bpr = -F.logsigmoid((uu * p).sum(1) - (uu * n).sum(1)).mean()
        reg = sum(t.pow(2).sum() for t in (model.user_emb(b[:, 0]), model.item_emb(b[:, 1]), model.item_emb(b[:, 2])))
        return bpr + 1e-4 * 0.5 * reg / len(b)

    out = {}
    for name, fn in (("reference", reference), ("ours", ours), ("reference_again", reference), ("ours_again", ours)):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        c = time.process_time()
        for start in range(0, len(triples), 2048):
            loss = fn(triples[start : start + 2048])
            opt.zero_grad()
            loss.backward()
            opt.step()
        out[name] = (time.process_time() - c) / batches
    ref = min(out["reference"], out["reference_again"])
    mine = min(out["ours"], out["ours_again"])
    return {
        "cpu_s_per_batch_reference": round(ref, 4),
        "cpu_s_per_batch_ours": round(mine, 4),
        "speedup": round(ref / mine, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["baby", "sports"], choices=sorted(LEADERBOARD))
    ap.add_argument("--home", type=Path, default=Path("/tmp/bench_home"))
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--reg", type=float, default=1e-4)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--patience", type=int, default=20)
    ap.add_argument("--eval-every", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--tag", default="bench")
    ap.add_argument("--speed", action="store_true", help="only compare per-batch CPU time with MMRec's structure")
    ap.add_argument("--out", type=Path, default=None, help="append the result lines (JSON) here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.speed:
        for name in args.datasets:
            print(
                json.dumps(
                    {
                        "dataset": name,
                        "threads": torch.get_num_threads(),
                        **speed_ratio(ensure_dataset(name, args.home)),
                    }
                )
            )
        return
    for name in args.datasets:
        paths = ensure_dataset(name, args.home)
        cfg = TrainConfig(
            model="lightgcn",
            model_args={"reg_weight": args.reg, "n_layers": args.layers},
            lr=args.lr,
            lr_decay=1.0,  # MMRec's LightGCN runs use no decay
            epochs=args.epochs,
            patience=args.patience,
            eval_every=args.eval_every,
            seed=args.seed,
            run_id=f"lightgcn-{args.tag}-lr{args.lr:g}-reg{args.reg:g}-l{args.layers}-s{args.seed}",
        )
        t0 = time.perf_counter()
        m = train(paths, cfg, progress=True)
        ref = LEADERBOARD[name]
        t = m["timings"]
        row = {
            "dataset": name,
            "run_id": cfg.run_id,
            "lr": args.lr,
            "reg": args.reg,
            "layers": args.layers,
            "best_epoch": m["best_epoch"],
            "epochs_run": m["epochs_run"],
            "valid_recall@20": round(m["valid"]["recall@20"], 4),
            "test_recall@20": round(m["test"]["recall@20"], 4),
            "test_ndcg@20": round(m["test"]["ndcg@20"], 4),
            "leaderboard_recall@20": ref["recall@20"],
            "ratio_to_leaderboard": round(m["test"]["recall@20"] / ref["recall@20"], 3),
            "within_5pct": abs(m["test"]["recall@20"] / ref["recall@20"] - 1) <= 0.05,
            "train_s_per_epoch": round(t["train_s_per_epoch"], 2),
            "train_cpu_s_per_epoch": round(t["train_cpu_s_per_epoch"], 2),
            "eval_s_per_eval": round(t["eval_s_per_eval"], 2),
            "eval_cpu_s_per_eval": round(t["eval_cpu_s_per_eval"], 2),
            "threads": torch.get_num_threads(),
            "total_s": round(time.perf_counter() - t0, 1),
        }
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
