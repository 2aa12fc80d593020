"""`anchorrec update` against a full pipeline rerun (issue 33, item 5), on MMRec Sports with item text.

    .venv/bin/python benchmarks/speed/bench_update.py                  # the lead's run: 1,000 new items
    .venv/bin/python benchmarks/speed/bench_update.py --subset 3000 --items 150 --epochs 2   # a quick try

Everything runs in this one process's children, on the same machine, one after another:
1. the cold protocol: `ingest --cold-items F` (F = items / catalog) on the whole catalog, then
   `publish`: its run's cold Recall@20 is the protocol's figure, and its cold items are the
   items this benchmark holds out;
2. the first dump (the catalog without those items and their interactions, renumbered as a
   source would be) ingested and published with the same options: the run `update` extends;
3. `anchorrec update --source <whole catalog>` (no retrain): timed, with its peak memory;
4. the baseline, a full pipeline rerun on the whole catalog in a fresh dataset (ingest, encode
   every item, train, publish): timed the same way. Ratio = baseline / update (goal ≥ 20×);
5. checks: every unchanged item's feature row byte-identical before and after the update; the
   new items' cold Recall@20 from the served version's vectors (the protocol's evaluator, the
   same held-out test interactions) beside the protocol's own figure. The two runs train on the
   same interactions with the same seed; the figures are equal when their warm vectors are
   (printed: the largest difference between the two runs' warm item vectors).
Peak memory is each command's maximum resident set size (getrusage of a wrapper's children).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from store.layout import dataset_paths  # noqa: E402
from store.tables import read_json, read_table  # noqa: E402

SPORTS = Path(os.environ.get("ANCHORREC_SPORTS_DIR", REPO.parent / "shared" / "data" / "mmrec-sports"))
GOAL = 20.0
WRAP = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[1:]).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    return rows[0], rows[1:]


def write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def write_source(src: Path, out: Path, keep_items: set[str] | None, subset: int) -> None:
    """An MMRec directory of `src` (its first `subset` items, 0 = all) without the items not in
    `keep_items`, items and users renumbered 0..n-1 in their original order as a newer source's
    own numbering would be; users with no interaction left stay (the protocol keeps them too)."""
    out.mkdir(parents=True, exist_ok=True)
    ih, items = read_tsv(src / "i_id_mapping.tsv")
    items = [r for r in items if not subset or int(r[1]) < subset]
    kept = [r for r in sorted(items, key=lambda r: int(r[1])) if keep_items is None or r[0] in keep_items]
    new_item = {r[1]: str(i) for i, r in enumerate(kept)}
    write_tsv(out / "i_id_mapping.tsv", ih, [[r[0], new_item[r[1]]] for r in kept])
    th, texts = read_tsv(src / "item_text.tsv")
    write_tsv(out / "item_text.tsv", th, [[new_item[r[0]], *r[1:]] for r in texts if r[0] in new_item])
    sh, inter = read_tsv(src / "sports.inter")
    all_items = {r[1] for r in items}
    users = sorted({int(r[0]) for r in inter if r[1] in all_items})  # the subset's users (all of them: kept)
    new_user = {str(u): str(i) for i, u in enumerate(users)}
    write_tsv(out / "sports.inter", sh, [[new_user[r[0]], new_item[r[1]], *r[2:]] for r in inter if r[1] in new_item])
    uh, umap = read_tsv(src / "u_id_mapping.tsv")
    write_tsv(out / "u_id_mapping.tsv", uh, [[r[0], new_user[r[1]]] for r in umap if r[1] in new_user])


def anchorrec(env: dict[str, str], *args: str) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one `anchorrec` command."""
    argv = [sys.executable, "-c", WRAP, sys.executable, "-m", "cli", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"anchorrec {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    for ln in lines[:-1]:
        if ": " in ln and "%|" not in ln:
            print("   ", ln[:200])
    return took, int(lines[-1]) / 1024


def feature_rows(paths, table: str) -> dict[str, bytes | None]:
    t = read_table(paths.feature(table), columns=["asin", "vector"])
    return {
        a: None if v is None else np.asarray(v, np.float32).tobytes()
        for a, v in zip(t.column("asin").to_pylist(), t.column("vector").to_pylist())
    }


def served(paths, run: str) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    from store.vectors import read_vectors
    from store.versions import serving

    now = serving(paths, run)
    items = dict(zip(*read_vectors(now.item_vectors, "item_id")[:2]))
    users = dict(zip(*read_vectors(now.user_vectors, "user_id")[:2]))
    return users, items


def newest_run(paths) -> str:
    from store.index import latest_run

    run = latest_run(paths)
    assert run is not None, f"nothing published in {paths.root}"
    return run


def cold_figure(cold_paths, upd_paths, upd_run: str) -> tuple[float, float]:
    """(cold Recall@20 of the update's served vectors, largest |difference| of warm item vectors
    between the two runs), both on the protocol dataset's items, users and held-out interactions."""
    from models.evaluation.cold import evaluate_divisions
    from models.training.data import load_interactions

    full = load_interactions(cold_paths)
    asin_at = dict(
        zip(
            read_table(cold_paths.items, columns=["asin"]).column("asin").to_pylist(),
            range(10**9),
        )
    )
    upd_items = read_table(upd_paths.items, columns=["item_id", "asin"])
    to_cold = {
        i: asin_at[a] for i, a in zip(upd_items.column("item_id").to_pylist(), upd_items.column("asin").to_pylist())
    }
    users, items = served(upd_paths, upd_run)
    dim = len(next(iter(items.values())))
    item_m = np.zeros((full.n_items, dim), np.float32)
    for i, v in items.items():
        item_m[to_cold[i]] = v
    user_m = np.zeros((full.n_users, dim), np.float32)
    for u, v in users.items():  # same reviewers, same order: the same user ids
        user_m[u] = v
    warm = np.setdiff1d(np.arange(full.n_items), full.cold_items)
    divisions, _ = evaluate_divisions(user_m, item_m, item_m[warm], full, [20])
    cold_run = newest_run(cold_paths)
    _, cold_items = served(cold_paths, cold_run)
    diff = max(float(np.abs(cold_items[int(i)] - item_m[int(i)]).max()) for i in warm)
    return float(divisions["cold"]["recall@20"]), diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=1000, help="items held out of the first ingest, added by update")
    ap.add_argument("--subset", type=int, default=0, help="only the first N items of Sports (0: all 18,357)")
    ap.add_argument("--model", default="freedom")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/anchorrec_bench_update"))
    ap.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    args = ap.parse_args()
    if (args.work / "home").exists():
        sys.exit(f"{args.work}/home exists: remove it (each run starts from an empty home)")
    home = args.work / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(ANCHORREC_HOME=str(home), PREFECT_HOME=str(args.work / "prefect"), HF_HUB_OFFLINE="1")
    train = ["--model", args.model, "--epochs", str(args.epochs), "--seed", str(args.seed), "--pretrain-epochs", "0"]
    train += ["--image-encoder", "none"]  # MMRec Sports has text only

    whole = args.work / "whole"
    write_source(SPORTS, whole, None, args.subset)
    n_items = len(read_tsv(whole / "i_id_mapping.tsv")[1])
    fraction = args.items / n_items
    print(
        f"Sports: {n_items} items; {args.items} held out (cold fraction {fraction:.6f}); {args.model}, {args.epochs} epochs"
    )

    print("1. cold protocol run (ingest --cold-items, publish)")
    anchorrec(
        env,
        "ingest",
        "--dataset",
        "cold",
        "--release",
        "mmrec",
        "--source",
        str(whole),
        "--cold-items",
        str(fraction),
        "--seed",
        str(args.seed),
    )
    anchorrec(env, "publish", "--dataset", "cold", *train)
    cold_paths = dataset_paths("cold", home)
    cold_asins = set(read_table(cold_paths.cold_items, columns=["asin"]).column("asin").to_pylist())
    assert len(cold_asins) == args.items, f"{len(cold_asins)} cold items drawn, wanted {args.items}"
    protocol = json.loads(cold_paths.metrics(newest_run(cold_paths)).read_text())["test_divisions"]["cold"]["recall@20"]

    print("2. first dump without them (ingest, publish)")
    all_asins = {r[0] for r in read_tsv(whole / "i_id_mapping.tsv")[1]}
    first = args.work / "first"
    write_source(whole, first, all_asins - cold_asins, 0)
    anchorrec(env, "ingest", "--dataset", "upd", "--release", "mmrec", "--source", str(first), "--seed", str(args.seed))
    anchorrec(env, "publish", "--dataset", "upd", *train)
    upd = dataset_paths("upd", home)
    run = newest_run(upd)
    table = read_json(upd.run(run) / "config.json")["features"]["t"]
    before = feature_rows(upd, table)

    print("3. anchorrec update (the held-out items arrive)")
    t_update, mem_update = anchorrec(
        env,
        "update",
        "--dataset",
        "upd",
        "--release",
        "mmrec",
        "--source",
        str(whole),
        "--retrain-after",
        "1000",
        *train,
    )
    after = feature_rows(upd, table)
    identical = sum(after[a] == r for a, r in before.items())

    print("4. baseline: the full pipeline on the whole catalog, fresh dataset")
    t_ingest, _ = anchorrec(
        env, "ingest", "--dataset", "rerun", "--release", "mmrec", "--source", str(whole), "--seed", str(args.seed)
    )
    t_publish, mem_full = anchorrec(env, "publish", "--dataset", "rerun", *train)
    t_full = t_ingest + t_publish

    recall, diff = cold_figure(cold_paths, upd, run)
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.node()} ({os.cpu_count()} cores)",
        "items": n_items,
        "held_out": args.items,
        "model": args.model,
        "epochs": args.epochs,
        "update_s": round(t_update, 1),
        "full_pipeline_s": round(t_full, 1),
        "ratio": round(t_full / t_update, 1),
        "goal": GOAL,
        "peak_rss_mib": {"update": round(mem_update), "full_publish": round(mem_full)},
        "unchanged_rows_identical": f"{identical} of {len(before)}",
        "cold_recall@20": {"after_update": round(recall, 5), "protocol": round(protocol, 5)},
        "warm_vectors_max_abs_diff": diff,
    }
    print(json.dumps(result, indent=2))
    print(
        f"update {t_update:.1f} s vs full pipeline {t_full:.1f} s: {t_full / t_update:.1f}x "
        f"({'meets' if t_full / t_update >= GOAL else 'below'} the {GOAL:.0f}x goal); "
        f"unchanged feature rows identical: {identical}/{len(before)}; cold Recall@20 after update {recall:.4f}, "
        f"protocol {protocol:.4f} ({'equal' if abs(recall - protocol) < 1e-6 else 'differ'}; warm vectors differ by "
        f"at most {diff:.2e})"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
