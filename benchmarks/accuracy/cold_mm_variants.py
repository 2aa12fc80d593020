"""Does the inter-content encoder pay off on new items? AnchorRec's cold column per `mm` (issue 33).

On the item-cold copy of Gift Cards (`cold_leaderboard_run.py` makes it: `<D>-cold`), AnchorRec at the
configuration its main leaderboard chose is trained with each `mm` and scored on the three test
divisions (cold: among the cold test items; warm; all):

    pooled ICA    the dataset's own encoder over one pooled vector per modality (the leaderboard's mm)
    token ICA     the encoder over image regions and word pieces (`anchorrec pretrain --tokens`)
    concat        normalized concatenation of the raw image and text vectors (no encoder)
    text          mm = the text vector (no fusion at all)

Both encoders are pretrained here on the warm items only (the cold items are encoded, never trained
on). The apparel-pretrained encoders of ica_downstream_gift.py (`--ica-from`) are not used: they
need ica_apparel.py's runs, hours on 2 cores.

    .venv/bin/python benchmarks/accuracy/cold_mm_variants.py --home /work/lb-home-gift \
        --out benchmarks/results/cold_mm_gift
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common

from benchmarks.accuracy.leaderboard_run import FEATURES, anchorrec  # noqa: E402
from models.evaluation.leaderboard import borrowed_configs  # noqa: E402
from models.evaluation.metrics import paired_over_seeds  # noqa: E402
from models.pretraining.pretrain import write_concat_feature  # noqa: E402
from models.training.trainer import fit_runs, seed_configs  # noqa: E402
from store.layout import DatasetPaths, dataset_paths  # noqa: E402
from store.tables import read_json, write_json  # noqa: E402

IMAGE, TEXT = "image-effnet", "text-minilm"
CELLS = (("cold", "ndcg@20"), ("cold", "recall@10"), ("all", "recall@20"), ("warm", "recall@20"))


def token_ica(paths: DatasetPaths) -> str:
    """The dataset's ICA table pretrained over token tables (one)."""
    runs = [
        r.name
        for r in sorted(paths.runs_dir.glob("ica-*"))
        if paths.feature(r.name).exists() and read_json(r / "config.json").get("image_tokens")
    ]
    if len(runs) != 1:
        sys.exit(f"{paths.runs_dir}: {len(runs)} token ICA runs ({runs}); expected one")
    return runs[0]


def arms(paths: DatasetPaths, pooled: str) -> dict[str, str]:
    return {
        "pooled ICA": pooled,
        "token ICA": token_ica(paths),
        "concat": write_concat_feature(paths, IMAGE, TEXT).stem,
        "text": TEXT,
    }


def cell(runs: list[dict], division: str, key: str) -> np.ndarray:
    return np.array([r["test_divisions"][division][key] for r in runs])


def table(results: dict[str, list[dict]]) -> list[str]:
    """Mean ± std per arm and cell, and each arm paired by seed against pooled ICA."""
    head = " | ".join(f"{d} {k}" for d, k in CELLS)
    lines = [f"| mm | {head} |", "| --- | " + " | ".join("---" for _ in CELLS) + " |"]
    for arm, runs in results.items():
        cells = [f"{cell(runs, d, k).mean():.4f} ± {cell(runs, d, k).std(ddof=1):.4f}" for d, k in CELLS]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", "Paired by seed against pooled ICA (mean difference, paired t p):", ""]
    base = results["pooled ICA"]
    for arm, runs in results.items():
        if arm != "pooled ICA":
            diffs = [paired_over_seeds(cell(runs, d, k), cell(base, d, k)) for d, k in CELLS]
            lines.append(
                f"- {arm}: " + "; ".join(f"{d} {k} {x:+.4f} (p {p:.3g})" for (d, k), (x, p) in zip(CELLS, diffs))
            )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="gift", choices=["gift", "demo"])
    ap.add_argument("--home", required=True)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/cold_mm_gift"), help="folder: table.md, runs/")
    args = ap.parse_args()
    source, paths = dataset_paths(args.dataset, args.home), dataset_paths(f"{args.dataset}-cold", args.home)
    anchorrec("pretrain", "--dataset", paths.name, "--home", args.home, *FEATURES[args.dataset], "--tokens")
    cfg, _ = borrowed_configs(paths, source, ["anchorrec"])["anchorrec"]
    results = {}
    for arm, table_name in arms(paths, cfg.features["mm"]).items():
        arm_cfg = dataclasses.replace(cfg, features={**cfg.features, "mm": table_name})
        configs = seed_configs(arm_cfg, f"cold-mm-{arm.replace(' ', '-').lower()}", range(1, args.seeds + 1))
        results[arm] = fit_runs(paths, configs, progress=False)
        print(f"{arm} ({table_name}): done", flush=True)
    lines = [
        f"# AnchorRec's cold column per mm on {paths.name}",
        "",
        f"`{' '.join(sys.argv)}`; seeds 1–{args.seeds}; configuration tuned on {source.name}.",
        "",
        *table(results),
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    write_json({arm: [r["run_id"] for r in runs] for arm, runs in results.items()}, args.out / "runs.json")
    for runs in results.values():  # what the table is computed from: each run's config and metrics
        for r in runs:
            kept = args.out / "runs" / r["run_id"]
            kept.mkdir(parents=True, exist_ok=True)
            for name in ("config.json", "metrics.json", "per_user_cold.npz"):
                if (paths.run(r["run_id"]) / name).exists():
                    shutil.copy(paths.run(r["run_id"]) / name, kept / name)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
