"""Benchmark of token-level extraction (issue #15 part 1) against pooled extraction, in one run.

On the first `--n` real apparel photos and titles (../shared/data/amazon-apparel-tops, read in
place through a link, nothing copied): end-to-end img/s of EfficientNet-Lite0 image tokens
(grid × grid regions of the head map) and of the pooled 1280-d feature, then items/s of MiniLM
text tokens (last hidden states up to --max-length word pieces) and of the pooled sentence
vector, plus the bytes per item of each table. Token and pooled runs alternate `--repeat` times
(timings drift on a shared machine); the best of each is reported. Every run starts from an
empty table (resume=False), so nothing is served from a previous run.

    python benchmarks/speed/bench_tokens.py                      # n=300, batch 32, 2 torch threads, 2 decode threads
    python benchmarks/speed/bench_tokens.py --n 300 --threads 2 --workers 2 --batch-size 64
    python benchmarks/speed/bench_tokens.py --modality one-pass  # pooled + tokens: two backbone passes vs one
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common

from features.extract import extract  # noqa: E402
from features.registry import get_encoder  # noqa: E402
from features.tokens import extract_tokens, extract_with_tokens  # noqa: E402
from store import DatasetPaths, schemas  # noqa: E402
from store.tables import write_table  # noqa: E402

APPAREL = Path(__file__).resolve().parents[3] / "shared" / "data" / "amazon-apparel-tops"


def apparel_dataset(root: Path, n: int) -> DatasetPaths:
    """The first n apparel items as a dataset whose images/ links to the shared photos."""
    if not (APPAREL / "items.tsv").is_file():
        raise SystemExit(f"{APPAREL}/items.tsv not found: the benchmark reads ../shared/data")
    with open(APPAREL / "items.tsv", newline="", encoding="utf-8") as fh:
        rows = [r for _, r in zip(range(n), csv.DictReader(fh, delimiter="\t"))]
    paths = DatasetPaths(root / "apparel")
    paths.root.mkdir(parents=True)
    paths.images_dir.symlink_to(APPAREL / "images", target_is_directory=True)
    titles = [r["title"] for r in rows]
    blank = [None] * len(rows)
    table = {
        "item_id": pa.array(range(len(rows)), pa.int32()),
        "asin": [r["asin"] for r in rows],
        "title": titles,
        "description": blank,
        "brand": [r["brand"] or None for r in rows],
        "categories": pa.array([[]] * len(rows), pa.list_(pa.string())),
        "image_url": blank,
        "text": titles,
    }
    write_table(pa.table(table), paths.items, schemas.ITEMS)
    return paths


def timed(fn) -> tuple[float, dict]:
    start = time.perf_counter()
    summary = fn()
    return time.perf_counter() - start, summary


def measure(paths: DatasetPaths, encoder, modality: str, args) -> list[dict]:
    """Token and pooled extraction of one modality, alternated; one result row each."""
    common = {"batch_size": args.batch_size, "progress": False, "resume": False}
    if modality == "image":
        common.update(workers=args.workers)
    shape = {"grid": args.grid} if modality == "image" else {"max_length": args.max_length}
    runs: dict[str, list[tuple[float, dict]]] = {"tokens": [], "pooled": []}
    for _ in range(args.repeat):
        runs["tokens"].append(timed(lambda: extract_tokens(paths, encoder, modality, **shape, **common)))
        runs["pooled"].append(timed(lambda: extract(paths, encoder, **common)))
    rows = []
    for kind, results in runs.items():
        seconds, summary = min(results, key=lambda r: r[0])
        path = Path(summary["path"])
        n = summary["n_items"]
        rows.append(
            {
                "table": f"{path.parent.name}/{path.name}",
                "kind": kind,
                "modality": modality,
                "shape": (
                    f"{summary['max_tokens']} x {summary['dim']}" if kind == "tokens" else f"1 x {summary['dim']}"
                ),
                "items": n,
                "seconds": seconds,
                "per_s": n / seconds,
                "bytes_per_item": path.stat().st_size / n,
                "mean_tokens": summary.get("mean_tokens", 1.0),
            }
        )
    return rows


def measure_one_pass(paths: DatasetPaths, encoder, args) -> list[dict]:
    """Pooled + token image tables (issue 30): two backbone passes per photo (extract, then
    extract_tokens) against one (extract_with_tokens, then extract_tokens assembling its table),
    alternated in this process; one row each, photos/s over both tables."""
    common = {"batch_size": args.batch_size, "progress": False, "workers": args.workers}
    tokens = paths.token_feature("image-effnet-tok")

    def two() -> dict:
        extract(paths, encoder, resume=False, **common)
        return extract_tokens(paths, encoder, "image", grid=args.grid, resume=False, **common)

    def one() -> dict:
        extract_with_tokens(paths, encoder, grid=args.grid, resume=False, **common)
        tokens.unlink(missing_ok=True)  # the last run's table: the partial rows of this pass are what counts
        summary = extract_tokens(paths, encoder, "image", grid=args.grid, **common)
        assert summary["encoded"] == 0, summary  # the token table came from the one pass
        return summary

    runs: dict[str, list[tuple[float, dict]]] = {"two passes": [], "one pass": []}
    for _ in range(args.repeat):
        runs["two passes"].append(timed(two))
        runs["one pass"].append(timed(one))
    rows = []
    for kind, results in runs.items():
        seconds, summary = min(results, key=lambda r: r[0])
        n = summary["n_items"]
        rows.append(
            {
                "table": "image-effnet + image-effnet-tok",
                "kind": kind,
                "modality": "image",
                "shape": f"1 + {summary['max_tokens']} x {summary['dim']}",
                "items": n,
                "seconds": seconds,
                "per_s": n / seconds,
                "bytes_per_item": (paths.feature("image-effnet").stat().st_size + tokens.stat().st_size) / n,
                "mean_tokens": summary.get("mean_tokens", 1.0),
            }
        )
    rows.append({**rows[1], "kind": f"one / two passes: {rows[1]['per_s'] / rows[0]['per_s']:.2f}x"})
    return rows


def table(rows: list[dict], args) -> str:
    head = (
        f"{args.n} apparel items; batch {args.batch_size}, {torch.get_num_threads()} torch threads, "
        f"{args.workers} decode threads; {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"best of {args.repeat}, end to end (files → table)"
    )
    lines = [
        head,
        "",
        "| table | kind | tokens × dim | items/s | s | bytes/item | mean tokens |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['table']} | {r['kind']} {r['modality']} | {r['shape']} | {r['per_s']:.1f} | {r['seconds']:.1f} "
            f"| {r['bytes_per_item']:,.0f} | {r['mean_tokens']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--workers", type=int, default=2, help="image decode threads")
    ap.add_argument("--grid", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument(
        "--modality",
        choices=["image", "text", "both", "one-pass"],
        default="both",
        help="one-pass: pooled + token image tables from two backbone passes vs one",
    )
    ap.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = apparel_dataset(Path(tmp), args.n)
        if args.modality in ("image", "both"):
            rows += measure(paths, get_encoder("efficientnet-lite0", device="cpu"), "image", args)
        if args.modality == "one-pass":
            rows += measure_one_pass(paths, get_encoder("efficientnet-lite0", device="cpu"), args)
        if args.modality in ("text", "both"):
            rows += measure(paths, get_encoder("minilm", device="cpu"), "text", args)
    text = table(rows, args)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
