"""What does the ICA encoder's `mm` buy AnchorRec? mm = ICA output vs concatenated raw features vs no mm.

Issue 5's ablation. For each catalog (the demo, and Gift Cards' 147 reviewed items), AnchorRec is
trained with t = MiniLM text and v = EfficientNet-Lite0 image features and three choices of the
mm branch:

- `ica`: mm = the pretrained inter-content encoder's output (features/ica-<run>.parquet);
- `concat`: mm = the normalized concatenation of the raw image and text vectors (write_concat_feature);
- `no-mm`: the model without its mm branch (AnchorRecConfig.mm_branch=False: no recovery, AAL,
  mm AMP or smoothing term).

Each variant runs over several seeds through models.training.trainer.train_seeds; the epoch is selected on
validation Recall@20 only, and test metrics are read at that epoch. The datasets and their
feature tables come from benchmarks/accuracy/bench_ica.py (run it first); they are copied to a fresh
home so these runs do not mix with the pretraining runs.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/accuracy/ablation_ica.py          # → benchmarks/results/ablation_ica.md
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common

from models.pretraining.pretrain import write_concat_feature  # noqa: E402
from models.training.trainer import TrainConfig, train_seeds  # noqa: E402
from store.layout import DatasetPaths, dataset_paths  # noqa: E402

IMAGE, TEXT = "image-effnet", "text-minilm"
MACHINE = "2-core x86_64 CPU, 24 GB, no GPU"
CONCAT = f"concat-{IMAGE}-{TEXT}"


def copy_dataset(src: DatasetPaths, dst: DatasetPaths, ica: str) -> None:
    """Tables and the feature tables the ablation reads, into a fresh home (no runs)."""
    need = [src.interactions, src.items, src.feature(IMAGE), src.feature(TEXT), src.feature(ica)]
    for path in need:
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: missing; run benchmarks/accuracy/bench_ica.py first (it builds the datasets and ICA runs)"
            )
    for path in [*need, src.root / "users.parquet", src.root / "prepare.json"]:
        if path.exists():
            target = dst.root / path.relative_to(src.root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def variants(ica: str) -> dict[str, tuple[dict[str, str], dict]]:
    """name → (features per modality, extra model args)."""
    base = {"v": IMAGE, "t": TEXT}
    return {
        "ica": ({**base, "mm": ica}, {}),
        "concat": ({**base, "mm": CONCAT}, {}),
        "no-mm": (base, {"mm_branch": False}),
    }


def run_catalog(name: str, src: DatasetPaths, home: Path, args: argparse.Namespace) -> dict[str, dict]:
    dst = dataset_paths(name, home)
    copy_dataset(src, dst, args.ica)
    write_concat_feature(dst, IMAGE, TEXT)
    out = {}
    for variant, (features, extra) in variants(args.ica).items():
        cfg = TrainConfig(
            model="anchorrec",
            model_args={"n_layers": args.n_layers, **extra},
            features=features,
            lr=args.lr,
            epochs=args.epochs,
            batch_size=args.batch_size,
            patience=args.patience,
            run_id=f"ablation-{variant}",
        )
        t0 = time.perf_counter()
        summary = train_seeds(dst, cfg, args.seeds, progress=False)
        summary["wall_s"] = time.perf_counter() - t0
        out[variant] = summary
        print(
            f"{name} {variant}: test R@20 {summary['test_mean']['recall@20']:.4f} ± {summary['test_std']['recall@20']:.4f}, "
            f"valid R@20 {summary['valid_mean']['recall@20']:.4f}, epochs {summary['best_epochs']}, {summary['wall_s']:.0f} s",
            flush=True,
        )
    return out


def pm(summary: dict, split: str, key: str) -> str:
    return f"{summary[f'{split}_mean'][key]:.4f} ± {summary[f'{split}_std'][key]:.4f}"


def report(results: dict[str, dict[str, dict]], args: argparse.Namespace, wall: float) -> str:
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/accuracy/ablation_ica.py " + " ".join(sys.argv[1:])
    lines = [
        "# Ablation: AnchorRec's mm branch = ICA output vs concatenated raw features vs none",
        "",
        f"- date: 2026-11-24; machine: {MACHINE} (shared with other jobs); torch threads {torch.get_num_threads()}",
        f"- command: `{cmd.strip()}` (total {wall / 60:.1f} min)",
        f"- t = MiniLM text (`{TEXT}`), v = EfficientNet-Lite0 image (`{IMAGE}`); mm = `{args.ica}` (ICA pretrained by "
        f"benchmarks/accuracy/bench_ica.py) / `{CONCAT}` / no mm branch (`mm_branch=False`)",
        f"- AnchorRec defaults except n_layers={args.n_layers}; lr {args.lr}, batch {args.batch_size}, at most "
        f"{args.epochs} epochs, patience {args.patience}; seeds {args.seeds}; the epoch is selected on validation "
        "Recall@20, test metrics at that epoch; mean ± sample std over seeds",
        "",
    ]
    for name, res in results.items():
        lines += [
            f"## {name}",
            "",
            "| mm | valid Recall@20 | test Recall@20 | test NDCG@20 | selected epochs |",
            "| --- | --- | --- | --- | --- |",
        ]
        for variant, s in res.items():
            lines.append(
                f"| {variant} | {pm(s, 'valid', 'recall@20')} | {pm(s, 'test', 'recall@20')} | "
                f"{pm(s, 'test', 'ndcg@20')} | {s['best_epochs']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--source", type=Path, default=REPO / "bench-out" / "ica", help="home holding the bench_ica datasets"
    )
    ap.add_argument("--home", type=Path, default=REPO / "bench-out" / "ablation", help="fresh home for these runs")
    ap.add_argument("--catalogs", nargs="+", default=["demo", "giftcards"])
    ap.add_argument("--ica", default="ica-bench-s0-e30", help="the ICA feature table used as mm")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--patience", type=int, default=15)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--n-layers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ablation_ica.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.home.exists():
        shutil.rmtree(args.home)  # runs resume by id: a fresh home keeps an old run from being reused
    t0 = time.perf_counter()
    results = {}
    for name in args.catalogs:
        results[name] = run_catalog(name, dataset_paths(name, args.source), args.home, args)
        text = report(results, args, time.perf_counter() - t0)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)  # after each catalog: a crash keeps what is done
    print(text)


if __name__ == "__main__":
    main()
