"""Downstream: does a better `mm` make a better recommender? AnchorRec on Gift Cards (issue 15, item 4).

The encoders are the ones benchmarks/accuracy/ica_apparel.py pretrained on the apparel catalog (90% of its
7,580 items; seed 0 of each method), APPLIED to Gift Cards as `--ica-from` does
(models.pretraining.apply.write_applied_feature) — pretrain on a large catalog, encode a small one.
Gift Cards' own features (EfficientNet-Lite0 image, MiniLM text; token tables extracted here with
the same extractors) are the inputs. Arms for `mm`:

    text          mm = the text vector (no fusion at all)
    concat        normalized concatenation of the raw image and text vectors
    pooled ICA    the apparel-pretrained encoder over one pooled vector per modality
    token ICA     the apparel-pretrained encoder over image regions and word pieces

Each arm: AnchorRec, seeds 0..N-1, early stopping on validation Recall@20 (patience 20, cap 100
epochs), test read once at the best validation epoch. Needs the Gift Cards dataset with image and
text features (e.g. `anchorrec pretrain --dataset gift --release 2018 ... --images DIR`, or
benchmarks/accuracy/leaderboard_run.py --dataset gift) and a finished ica_apparel run.

    .venv/bin/python benchmarks/accuracy/ica_downstream_gift.py --home /work/lb-home --apparel-work /work/apparel-work
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common

from features.tokens import extract_tokens  # noqa: E402
from models.pretraining.apply import write_applied_feature  # noqa: E402
from models.pretraining.pretrain import write_concat_feature  # noqa: E402
from models.training.trainer import TrainConfig, train_seeds  # noqa: E402
from store.layout import dataset_paths  # noqa: E402
from store.tables import write_json  # noqa: E402

IMAGE, TEXT = "image-effnet", "text-minilm"
IMAGE_TOK, TEXT_TOK = "image-effnet-tok", "text-minilm-tok"
RESULTS = REPO / "benchmarks" / "results" / "ica_downstream_gift"


def mm_arms(paths, apparel_runs: Path, tag: str) -> dict[str, str]:
    """Arm → the mm feature table of the Gift Cards dataset (written once, reused)."""
    if not paths.feature(IMAGE).exists() or not paths.feature(TEXT).exists():
        sys.exit(
            f"{paths.root}: no {IMAGE} / {TEXT} features; run `anchorrec pretrain --dataset {paths.name} --images DIR` first"
        )
    for spec, modality, name in (("efficientnet-lite0", "image", IMAGE_TOK), ("minilm", "text", TEXT_TOK)):
        if not paths.token_feature(name).exists():
            extract_tokens(paths, spec, modality, name=name)
    arms = {"text": TEXT, "concat": write_concat_feature(paths, IMAGE, TEXT).stem}
    for arm, run, tokens in (
        ("pooled ICA", f"ica-pooled-s0-{tag}", {}),
        ("token ICA", f"ica-token-s0-{tag}", {"image_tokens": IMAGE_TOK, "text_tokens": TEXT_TOK}),
    ):
        name = f"{run}-from-apparel"
        if not paths.feature(name).exists():
            write_applied_feature(paths, apparel_runs / run, IMAGE, TEXT, name=name, **tokens)
        arms[arm] = name
    return arms


def given_arms(paths, pooled: str, token: str) -> dict[str, str]:
    """The arms when the ICA features were written already (by the CLI's `--ica-from`)."""
    missing = [n for n in (IMAGE, TEXT, pooled, token) if not paths.feature(n).exists()]
    if missing:
        sys.exit(
            f"{paths.root}: no feature table {missing}; write them with `anchorrec pretrain --dataset "
            f"{paths.name} --images DIR [--tokens] --ica-from DATASET/RUN`"
        )
    return {
        "text": TEXT,
        "concat": write_concat_feature(paths, IMAGE, TEXT).stem,
        "pooled ICA": pooled,
        "token ICA": token,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", required=True, help="ANCHORREC_HOME holding the gift dataset")
    ap.add_argument("--dataset", default="gift")
    ap.add_argument("--apparel-work", type=Path, default=None, help="ica_apparel's work dir ($ANCHORREC_BENCH_WORK)")
    ap.add_argument(
        "--runs",
        type=Path,
        default=None,
        help="folder holding ica-pooled-s0-<tag> and ica-token-s0-<tag> (default: ica_apparel's runs)",
    )
    ap.add_argument("--apparel-tag", default="e6-d128", help="the apparel runs' suffix: e<epochs>[-d<d_model>]")
    ap.add_argument("--pooled-feature", help="mm of the pooled arm, already written (e.g. by `--ica-from`)")
    ap.add_argument("--token-feature", help="mm of the token arm, already written (e.g. by `--tokens --ica-from`)")
    ap.add_argument("--tag", help="names the runs and the result files (default: --apparel-tag)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--patience", type=int, default=20)
    args = ap.parse_args()
    paths = dataset_paths(args.dataset, args.home)
    tag = args.tag or args.apparel_tag
    if args.pooled_feature and args.token_feature:
        arms = given_arms(paths, args.pooled_feature, args.token_feature)
        source = (
            f"features `{args.pooled_feature}` and `{args.token_feature}` (written by `anchorrec pretrain --ica-from`)"
        )
    elif args.runs is None and args.apparel_work is None:
        ap.error("give --pooled-feature and --token-feature, --apparel-work (ica_apparel's work dir) or --runs")
    else:
        runs = args.runs or args.apparel_work / "ica_apparel" / "home" / "apparel-all-train" / "runs"
        arms = mm_arms(paths, runs, args.apparel_tag)
        source = f"runs `*-s0-{args.apparel_tag}` of {runs} (pretrained on apparel), applied here"
    results = RESULTS if tag == "e6-d128" else RESULTS.with_name(f"{RESULTS.name}_{tag}")
    rows = {}
    for arm, mm in arms.items():
        cfg = TrainConfig(
            model="anchorrec",
            features={"v": IMAGE, "t": TEXT, "mm": mm},
            epochs=args.epochs,
            patience=args.patience,
            run_id=f"dsg-{arm.split()[0]}-{tag}",
        )
        s = train_seeds(paths, cfg, range(args.seeds), progress=False)
        rows[arm] = {"mm": mm, **{k: s[k] for k in ("valid_mean", "valid_std", "test_mean", "test_std", "best_epochs")}}
        print(arm, json.dumps({k: round(v, 4) for k, v in s["test_mean"].items() if k.endswith("@20")}), flush=True)
    lines = [
        "# AnchorRec on Gift Cards with mm from each encoder (pretrained elsewhere, applied with --ica-from)",
        "",
        f"Seeds 0..{args.seeds - 1}; cap {args.epochs} epochs, patience {args.patience} on validation Recall@20; "
        f"encoders: {source}. Command: "
        f"`.venv/bin/python benchmarks/accuracy/ica_downstream_gift.py {' '.join(sys.argv[1:])}`",
        "",
        "| mm | valid R@20 | test R@20 | test N@20 | best epochs |",
        "| --- | --- | --- | --- | --- |",
    ]
    for arm, r in rows.items():
        lines.append(
            f"| {arm} (`{r['mm']}`) | {r['valid_mean']['recall@20']:.4f} ± {r['valid_std']['recall@20']:.4f} | "
            f"{r['test_mean']['recall@20']:.4f} ± {r['test_std']['recall@20']:.4f} | "
            f"{r['test_mean']['ndcg@20']:.4f} ± {r['test_std']['ndcg@20']:.4f} | {r['best_epochs']} |"
        )
    results.with_suffix(".md").write_text("\n".join(lines) + "\n")
    write_json(rows, results.with_suffix(".json"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
