"""Recompute a leaderboard from what its snapshot keeps, and say whether it is the table kept.

A figure nobody can recompute is not a result (issue 34): a leaderboard snapshot
(`leaderboard_run.py --snapshot DIR`) keeps the studies (DIR/studies), every rerun's summary
(DIR/runs: config, metrics, diagnostics, per-user test metrics) and the table (DIR/report). This
script rebuilds the table from those files alone:

1. the dataset is rebuilt in a fresh home from ../shared/data with leaderboard_run.py's own CLI
   steps (ingest and features: deterministic, cached), unless --home already holds it;
2. the studies and the kept runs are restored into it;
3. the leaderboard is run on the kept table's seeds: every run is kept, so nothing is trained
   (checked: no checkpoint may appear);
4. every number of the new leaderboard.json is compared with DIR/report/leaderboard.json; the
   script prints a small table and exits 1 on any difference.

    .venv/bin/python benchmarks/accuracy/recompute_leaderboard.py --dataset gift --snapshot benchmarks/results/leaderboard_gift

An item-cold table (cold_leaderboard_run.py) borrowed its configurations from the main dataset's
studies, which live in the main table's snapshot: give that with --studies, and --cold-items as
the cold dataset was ingested (D-cold is rebuilt with it):

    .venv/bin/python benchmarks/accuracy/recompute_leaderboard.py --dataset gift --cold-items 0.2 \
        --studies benchmarks/results/leaderboard_gift --snapshot benchmarks/results/leaderboard_gift_cold

Feature tables a table was rerun on (`--table`, kept in its leaderboard.json) are used again.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common

from benchmarks.common.run_snapshot import restore_runs, restore_studies  # noqa: E402
from models.evaluation.leaderboard import run_leaderboard  # noqa: E402
from store.layout import DatasetPaths, dataset_paths  # noqa: E402

COMPARED = ("seeds", "baseline", "models", "verdict")  # what the table says; `jobs` and paths are how it ran
TOLERANCE = 1e-12  # relative: the same summaries give the same floats, up to the last bit of a sum


def differences(kept: Any, new: Any, where: str = "") -> list[str]:
    """Paths at which two JSON values differ (floats beyond TOLERANCE relative), first ones first."""
    if isinstance(kept, dict) and isinstance(new, dict):
        out = [f"{where}/{k}: only in {'kept' if k in kept else 'recomputed'}" for k in sorted(set(kept) ^ set(new))]
        return out + [d for k in sorted(set(kept) & set(new)) for d in differences(kept[k], new[k], f"{where}/{k}")]
    if isinstance(kept, list) and isinstance(new, list):
        if len(kept) != len(new):
            return [f"{where}: {len(kept)} entries kept, {len(new)} recomputed"]
        return [d for i, (a, b) in enumerate(zip(kept, new)) for d in differences(a, b, f"{where}[{i}]")]
    if isinstance(kept, float) or isinstance(new, float):
        both_nan = isinstance(kept, float) and isinstance(new, float) and math.isnan(kept) and math.isnan(new)
        if both_nan or (
            isinstance(kept, (int, float))
            and isinstance(new, (int, float))
            and math.isclose(kept, new, rel_tol=TOLERANCE, abs_tol=0.0)
        ):
            return []
    return [] if kept == new else [f"{where}: kept {kept!r}, recomputed {new!r}"]


def report_dir(snapshot: Path, cap: int | None) -> Path:
    """Where the snapshot keeps the table: report/, or report-cap<N>/ for the converged one."""
    return snapshot / ("report" if cap is None else f"report-cap{cap}")


def recompute(
    paths: DatasetPaths,
    snapshot: Path,
    cap: int | None = None,
    source: DatasetPaths | None = None,
    studies: Path | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(kept, recomputed) leaderboard.json from the snapshot's studies and runs, into `paths`.

    With `cap`, the converged table, whose side-by-side section reads the capped table: the kept
    capped table is put where the leaderboard finds it. With `source` (an item-cold table), the
    configurations are `source`'s studies, restored from the snapshot `studies`."""
    kept = json.loads((report_dir(snapshot, cap) / "leaderboard.json").read_text())
    models = list(kept["models"])
    restore_studies((source or paths).root / "tuning", studies or snapshot, models)
    restore_runs(paths.runs_dir, snapshot)
    if cap is not None:
        capped = paths.root / "reports" / "leaderboard"
        capped.mkdir(parents=True, exist_ok=True)
        shutil.copy(snapshot / "report" / "leaderboard.json", capped / "leaderboard.json")
    before = set(paths.runs_dir.glob("*/checkpoint.pt"))
    out = paths.root / "reports" / "recomputed" / "leaderboard.md"
    run_leaderboard(
        paths,
        models,
        seeds=kept["seeds"],
        out=out,
        progress=False,
        log=lambda _: None,
        cap=cap,
        configs_from=source,
        tables=kept.get("tables") or None,
        untuned_defaults=bool(kept.get("untuned_defaults")),
        target_tables=kept_tables(paths.runs_dir) if source else None,
    )
    trained = sorted(p.parent.name for p in set(paths.runs_dir.glob("*/checkpoint.pt")) - before)
    if trained:
        raise RuntimeError(f"runs were trained, not recomputed (their summaries are not in the snapshot): {trained}")
    return kept, json.loads(out.with_suffix(".json").read_text())


