"""Benchmark of the embedding store, in one run.

Part 1 — SQL vs FAISS: throughput of the SQL `topn` function over all users (one query,
`SELECT user_id, topn(vector, 10) FROM user_vectors`) against FAISS called directly on the same
user matrix and the same published index (goal: SQL ≥ 80% of direct). `recommend` (training items
excluded) is measured the same way against `ItemIndex.search` with the same exclusions.

Part 2 — HNSW vs exact on n × 64 item vectors (default n = 10^6): build time, QPS, recall@10
against exact search, over a sweep of ef_search (goal: recall@10 ≥ 0.98 at ≥ 20× exact QPS).

Synthetic vectors: low-rank factors plus noise with log-normal norms, like the output of a
matrix-factorisation model (i.i.d. Gaussian vectors would be the unrealistic worst case for any
graph index). Timings are noisy on a shared machine, so every figure is a ratio against a
baseline measured in the same process; each timing is the best of `--repeat` runs.

    python benchmarks/speed/bench_store.py                 # full: 20,000 users, 10^6 items
    python benchmarks/speed/bench_store.py --n 100000      # smaller HNSW part
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common

from store import DatasetPaths, schemas  # noqa: E402
from store.index import IndexConfig, build_index, load_index, publish  # noqa: E402
from store.sql import connect  # noqa: E402
from store.tables import write_table  # noqa: E402
from store.vectors import write_vectors  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results" / "store.md"


def synthetic(rng: np.random.Generator, n: int, d: int, basis: np.ndarray) -> np.ndarray:
    """Vectors in a low-rank subspace plus noise, with varying norms (popularity)."""
    rank = basis.shape[0]
    x = rng.standard_normal((n, rank)).astype(np.float32) @ basis
    x += 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x *= rng.lognormal(0.0, 0.25, size=(n, 1)).astype(np.float32)
    return x.astype(np.float32)


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def best_of_interleaved(repeat: int, *fns) -> list[float]:
    """Best time of each function, run alternately so a burst of load from other jobs hits all."""
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            start = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - start)
    return [min(ts) for ts in times]


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -------------------------------------------------------------------------------- part 1: SQL


def make_dataset(root: Path, users: int, items: int, d: int, per_user: int, seed: int) -> DatasetPaths:
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((16, d)).astype(np.float32)
    paths = DatasetPaths(root / "bench")
    write_vectors(paths.user_vectors("bench"), "user_id", np.arange(users), synthetic(rng, users, d, basis))
    write_vectors(paths.item_vectors("bench"), "item_id", np.arange(items), synthetic(rng, items, d, basis))
    n = users * per_user
    write_table(
        pa.table(
            {
                "user_id": pa.array(np.repeat(np.arange(users), per_user), pa.int32()),
                "item_id": pa.array(rng.integers(0, items, n), pa.int32()),
                "rating": pa.nulls(n, pa.float32()),
                "timestamp": pa.array(np.arange(n), pa.int64()),
                "split": pa.array(["train"] * n),
            }
        ),
        paths.interactions,
        schemas.INTERACTIONS,
    )
    publish(paths, "bench", kind="flat")
    return paths


def bench_sql(args: argparse.Namespace, root: Path) -> tuple[str, float]:
    paths = make_dataset(root, args.users, args.items, args.dim, args.per_user, args.seed)
    index = load_index(paths, "bench")
    from store.vectors import read_vectors

    user_ids, user_matrix, _ = read_vectors(paths.user_vectors("bench"), "user_id")
    con = connect(paths, "bench")
    k = 10
    # warm-up: loads the index, the user vectors and the training items once
    con.sql("SELECT user_id, recommend(user_id, 10) FROM user_vectors LIMIT 10").fetchall()

    def direct_topn() -> None:
        index.index.search(user_matrix, k)

    def sql_topn() -> None:
        out = con.sql(f"SELECT user_id, topn(vector, {k}) AS r FROM user_vectors").to_arrow_table()
        assert out.num_rows == args.users

    train_users = con.sql("SELECT user_id, item_id FROM interactions WHERE split = 'train'").fetchnumpy()

    order = np.argsort(train_users["user_id"], kind="stable")
    u, it = train_users["user_id"][order], train_users["item_id"][order].astype(np.int64)
    starts, ends = np.searchsorted(u, user_ids), np.searchsorted(u, user_ids, side="right")
    exclude = [it[s:e] for s, e in zip(starts, ends)]  # prepared once: the baseline is the search

    def direct_recommend() -> None:
        index.search(user_matrix, k, exclude)

    def sql_recommend() -> None:
        out = con.sql(f"SELECT user_id, recommend(user_id, {k}) AS r FROM users_all").to_arrow_table()
        assert out.num_rows == args.users

    con.execute("CREATE TEMP VIEW users_all AS SELECT user_id FROM user_vectors")
    # same answers before timing anything
    sql_ids = con.sql(f"SELECT user_id, topn(vector, {k}) AS r FROM user_vectors ORDER BY user_id").to_arrow_table()
    _, direct_ids = index.index.search(user_matrix, k)
    got = np.array([[e["item_id"] for e in row] for row in sql_ids.column("r").to_pylist()])
    same = float((got == direct_ids[np.argsort(user_ids)]).mean())

    rows, ratios = [], {}
    for name, direct, sql in (
        ("topn", direct_topn, sql_topn),
        ("recommend (train excluded)", direct_recommend, sql_recommend),
    ):
        t_direct, t_sql = best_of_interleaved(args.sql_repeat, direct, sql)
        ratios[name] = t_direct / t_sql
        rows.append(
            [name, f"{args.users / t_direct:,.0f}", f"{args.users / t_sql:,.0f}", f"{100 * t_direct / t_sql:.0f}%"]
        )
    con.close()
    text = (
        f"{args.users:,} users × {args.items:,} items × d={args.dim}, exact index (IndexFlatIP), k={k}, "
        f"{args.per_user} training items per user; SQL and direct answers identical on {100 * same:.1f}% of slots.\n\n"
        + table(["function", "direct FAISS users/s", "SQL users/s", "SQL / direct"], rows)
        + "\n\n"
        + bench_verified_reads(paths, args.sql_repeat)
    )
    return text, ratios["topn"]


def bench_verified_reads(paths: DatasetPaths, repeat: int) -> str:
    """What verifying the files a query names costs (`run_query`, a connection per query as the CLI
    makes): a first query checks them in full, a repeated one finds the verdicts cached per file
    identity. Baseline: the same query with the verdicts cleared."""
    from store import records, verify
    from store import vectors as store_vectors
    from store.sql import run_query

    query = "SELECT count(*) AS n FROM user_vectors JOIN interactions USING (user_id)"
    time.sleep(records.RACY_S + 0.1)  # files written just now get no cached verdict (clock-tick races)

    def cold() -> None:
        for cache in (verify._VERDICTS, records._SHA, store_vectors._VERIFIED):
            cache.clear()
        run_query(paths, query, "bench")

    def warm() -> None:
        run_query(paths, query, "bench")

    warm()
    t_cold, t_warm = best_of_interleaved(repeat, cold, warm)
    return (
        f"Verified reads: `{query}` through `run_query` (a new connection each time): verdicts cleared "
        f"{1000 * t_cold:.0f} ms, cached {1000 * t_warm:.0f} ms ({t_cold / t_warm:.1f}× faster when repeated)."
    )


# ------------------------------------------------------------------------------- part 2: HNSW


def bench_hnsw(args: argparse.Namespace) -> tuple[str, bool]:
    rng = np.random.default_rng(args.seed + 1)
    basis = rng.standard_normal((16, args.dim)).astype(np.float32)
    items = synthetic(rng, args.n, args.dim, basis)
    queries = synthetic(rng, args.queries, args.dim, basis)
    ids = np.arange(args.n, dtype=np.int64)
    config = IndexConfig(kind="hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction)

    start = time.perf_counter()
    flat = build_index(items, ids, "flat", config)
    t_flat_build = time.perf_counter() - start
    print(f"exact index built in {t_flat_build:.2f}s; building HNSW on {args.n:,} × {args.dim} …", flush=True)
    start = time.perf_counter()
    hnsw = build_index(items, ids, "hnsw", config)
    t_hnsw_build = time.perf_counter() - start
    print(f"HNSW built in {t_hnsw_build:.1f}s", flush=True)

    k = 10
    _, truth = flat.search(queries, k)
    rows = [["exact (IndexFlatIP)", "—", f"{t_flat_build:.1f}", "", "1.000", "1.0×"]]
    exact_qps = []
    reached = False
    best = None
    for ef in args.ef_sweep:
        faiss.ParameterSpace().set_index_parameter(hnsw, "efSearch", ef)
        _, found = hnsw.search(queries, k)
        recall = float(np.mean([len(np.intersect1d(f, t)) / k for f, t in zip(found, truth)]))
        # exact and HNSW timed alternately in the same round, so the ratio survives load bursts
        t_exact, t = best_of_interleaved(args.repeat, lambda: flat.search(queries, k), lambda: hnsw.search(queries, k))
        exact_qps.append(args.queries / t_exact)
        speedup = t_exact / t
        ok = recall >= 0.98 and speedup >= 20
        reached |= ok
        if ok and best is None:
            best = ef
        rows.append(
            [
                f"HNSW M={args.hnsw_m} efC={args.ef_construction}",
                ef,
                f"{t_hnsw_build:.1f}",
                f"{args.queries / t:,.0f}",
                f"{recall:.3f}",
                f"{speedup:.1f}×",
            ]
        )
        print(rows[-1], f"exact QPS this round {exact_qps[-1]:,.0f}", flush=True)
    rows[0][3] = f"{max(exact_qps):,.0f}"
    text = (
        f"{args.n:,} items × d={args.dim}, {args.queries:,} queries, k={k}, recall@10 against exact search; "
        f"queries sent as one batch (FAISS uses both cores).\n\n"
        + table(["index", "ef_search", "build s", "QPS", "recall@10", "QPS / exact (same round)"], rows)
        + (f"\n\nSmallest ef_search meeting both goals: {best}." if best is not None else "")
    )
    return text, reached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=50_000, help="catalog of part 1 (exact index)")
    parser.add_argument("--per-user", type=int, default=20, help="training items per user (part 1)")
    parser.add_argument("--n", type=int, default=1_000_000, help="item vectors of part 2 (HNSW vs exact)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--ef-sweep", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--repeat", type=int, default=3, help="timing rounds of the HNSW part")
    parser.add_argument("--sql-repeat", type=int, default=7, help="timing rounds of the SQL part")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-hnsw", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        sql_text, sql_ratio = bench_sql(args, Path(tmp))
    print(sql_text, flush=True)
    hnsw_text, hnsw_ok = ("(skipped)", False) if args.skip_hnsw else bench_hnsw(args)
    print(hnsw_text, flush=True)

    command = "python benchmarks/speed/bench_store.py " + " ".join(sys.argv[1:])
    report = f"""# Store benchmark: SQL vector functions, HNSW vs exact

