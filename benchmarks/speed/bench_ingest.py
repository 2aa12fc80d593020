"""Ingest throughput on a large generated Amazon-2023 review file vs a plain json.loads loop.

    .venv/bin/python benchmarks/speed/bench_ingest.py [--lines 1000000] [--repeat 2]

Both readers run in the same process over the same gzip file, alternately, best of `repeat`,
so the ratio holds even while other jobs load the machine. Rows:
- baseline: `for line in gzip.open(path, "rt"): json.loads(line)` plus taking the four fields;
- orjson loop: the same loop with orjson (to show what the parser alone buys);
- read_review_batches: the project reader that ingest uses (threaded inflate, Arrow's C++ JSON
  reader on blocks of lines with a line-by-line orjson fallback, all error handling);
- read_reviews: the same, turned into one normalized Review object per line;
- read_review_batches + prepare: the whole ingest after download (dedup, 5-core, ids, split, Parquet).
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import random
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common

from pipelines.amazon import INFLATE, read_review_batches, read_reviews  # noqa: E402
from pipelines.prepare import prepare  # noqa: E402
from pipelines.records import BadRecords  # noqa: E402
from store.layout import DatasetPaths  # noqa: E402

GOAL_RATIO = 2.0  # project reader at least twice the json.loads loop


def generate(path: Path, n: int, seed: int = 0) -> int:
    """A 2023-format review file: Zipf-ish users/items, review text of realistic length."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 18))).capitalize() + "." for _ in range(4000)]
    n_users, n_items = max(10, n // 5), max(10, n // 20)
    users = [f"A{rng.getrandbits(120):030X}"[:28] for _ in range(n_users)]
    items = [f"B0{rng.getrandbits(40):08X}" for _ in range(n_items)]
    with gzip.open(path, "wb", compresslevel=3) as fh:
        buf = []
        for k in range(n):
            u = users[min(int(rng.paretovariate(1.1)) - 1, n_users - 1) if k % 2 else rng.randrange(n_users)]
            i = items[min(int(rng.paretovariate(1.0)) - 1, n_items - 1) if k % 3 else rng.randrange(n_items)]
            rec = {
                "rating": float(rng.randint(1, 5)),
                "title": rng.choice(sentences)[:60],
                "text": " ".join(rng.choice(sentences) for _ in range(rng.randint(1, 6))),
                "images": [],
                "asin": i,
                "parent_asin": i,
                "user_id": u,
                "timestamp": 1_400_000_000_000 + rng.randrange(300_000_000_000),
                "helpful_vote": rng.randint(0, 3),
                "verified_purchase": rng.random() < 0.9,
            }
            buf.append(json.dumps(rec))
            if len(buf) == 10_000:
                fh.write(("\n".join(buf) + "\n").encode())
                buf = []
        if buf:
            fh.write(("\n".join(buf) + "\n").encode())
    return path.stat().st_size


def baseline_json(path: Path) -> int:
    n = 0
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            o = json.loads(line)
            (o["user_id"], o.get("parent_asin") or o["asin"], o["rating"], o["timestamp"] // 1000)
            n += 1
    return n


def baseline_orjson(path: Path) -> int:
    import orjson

    n = 0
    with gzip.open(path, "rb") as fh:
        for line in fh:
            o = orjson.loads(line)
            (o["user_id"], o.get("parent_asin") or o["asin"], o["rating"], o["timestamp"] // 1000)
            n += 1
    return n


def project_reader(path: Path) -> int:
    bad = BadRecords()
    n = 0
    for _ in read_reviews(path, "2023", bad):
        n += 1
    assert bad.total == 0, bad.as_dict()
    return n


def project_batches(path: Path) -> int:
    bad = BadRecords()
    n = sum(len(b) for b in read_review_batches(path, "2023", bad))
    assert bad.total == 0, bad.as_dict()
    return n


def project_ingest(path: Path) -> int:
    with tempfile.TemporaryDirectory() as d:
        reviews = read_review_batches(path, "2023", BadRecords())
        report = prepare(DatasetPaths(Path(d) / "bench"), reviews, [])
    return report["steps"][0]["interactions"]


def timed(fn, path: Path) -> tuple[int, float, float]:
    """(records, wall seconds, CPU seconds of all threads of this process)."""
    c0, t0 = time.process_time(), time.perf_counter()
    n = fn(path)
    return n, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ingest.md")
    args = ap.parse_args()
    if args.lines < 1 or args.repeat < 1:
        ap.error("--lines and --repeat must be >= 1")

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "Bench.jsonl.gz"
        t0 = time.perf_counter()
        size = generate(path, args.lines)
        print(f"inflate library: {INFLATE}")
        print(f"generated {args.lines:,} lines, {size / 2**20:.1f} MiB gzip in {time.perf_counter() - t0:.1f} s")
        runs = [
            ("baseline: gzip.open + json.loads loop", baseline_json),
            ("gzip.open + orjson.loads loop", baseline_orjson),
            ("pipelines.amazon.read_review_batches (what ingest uses)", project_batches),
            ("pipelines.amazon.read_reviews (one Review object per line)", project_reader),
            ("read_review_batches + prepare (dedup, 5-core, ids, split, Parquet)", project_ingest),
        ]
        best: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for r in range(args.repeat):
            for name, fn in runs:
                n, dt, dc = timed(fn, path)
                assert n == args.lines, (name, n)
                best[name] = min(best.get(name, float("inf")), dt)
                cpu[name] = min(cpu.get(name, float("inf")), dc)
                print(f"  round {r + 1}: {name}: {dt:.2f} s wall, {dc:.2f} s CPU", flush=True)

    base, base_cpu = best[runs[0][0]], cpu[runs[0][0]]
    table = [
        "| method | wall s | records/s (wall) | vs json.loads (wall) | CPU s | vs json.loads (CPU) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    table += [
        f"| {name} | {best[name]:.2f} | {args.lines / best[name]:,.0f} | {base / best[name]:.2f}x "
        f"| {cpu[name]:.2f} | {base_cpu / cpu[name]:.2f}x |"
        for name, _ in runs
    ]
    ratio = base / best[runs[2][0]]
    verdict = "reached" if ratio >= GOAL_RATIO else "NOT reached"
    print("\n".join(table))
    print(f"goal: reader >= {GOAL_RATIO:.1f}x the json.loads loop: {verdict} ({ratio:.2f}x)")

    cmd = f".venv/bin/python benchmarks/speed/bench_ingest.py --lines {args.lines} --repeat {args.repeat}"
    md = [
        "# Ingest throughput (Amazon 2023 review format)",
        "",
        f"- date: {date.today().isoformat()}",
        "- machine: 2-core x86_64 CPU, 24 GB, no GPU (shared with other jobs: compare ratios, not seconds)",
        f"- python {platform.python_version()}; the project reader inflates with {INFLATE}; file: {args.lines:,} generated review lines, "
        f"{size / 2**20:.1f} MiB gzip (level 3), ~{args.lines // 5:,} users, ~{args.lines // 20:,} items",
        f"- command: `{cmd}`",
        f"- best of {args.repeat} alternating rounds, same process, same file; CPU s = process CPU "
        "time of all threads (less sensitive than wall time to other jobs on the machine)",
        "",
        *table,
        "",
        f"Goal: the project reader parses at least {GOAL_RATIO:.1f}x as many records/s as a plain "
        f"`json.loads` loop over the same file — **{verdict}** ({ratio:.2f}x).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(md))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
