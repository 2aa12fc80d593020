"""Does pretraining the inter-content encoder (ICA) buy anything before a recommender exists?

For each catalog: ingest → images → EfficientNet-Lite0 image + MiniLM text features → ICA
pretraining over seeds, and the intermediate metrics of METHOD.md stage 1:
- cross-modal retrieval Recall@1/@10 on held-out items: chance vs untrained (epoch 0) vs
  pretrained (validation-selected epoch);
- content-only top-N Recall@20 on the validation split: raw features (image, text, their
  normalized concatenation) vs untrained ICA vs pretrained ICA.

Catalogs: the generated demo (300 items), Gift Cards 2018 reviewed items (147, real photos and
text), and the whole Gift Cards 2018 metadata file as a catalog without interactions (1,547 items,
442 photos) — pretraining on the catalog alone is the point of stage 1; its `mm` is then scored
with the reviewed items' interactions.

    .venv/bin/python benchmarks/accuracy/bench_ica.py                 # writes benchmarks/results/ica.md
    .venv/bin/python benchmarks/accuracy/bench_ica.py --epochs 5 --seeds 0 --out /tmp/ica.md   # quick
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common

from features.extract import extract  # noqa: E402
from models.evaluation.content_metrics import content_topn  # noqa: E402
from models.pretraining.ica import ICAConfig  # noqa: E402
from models.pretraining.pretrain import (  # noqa: E402
    concat_vectors,
    load_catalog,
    pretrain_ica,
    write_concat_feature,
)
from models.training.data import load_interactions  # noqa: E402
from pipelines import amazon  # noqa: E402
from pipelines.images import fetch_images  # noqa: E402
from pipelines.ingest import ingest  # noqa: E402
from pipelines.prepare import _items_table  # noqa: E402  (the same item text prepare writes)
from pipelines.records import BadRecords  # noqa: E402
from store import schemas  # noqa: E402
from store.layout import DatasetPaths, dataset_paths  # noqa: E402
from store.tables import read_table, write_table  # noqa: E402
from store.vectors import align_features, read_features  # noqa: E402

GIFT = REPO.parent / "shared" / "data" / "amazon2018-giftcards"
IMAGE, TEXT = "image-effnet", "text-minilm"
MACHINE = "2-core x86_64 CPU, 24 GB, no GPU"


def local_photo_urls(paths: DatasetPaths, photos: Path) -> int:
    """Point image_url at the local real photo (file://) or at nothing: Amazon's hosts are unreachable."""
    items = read_table(paths.items, schemas.ITEMS)
    urls = [
        (photos / f"{a}.jpg").resolve().as_uri() if (photos / f"{a}.jpg").is_file() else None
        for a in items.column("asin").to_pylist()
    ]
    items = items.set_column(items.schema.get_field_index("image_url"), "image_url", pa.array(urls, pa.string()))
    write_table(items, paths.items, schemas.ITEMS)
    return sum(u is not None for u in urls)


def build_demo(home: Path) -> DatasetPaths:
    ingest("demo", release="demo", home=home, progress=False)
    return dataset_paths("demo", home)


def build_giftcards(home: Path) -> DatasetPaths:
    ingest(
        "giftcards",
        release="2018",
        meta=str(GIFT / "meta_Gift_Cards.json.gz"),
        reviews=str(GIFT / "Gift_Cards_5.json.gz"),
        home=home,
        progress=False,
    )
    paths = dataset_paths("giftcards", home)
    local_photo_urls(paths, GIFT / "images")
    return paths


def build_giftcards_catalog(home: Path) -> DatasetPaths:
    """Every product of the metadata file as items.parquet (no interactions): a catalog-only dataset."""
    paths = dataset_paths("giftcards-catalog", home)
    bad = BadRecords()
    products = {}
    for p in amazon.read_products(GIFT / "meta_Gift_Cards.json.gz", "2018", bad):
        products.setdefault(p.asin, p)
    table, *_ = _items_table(sorted(products), products, 2000)
    write_table(table, paths.items, schemas.ITEMS)
    local_photo_urls(paths, GIFT / "images")
    if bad.total:
        print(f"giftcards-catalog: {bad.total} bad metadata line(s)", file=sys.stderr)
    return paths


def featurize(paths: DatasetPaths) -> dict:
    fetched = fetch_images(paths, workers=2, progress=False)
    for spec in ("efficientnet-lite0", "minilm"):
        extract(paths, spec, progress=False, workers=0)
    cat = load_catalog(paths, IMAGE, TEXT)
    return {
        "items": cat.n,
        "images": int(cat.image_valid.sum()),
        "texts": int(cat.text_valid.sum()),
        "both": int((cat.image_valid & cat.text_valid).sum()),
        "fetch": {k: v for k, v in fetched.items() if v},
    }


def raw_content(paths: DatasetPaths, inter) -> dict[str, float]:
    cat = load_catalog(paths, IMAGE, TEXT)
    out = {}
    for name, vec in (
        ("raw image", np.where(cat.image_valid[:, None], cat.image, 0)),
        ("raw text", np.where(cat.text_valid[:, None], cat.text, 0)),
        ("raw concat", concat_vectors(cat.image, cat.image_valid, cat.text, cat.text_valid)),
    ):
        out[name] = content_topn(vec, inter.train_csr, inter.valid_csr)["recall@20"]
    return out


def mm_content(mm_paths: DatasetPaths, feature: str, eval_paths: DatasetPaths, inter) -> float:
    """Content R@20 of a feature table of one dataset on the interactions of another, matched by asin."""
    table = read_features(mm_paths.feature(feature))
    vec, valid = align_features(table, inter.asins, source=mm_paths.feature(feature))
    vec[~valid] = 0.0
    return content_topn(vec, inter.train_csr, inter.valid_csr)["recall@20"]


def untrained_mm_content(summary: dict) -> float | None:
    return summary["untrained"].get("content/recall@20")


def ms(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    return f"{np.mean(xs):.3f} ± {np.std(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def run_dataset(name: str, paths: DatasetPaths, seeds: list[int], epochs: int, eval_paths: DatasetPaths | None) -> dict:
    stats = featurize(paths)
    write_concat_feature(paths, IMAGE, TEXT)
    inter = load_interactions(eval_paths) if eval_paths is not None else None
    runs = []
    for seed in seeds:
        cfg = ICAConfig(epochs=epochs, holdout=0.2, patience=10, seed=seed)
        t0 = time.perf_counter()
        s = pretrain_ica(paths, IMAGE, TEXT, cfg, run_id=f"bench-s{seed}-e{epochs}", progress=False)
        s["wall"] = time.perf_counter() - t0
        if inter is not None and eval_paths != paths:  # catalog-only: score mm on the reviewed items
            s["content_trained"] = mm_content(paths, s["feature"], eval_paths, inter)
            s["content_untrained"] = None
        else:
            s["content_trained"] = s["final"].get("content/recall@20")
            s["content_untrained"] = untrained_mm_content(s)
        runs.append(s)
        print(
            f"{name} seed {seed}: R@1 {s['untrained']['retrieval/mean_recall@1']:.3f} → "
            f"{s['final']['retrieval/mean_recall@1']:.3f} (epoch {s['best_epoch']}), {s['wall']:.0f} s",
            flush=True,
        )
    raw = raw_content(eval_paths, inter) if inter is not None else {}
    return {"name": name, "stats": stats, "runs": runs, "raw": raw}


def report(results: list[dict], args: argparse.Namespace, wall: float) -> str:
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/accuracy/bench_ica.py " + " ".join(sys.argv[1:])
    lines = [
        "# ICA pretraining: intermediate metrics (METHOD.md stage 1)",
        "",
        f"Date: 2026-11-24 · machine: {MACHINE} (shared with other jobs) · torch threads: {args.threads}",
        "",
        f"Command: `{cmd.strip()}` (total {wall / 60:.1f} min)",
        "",
        "Features: EfficientNet-Lite0 (1280-d, image) and all-MiniLM-L6-v2 (384-d, text) via "
        "features.extract. ICA: default ICAConfig (d_model 256, 2 layers, 4 heads, mask 0.3, "
        f"cosine MMM, fusion term on) but holdout 0.2 and {args.epochs} epochs, patience 10, model "
        "selected on held-out retrieval mean Recall@10. Retrieval is on the held-out items only "
        "(never trained on); chance = k/n. Content-only top-N: user = Σ of the normalized vectors of "
        "their training items, full ranking on the validation split. mean ± std over seeds "
        f"{args.seeds}.",
        "",
    ]
    for r in results:
        runs, st = r["runs"], r["stats"]
        n_hold = runs[0]["n_holdout_items"]
        lines += [
            f"## {r['name']}",
            "",
            f"{st['items']} items, {st['images']} with an image, {st['texts']} with text, {st['both']} with both; "
            f"{n_hold} held out for retrieval; {runs[0]['n_train_items']} trained on; "
            f"selected epochs {[s['best_epoch'] for s in runs]}; {ms([s['wall'] for s in runs])} s per run.",
            "",
            "| cross-modal retrieval (held-out) | chance | untrained ICA | pretrained ICA |",
            "|---|---|---|---|",
        ]
        for key, label in (
            ("mean_recall@1", "mean R@1"),
            ("mean_recall@10", "mean R@10"),
            ("i2t_recall@1", "image→text R@1"),
            ("t2i_recall@1", "text→image R@1"),
        ):
            k = 10 if key.endswith("@10") else 1
            lines.append(
                f"| {label} | {min(k, n_hold) / n_hold:.3f} | "
                f"{ms([s['untrained']['retrieval/' + key] for s in runs])} | "
                f"{ms([s['final']['retrieval/' + key] for s in runs])} |"
            )
        if r["raw"]:
            lines += ["", "| content-only Recall@20 (valid) | value |", "|---|---|"]
            for name, v in r["raw"].items():
                lines.append(f"| {name} features | {v:.3f} |")
            lines.append(f"| untrained ICA mm | {ms([s['content_untrained'] for s in runs])} |")
            lines.append(f"| pretrained ICA mm | {ms([s['content_trained'] for s in runs])} |")
        h = runs[0]["history"]
        lines += [
            "",
            f"Per-epoch history of seed {args.seeds[0]} (every 5th epoch, the first and the selected one):",
            "",
            "| epoch | loss | contrastive | mmm | fusion | R@1 | R@10 | content R@20 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in [x for x in h if x["epoch"] % 5 == 0 or x["epoch"] in (1, runs[0]["best_epoch"])]:
            f = lambda k: f"{row[k]:.3f}" if k in row else "–"  # noqa: E731
            lines.append(
                f"| {row['epoch']} | {f('loss/loss')} | {f('loss/contrastive')} | {f('loss/mmm')} | "
                f"{f('loss/fusion')} | {f('retrieval/mean_recall@1')} | {f('retrieval/mean_recall@10')} | "
                f"{f('content/recall@20')} |"
            )
        lines.append("")
    lines += ["## Goals", ""]
    for r in results:
        runs = r["runs"]
        n_hold = runs[0]["n_holdout_items"]
        chance = 1 / n_hold
        after = np.mean([s["final"]["retrieval/mean_recall@1"] for s in runs])
        before = np.mean([s["untrained"]["retrieval/mean_recall@1"] for s in runs])
        ok = after >= 5 * chance and after > before + 0.05
        lines.append(
            f"- {r['name']}: pretraining raises held-out mean R@1 far above chance and above the untrained "
            f"encoder — {'REACHED' if ok else 'NOT REACHED'}: {after:.3f} vs chance {chance:.3f} "
            f"({after / chance:.1f}×) and untrained {before:.3f}."
        )
        if r["raw"]:
            ica = np.mean([s["content_trained"] for s in runs])
            lines.append(
                f"- {r['name']}: content-only R@20 of the pretrained mm vs raw concatenation (measured, no "
                f"target): {ica:.3f} vs {r['raw']['raw concat']:.3f} "
                f"({'above' if ica > r['raw']['raw concat'] else 'below'})."
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, default=REPO / "bench-out" / "ica")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--datasets", nargs="+", default=["demo", "giftcards", "giftcards-catalog"])
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 avoids oversubscription on a busy 2-core box)"
    )
    ap.add_argument("--fresh", action="store_true", help="delete --home first")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ica.md")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    if args.fresh and args.home.exists():
        shutil.rmtree(args.home)
    args.home.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = []
    gift = None
    for name in args.datasets:
        if name == "demo":
            p = build_demo(args.home)
            results.append(run_dataset("demo (generated, 300 items)", p, args.seeds, args.epochs, p))
        elif name == "giftcards":
            gift = p = build_giftcards(args.home)
            results.append(run_dataset("Gift Cards 2018, reviewed items (5-core)", p, args.seeds, args.epochs, p))
        elif name == "giftcards-catalog":
            gift = gift or build_giftcards(args.home)
            if not gift.feature(IMAGE).exists():
                featurize(gift)
            p = build_giftcards_catalog(args.home)
            results.append(
                run_dataset(
                    "Gift Cards 2018, whole metadata catalog (pretrained without interactions; "
                    "content top-N on the reviewed items)",
                    p,
                    args.seeds,
                    args.epochs,
                    gift,
                )
            )
        else:
            raise SystemExit(f"unknown dataset {name!r}")
    text = report(results, args, time.perf_counter() - t0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