- date: {date(2026, 11, 24).isoformat()}
- machine: 2-core x86_64 CPU, 24 GB, no GPU (shared with other jobs; figures are ratios within one run)
- software: faiss {faiss.__version__}, duckdb {__import__("duckdb").__version__}, Python {platform.python_version()}
- command: `{command.strip()}`

## SQL top-N vs FAISS called directly

{sql_text}

Goal SQL ≥ 80% of direct FAISS throughput (topn): {"reached" if sql_ratio >= 0.8 else "NOT reached"} ({100 * sql_ratio:.0f}%).

Both sides run the same exact search on the same published index; the SQL side pays for the
view scan, the Arrow hand-over and building the result lists (about 1% of its time when
profiled). DuckDB cuts the query into 2,048-row chunks and calls the function from both of its
threads at once, each call being one FAISS search, which can overlap better than FAISS's own
OpenMP split of one big search on a loaded machine — hence SQL can come out above 100%.

## HNSW vs exact

{hnsw_text}

Goal recall@10 ≥ 0.98 at ≥ 20× exact QPS: {"skipped" if args.skip_hnsw else ("reached" if hnsw_ok else "NOT reached")}.
`store.index.publish` uses HNSW (M=32, efConstruction=200, efSearch=128) from 100,000 items up;
efSearch is recorded in the manifest and can be changed per reader (`ItemIndex.set_ef_search`).
Vectors: rank-16 factors projected to d plus 0.3 noise, unit-normalised then scaled by log-normal
norms (σ=0.25) — the shape of matrix-factorisation embeddings; i.i.d. Gaussian vectors would be
a harder, unrealistic case for any graph index. The HNSW build is single-pass on the shared
2-core machine, so its wall time includes waiting for other jobs.
"""
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
