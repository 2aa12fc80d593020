"""The item-cold leaderboard (issue 33): every model at its main leaderboard's tuned configuration,
on a copy of the dataset whose held-out items training never sees, ranked on cold, warm and all.

Steps, through the `anchorrec` CLI like leaderboard_run.py (each cached, so a rerun goes on):
1. `anchorrec ingest --dataset <D>-cold --cold-items F`: the same source, F of its items held out
   with all their interactions (half validation, half test);
2. `anchorrec pretrain`: features, and the ICA encoder pretrained on the warm items only (with the
   main leaderboard's ICA configuration, so the `mm` table is matched by configuration);
3. `anchorrec leaderboard --dataset <D>-cold --configs-from <D>`: each model's configuration from the
   main dataset's studies (which must be in the same home: run leaderboard_run.py first), plus the
   two baselines without hyperparameters (pop, content_knn), on seeds 1..N.

    .venv/bin/python benchmarks/accuracy/cold_leaderboard_run.py --dataset gift --home /work/lb-home-gift \
        --snapshot benchmarks/results/leaderboard_gift_cold

With --snapshot DIR the finished runs' summaries (each minute), the runs in flight (every ten
minutes, DIR/inflight/, not for commit) and the table are kept in DIR, as the main leaderboard keeps
its own; a rerun on a machine that lost its disk continues from them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common

from benchmarks.accuracy.leaderboard_run import FEATURES, INGEST, MODELS, REPO, anchorrec, keep_report  # noqa: E402
from benchmarks.common.run_snapshot import keeper, restore_inflight, restore_runs  # noqa: E402

BASELINES = ["pop", "content_knn"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, choices=sorted(INGEST))
    ap.add_argument("--cold-items", type=float, default=0.2, help="share of items held out as cold")
    ap.add_argument("--models", nargs="+", default=MODELS + BASELINES, choices=MODELS + BASELINES)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=1, help="leaderboard reruns at once (processes)")
    ap.add_argument("--home", default=os.environ.get("ANCHORREC_HOME", str(REPO / "data")))
    ap.add_argument(
        "--table",
        nargs="+",
        default=[],
        metavar="MOD=TABLE",
        help="the main dataset's feature tables to take the studies' choices on (`anchorrec leaderboard --table`)",
    )
    ap.add_argument(
        "--untuned-defaults",
        action="store_true",
        help="a model without a study on the main dataset trains at its defaults (Sports tuned three models)",
    )
    ap.add_argument("--snapshot", type=Path, metavar="DIR", help="keep every finished run's summary and the table here")
    args = ap.parse_args()
    cold = f"{args.dataset}-cold"
    common = ["--dataset", cold, "--home", args.home]
    runs = Path(args.home) / cold / "runs"
    keep = keeper(runs, args.snapshot, "lb-", ("lb-",)) if args.snapshot else (lambda: None)
    if args.snapshot:
        restore_runs(runs, args.snapshot)
        restore_inflight(runs, args.snapshot)  # runs in flight when an earlier machine went (their copies)
    anchorrec("ingest", *common, *INGEST[args.dataset], "--cold-items", str(args.cold_items))
    anchorrec("pretrain", *common, *FEATURES[args.dataset])
    models = [x for m in args.models for x in ("--model", m)] + [x for t in args.table for x in ("--table", t)]
    models += ["--untuned-defaults"] if args.untuned_defaults else []
    anchorrec(
        "leaderboard",
        *common,
        "--configs-from",
        args.dataset,
        *models,
        "--seeds",
        str(args.seeds),
        "--jobs",
        str(args.jobs),
        tick=keep,
    )
    keep_report(argparse.Namespace(home=args.home, dataset=cold, snapshot=args.snapshot), "leaderboard", "report")


if __name__ == "__main__":
    main()