def kept_tables(runs: Path) -> dict[str, str]:
    """The feature tables the kept reruns read ({modality: table}): an item-cold table's configurations
    are the main studies' on these, whatever the ICA runs of a rebuilt home are called now."""
    found: dict[str, set[str]] = {}
    for config in runs.glob("lb-*/config.json"):
        for mod, table in (json.loads(config.read_text()).get("features") or {}).items():
            found.setdefault(mod, set()).add(table)
    mixed = {mod: sorted(t) for mod, t in found.items() if len(t) > 1}
    if mixed:
        raise ValueError(f"{runs}: the kept reruns read different tables for one modality: {mixed}")
    return {mod: t.pop() for mod, t in found.items()}


def build(dataset: str, home: Path, cold_items: float | None) -> None:
    """The dataset (and its item-cold copy) in a fresh home, with leaderboard_run.py's own CLI steps."""
    from benchmarks.accuracy import leaderboard_run as lr

    for name, extra in [(dataset, [])] + (
        [(f"{dataset}-cold", ["--cold-items", str(cold_items)])] if cold_items else []
    ):
        common = ["--dataset", name, "--home", str(home)]
        lr.anchorrec("ingest", *common, *lr.INGEST[dataset], *extra)
        lr.anchorrec("pretrain", *common, *lr.FEATURES[dataset])


def table(kept: dict[str, Any], new: dict[str, Any]) -> list[str]:
    lines = ["| model | test R@20 kept | test R@20 recomputed |", "| --- | --- | --- |"]
    for m, row in kept["models"].items():
        got = new["models"].get(m, {})

        def fmt(r):
            return (
                f"{r['test_mean']['recall@20']:.4f} ± {r['test_std']['recall@20']:.4f}"  # noqa: E731
                if r
                else "–"
            )

        lines.append(f"| {m} | {fmt(row)} | {fmt(got)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", required=True, help="gift, demo or sports (leaderboard_run.py's datasets)")
    ap.add_argument("--snapshot", type=Path, required=True, help="the snapshot folder (studies/, runs/, report/)")
    ap.add_argument("--home", type=Path, help="a home that holds the dataset already (default: a fresh one, rebuilt)")
    ap.add_argument("--cap", type=int, help="the converged table of this epoch cap (report-cap<N>/), e.g. 1000")
    ap.add_argument(
        "--cold-items",
        type=float,
        metavar="F",
        help="the item-cold table of the dataset (<dataset>-cold, ingested with --cold-items F)",
    )
    ap.add_argument(
        "--studies", type=Path, help="with --cold-items: the main table's snapshot, whose studies it borrowed"
    )
    args = ap.parse_args(argv)
    if args.cold_items is not None and args.studies is None:
        ap.error("--cold-items needs --studies: the main leaderboard's snapshot (its studies/ folder)")
    where = report_dir(args.snapshot, args.cap)
    if not (where / "leaderboard.json").is_file():
        ap.error(f"{where}: no leaderboard.json; give a leaderboard_run.py --snapshot folder (and --cap as it ran)")
    home = args.home or Path(tempfile.mkdtemp(prefix="recompute-"))
    cold = args.cold_items is not None
    if args.home is None:
        build(args.dataset, home, args.cold_items)
    target = dataset_paths(f"{args.dataset}-cold" if cold else args.dataset, home)
    source = dataset_paths(args.dataset, home) if cold else None
    if not target.interactions.is_file():
        ap.error(f"{home} holds no {target.name} dataset: leave --home out to rebuild it in a fresh one")
    kept, new = recompute(target, args.snapshot, args.cap, source=source, studies=args.studies)
    diff = [d for key in COMPARED for d in differences(kept.get(key), new.get(key), key)]
    print("\n".join(table(kept, new)))
    print(
        f"{len(diff)} difference(s)"
        + (": " + "; ".join(diff[:5]) if diff else ": the kept table is recomputed exactly")
    )
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
