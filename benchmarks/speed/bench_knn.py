"""kNN graph at scale: 10^6 items × 384-d, k=10, on two cores — time, peak memory, exactness.

    .venv/bin/python benchmarks/speed/bench_knn.py                 # 10^6 items (IVF-SQ8 + re-rank above 200k)
    .venv/bin/python benchmarks/speed/bench_knn.py --n 100000      # exact (brute force) path

Data: a mixture of Gaussian clusters (product embeddings are clustered; uniformly random
high-dimensional points have no meaningful neighbours and defeat any index). `--data gaussian`
gives pure noise for comparison. Exactness: for `--sample` random queries the graph's neighbour
lists are compared with a brute-force top-k over all items (recall@k, and the share of rows
that match exactly).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common

from models.training import graphs  # noqa: E402


def cpu_seconds() -> float:
    """User + system CPU time of this process: less sensitive than wall time to a busy machine."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rss_peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux


def make_data(n: int, d: int, kind: str, seed: int = 0, block: int = 100_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.empty((n, d), dtype=np.float32)
    if kind == "clustered":
        n_clusters = max(1, n // 1000)
        centers = rng.standard_normal((n_clusters, d), dtype=np.float32)
    for start in range(0, n, block):
        m = min(block, n - start)
        x[start : start + m] = rng.standard_normal((m, d), dtype=np.float32)
        if kind == "clustered":
            x[start : start + m] += 1.2 * centers[rng.integers(0, n_clusters, m)]
    return x


def brute_force(x: np.ndarray, queries: np.ndarray, k: int, include_self: bool, block: int = 100_000) -> np.ndarray:
    """Exact top-k cosine neighbours of the query rows, scanning all items in blocks."""
    q = graphs._normalize_rows(x[queries])
    best_s = np.full((len(q), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), 0), dtype=np.int64)
    for start in range(0, len(x), block):
        s = q @ graphs._normalize_rows(x[start : start + block]).T
        ids = np.arange(start, start + s.shape[1])
        if not include_self:
            s[queries[:, None] == ids[None, :]] = -np.inf
        all_s = np.concatenate([best_s, s], axis=1)
        all_i = np.concatenate([best_i, np.broadcast_to(ids, s.shape)], axis=1)
        top = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
        best_s = np.take_along_axis(all_s, top, 1)
        best_i = np.take_along_axis(all_i, top, 1)
    return best_i


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--sample", type=int, default=1000)
    ap.add_argument("--data", choices=("clustered", "gaussian"), default="clustered")
    ap.add_argument("--exact", choices=("auto", "yes", "no"), default="auto")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args()

    t0 = time.perf_counter()
    x = make_data(args.n, args.d, args.data)
    gen_s = time.perf_counter() - t0
    rss_data = rss_peak_gb()
    print(f"data {args.n}×{args.d} ({args.data}) in {gen_s:.1f}s, peak RSS so far {rss_data:.2f} GB", flush=True)

    exact = {"auto": None, "yes": True, "no": False}[args.exact]
    t0 = time.perf_counter()
    cpu0 = cpu_seconds()
    idx, sim = graphs.knn_search(x, args.k, include_self=True, exact=exact, progress=True)
    search_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    g = graphs.sym_normalized_knn(idx, sim, args.n)
    norm_s = time.perf_counter() - t1
    cpu_s = cpu_seconds() - cpu0
    rss_peak = rss_peak_gb()
    used_exact = exact if exact is not None else args.n <= graphs.EXACT_MAX

    rng = np.random.default_rng(1)
    queries = np.sort(rng.choice(args.n, size=min(args.sample, args.n), replace=False))
    t2 = time.perf_counter()
    truth = brute_force(x, queries, args.k, include_self=True)
    check_s = time.perf_counter() - t2
    found = idx[queries]
    overlap = np.array([len(set(a) & set(b)) for a, b in zip(found.tolist(), truth.tolist())])
    result = {
        "n": args.n,
        "d": args.d,
        "k": args.k,
        "data": args.data,
        "index": "IndexFlatIP (exact)"
        if used_exact
        else f"IndexIVFScalarQuantizer (SQ8) + exact re-rank of top {graphs.RERANK_FACTOR}k",
        "search_s": round(search_s, 1),
        "normalize_s": round(norm_s, 2),
        "total_graph_s": round(search_s + norm_s, 1),
        "cpu_s": round(cpu_s, 1),
        "load_avg_1min_at_end": round(os.getloadavg()[0], 1),
        "peak_rss_gb": round(rss_peak, 2),
        "rss_after_data_gb": round(rss_data, 2),
        "graph_nnz": int(g.nnz),
        "sample": len(queries),
        "recall_at_k": round(float(overlap.mean() / args.k), 4),
        "rows_exact": round(float((overlap == args.k).mean()), 4),
        "bruteforce_check_s": round(check_s, 1),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
