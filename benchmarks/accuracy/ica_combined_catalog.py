"""Pretrain on apparel + Gift Cards items, apply to Gift Cards with `--ica-from`, train AnchorRec (issue 15).

The downstream arm of issue 15 as specified: the inter-content encoders (pooled and token) are
pretrained on ONE catalog holding the 7,580 apparel items and the Gift Cards items (every item of
the 2018 Gift Cards metadata, 442 of them with a real photo), then applied to the Gift Cards
interaction dataset through the CLI's `--ica-from DATASET/RUN`, and AnchorRec is trained on Gift
Cards with each `mm` (benchmarks/accuracy/ica_downstream_gift.py, validation-selected, 3 seeds).

Everything goes through the `anchorrec` CLI, and every step is cached: a rerun skips what is done.

    1. write <work>/items.tsv (apparel rows + Gift Cards metadata rows) and <work>/images.csv
       (asin,path pointing into ../shared/data: nothing is copied);
    2. anchorrec ingest   --dataset apparel-gift --release csv --meta <work>/items.tsv   (catalog-only)
    3. anchorrec pretrain --dataset apparel-gift --images <work>/images.csv [--tokens]
    4. anchorrec pretrain --dataset gift ... --ica-from apparel-gift/<run> [--tokens]
    5. benchmarks/accuracy/ica_downstream_gift.py --pooled-feature … --token-feature …

    ANCHORREC_HOME=/work/lb-home .venv/bin/python benchmarks/accuracy/ica_combined_catalog.py --work /work/combined
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common

from benchmarks.accuracy.leaderboard_run import anchorrec  # noqa: E402  (one CLI runner)
from benchmarks.common.gift_cards import GIFT, GIFT_INGEST  # noqa: E402

DATA = REPO.parent / "shared" / "data"
APPAREL = DATA / "amazon-apparel-tops"
COLUMNS = ["asin", "title", "brand", "description", "categories", "image_file"]


def _flat(text: str | None) -> str:
    """One TSV cell: tabs and line breaks become spaces (prepare collapses whitespace anyway)."""
    return " ".join((text or "").split())


def write_catalog(work: Path) -> tuple[Path, Path, dict[str, int]]:
    """items.tsv + images.csv of the combined catalog; raises if the two sets share an asin."""
    from pipelines.amazon import read_products
    from pipelines.records import BadRecords

    work.mkdir(parents=True, exist_ok=True)
    rows, images = [], {}
    with open(APPAREL / "items.tsv", encoding="utf-8", newline="") as fh:
        for r in csv.DictReader(fh, delimiter="\t"):
            rows.append(
                {
                    "asin": r["asin"],
                    "title": _flat(r["title"]),
                    "brand": _flat(r["brand"]),
                    "description": "",
                    "categories": "",
                    "image_file": "",
                }
            )
            if r["image_file"]:
                images[r["asin"]] = APPAREL / r["image_file"]
    apparel = {r["asin"] for r in rows}
    bad = BadRecords()
    gift = list(read_products(GIFT / "meta_Gift_Cards.json.gz", "2018", bad))
    clash = apparel & {p.asin for p in gift}
    if clash:
        raise SystemExit(
            f"apparel and Gift Cards share asins {sorted(clash)[:5]}: the combined catalog would merge them"
        )
    for p in gift:
        rows.append(
            {
                "asin": p.asin,
                "title": _flat(p.title),
                "brand": _flat(p.brand),
                "description": _flat(p.description),
                "categories": json.dumps(p.categories),
                "image_file": "",
            }
        )
        photo = GIFT / "images" / f"{p.asin}.jpg"
        if photo.is_file():
            images[p.asin] = photo
    items, image_csv = work / "items.tsv", work / "images.csv"
    with open(items, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS, delimiter="\t", quoting=csv.QUOTE_MINIMAL)
        w.writeheader()
        w.writerows(rows)
    with open(image_csv, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["asin", "path"])
        w.writerows(sorted((a, str(p)) for a, p in images.items()))
    counts = {
        "apparel": len(apparel),
        "gift": len({p.asin for p in gift}),
        "images": len(images),
        "gift_bad_lines": bad.dropped,
    }
    print(f"catalog: {counts}", flush=True)
    return items, image_csv, counts


def pretrained_run(home: str, dataset: str, tokens: bool, epochs: int) -> str:
    """The finished ICA run of the combined catalog with (or without) token inputs and this epoch count."""
    from store.layout import dataset_paths
    from store.tables import read_json

    runs = dataset_paths(dataset, home).root / "runs"
    found = []
    for cfg_path in sorted(runs.glob("ica-*/config.json")):
        cfg = read_json(cfg_path)
        done = (cfg_path.parent / "checkpoint.pt").is_file() and (cfg_path.parent / "metrics.json").is_file()
        if done and bool(cfg.get("image_tokens")) == tokens and cfg["config"].get("epochs") == epochs:
            found.append(cfg_path.parent.name)
    if len(found) != 1:
        sys.exit(f"expected one finished {'token' if tokens else 'pooled'} ICA run in {runs}, found {found}")
    return found[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="where items.tsv / images.csv of the combined catalog go")
    ap.add_argument("--home", default=os.environ.get("ANCHORREC_HOME", str(REPO / "data")))
    ap.add_argument("--dataset", default="apparel-gift")
    ap.add_argument("--pooled-epochs", type=int, default=30, help="the CLI default")
    ap.add_argument("--token-epochs", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--skip-downstream", action="store_true")
    args = ap.parse_args()
    items, image_csv, _ = write_catalog(args.work)
    home = ["--home", args.home]
    anchorrec("ingest", "--dataset", args.dataset, *home, "--release", "csv", "--meta", str(items))
    combined = ["--dataset", args.dataset, *home, "--images", str(image_csv)]
    anchorrec("pretrain", *combined, "--pretrain-epochs", str(args.pooled_epochs))
    anchorrec("pretrain", *combined, "--tokens", "--pretrain-epochs", str(args.token_epochs))
    pooled = pretrained_run(args.home, args.dataset, False, args.pooled_epochs)
    token = pretrained_run(args.home, args.dataset, True, args.token_epochs)
    gift = ["--dataset", "gift", *home, "--images", str(GIFT / "images")]
    anchorrec("ingest", "--dataset", "gift", *home, *GIFT_INGEST)
    anchorrec("pretrain", *gift, "--ica-from", f"{args.dataset}/{pooled}")
    anchorrec("pretrain", *gift, "--tokens", "--ica-from", f"{args.dataset}/{token}")
    if args.skip_downstream:
        return
    cmd = [
        str(REPO / ".venv" / "bin" / "python"),
        str(REPO / "benchmarks" / "accuracy" / "ica_downstream_gift.py"),
        "--home",
        args.home,
        "--pooled-feature",
        f"{pooled}-from-{args.dataset}",
        "--token-feature",
        f"{token}-from-{args.dataset}",
        "--seeds",
        str(args.seeds),
        "--tag",
        args.dataset,
    ]
    print("$", " ".join(cmd), flush=True)
    sys.exit(subprocess.run(cmd, cwd=REPO).returncode)


if __name__ == "__main__":
    main()
