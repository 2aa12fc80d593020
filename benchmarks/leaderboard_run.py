"""The equal-budget leaderboard on one dataset, end to end through the `anchorrec` CLI (issue 17).

Every model gets the same budget: `anchorrec tune --trials T --epochs E --patience P` (TPE,
median pruning, validation Recall@20 only), then `anchorrec leaderboard --seeds S` reruns each
choice on S seeds and writes the table. Every step is resumable — a study continues where a kill
left it, a finished study or run is not trained again — so the same command, run again in a
later session, goes on from where the last one stopped. Datasets:

    gift    Amazon 2018 Gift Cards (real reviews, metadata and 114 real photos: image + text)
    demo    the bundled demo catalog (image + text)
    sports  MMRec Sports, text only (MiniLM of the item text as t = v = mm)

    .venv/bin/python benchmarks/leaderboard_run.py --dataset gift --trials 10 --epochs 100 --patience 20
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
GIFT = DATA / "amazon2018-giftcards"
MODELS = ["lightgcn", "alignrec", "anchorrec", "vbpr", "freedom", "lattice", "bm3", "lgmrec", "smore", "damrs"]
INGEST = {  # `anchorrec ingest` options
    "gift": ["--release", "2018", "--meta", str(GIFT / "meta_Gift_Cards.json.gz"), "--reviews", str(GIFT / "Gift_Cards_5.json.gz")],
    "demo": [],
    "sports": ["--release", "mmrec", "--source", str(DATA / "mmrec-sports")],
}
FEATURES = {  # options of every later command (they extract features and pretrain when not done yet)
    "gift": ["--images", str(GIFT / "images")],
    "demo": [],
    "sports": ["--image-encoder", "none"],
}


def anchorrec(*args: str) -> None:
    """One CLI call, its output streamed; a failure stops the script with the command to rerun."""
    cmd = [str(REPO / ".venv" / "bin" / "anchorrec"), *args]
    print(f"$ anchorrec {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    if subprocess.run(cmd, cwd=REPO).returncode != 0:
        sys.exit(f"failed: anchorrec {' '.join(args)} (rerun this script to continue)")
    print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=sorted(INGEST), required=True)
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--patience", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--home", default=os.environ.get("ANCHORREC_HOME", str(REPO / "data")))
    ap.add_argument("--ica-from", metavar="RUN",
                    help="mm from this finished pretraining run (DATASET/RUN) instead of pretraining here; also "
                         "pins the mm table of studies begun with an earlier run after the pretraining code changed")
    args = ap.parse_args()
    common = ["--dataset", args.dataset, "--home", args.home]
    features = FEATURES[args.dataset] + (["--ica-from", args.ica_from] if args.ica_from else [])
    anchorrec("ingest", *common, *INGEST[args.dataset])  # each step is cached: a rerun skips what is done
    anchorrec("pretrain", *common, *features)
    for model in args.models:
        anchorrec("tune", *common, *features, "--model", model, "--trials", str(args.trials),
                  "--epochs", str(args.epochs), "--patience", str(args.patience))
    models = [x for m in args.models for x in ("--model", m)]
    anchorrec("leaderboard", *common, *models, "--seeds", str(args.seeds))


if __name__ == "__main__":
    main()
