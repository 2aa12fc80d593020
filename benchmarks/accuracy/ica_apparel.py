"""Does the token ICA beat raw concatenation and the pooled ICA? (issue 15, item 4)

On the apparel catalog (../shared/data/amazon-apparel-tops: 7,580 real product photos with titles,
brands, colours and product types, no interactions), ingested as a catalog-only dataset:

1. features: EfficientNet-Lite0 image + MiniLM text, pooled (today's `anchorrec features`) and as
   token tables (features.tokens.extract_tokens: 4×4 image regions, ≤ 32 word pieces);
2. a held-out 10% of the items (models.evaluation.content_probes.holdout_mask, seed 0, the same
   items for every method and every seed) is removed: the encoders are pretrained on the other
   90% only, as a dataset of their own (items.parquet of the 90%, the feature/token tables linked
   in). Pretraining's own holdout (10% of the 90%, by pretraining seed) selects the epoch, so the
   test items are never used for training nor for selection;
3. for each pretraining seed, the pooled ICA and the token ICA are trained, and applied to all items;
4. on the held-out items: image→text / text→image Recall@1/@10 (mean of both directions) and
   linear-probe accuracy for colour (normalize_colour, top 20) and product type, from the mm
   vector and from each single modality, the probe fitted on the 90%'s vectors.
   Raw concatenation has no shared space: its retrieval row maps raw image vectors into the raw
   text space with a ridge regression fitted on the 90% (content_probes.ridge_map); its probes
   read the raw vectors (mm = normalized [image, text]). Raw rows do not depend on a pretraining
   seed (std 0). "majority" is the probe's floor: always the training part's most common label.

Colour and product type are NOT in the item text (the catalog-only ingest keeps them out), but
titles often name the colour ('… Noir, Small'), so the text probe for colour is expected high.

Writes benchmarks/results/ica_apparel.{md,json,png} (mean ± std over seeds; the PNG shows
per-epoch retrieval on pretraining's validation items). Every step is cached under the work dir
($ANCHORREC_BENCH_WORK/ica_apparel, default /tmp/anchorrec-bench/ica_apparel): a rerun after a
kill continues (features resume by chunk, pretraining by epoch, evaluations per run); delete the
work dir to start over.

    .venv/bin/python benchmarks/accuracy/ica_apparel.py                                 # 3 seeds, 30 epochs, all items
    .venv/bin/python benchmarks/accuracy/ica_apparel.py --items 300 --epochs 2 --seeds 1   # a quick check
    .venv/bin/python benchmarks/accuracy/ica_apparel.py --ablation                      # + token ICA without each loss
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common

from models.evaluation.content_probes import (
    holdout_mask,
    linear_probe,
    majority_accuracy,
    normalize_colour,
    retrieval,
    ridge_map,
    top_labels,
)
from store import schemas
from store.layout import DatasetPaths, dataset_paths
from store.tables import read_json, read_table, write_json, write_table

SRC = REPO.parent / "shared" / "data" / "amazon-apparel-tops"
RESULTS = REPO / "benchmarks" / "results"
IMAGE_SPEC, TEXT_SPEC = "efficientnet-lite0", "minilm"
IMAGE, TEXT = "image-effnet", "text-minilm"
IMAGE_TOK, TEXT_TOK = "image-effnet-tok", "text-minilm-tok"
LOSS_WEIGHTS = ("contrastive_weight", "mmm_weight", "mlm_weight", "fusion_weight")
TOP_COLOURS = 20
log = logging.getLogger("ica_apparel")


@dataclass
class Setup:
    """Everything a step needs to know; `key` parts name cached results so options never mix."""

    work: Path
    n_items: int | None
    epochs: int
    seeds: list[int]
    threads: int
    ablation: bool
    batch_size: int
    probe_c: float | None = None  # None: chosen on the training part (content_probes.choose_c)
    holdout: float = 0.1
    d_model: int = 256  # the encoder width, the same for the pooled and the token encoder
    ablation_seeds: int = 1  # seeds each ablation arm is pretrained on (the first N of `seeds`)
    states_arm: bool = False  # with the ablation: also the token ICA fed contextual text states instead of ids
    notes: list[str] = field(default_factory=list)

    @property
    def home(self) -> Path:
        return self.work / "home"

    @property
    def tag(self) -> str:
        return f"n{self.n_items}" if self.n_items else "all"


# --------------------------------------------------------------------------------- data
def subset_tsv(setup: Setup) -> Path:
    """items.tsv, or a seeded sample of --items rows of it (same rows on every rerun)."""
    if not setup.n_items:
        return SRC / "items.tsv"
    out = setup.work / f"items-{setup.tag}.tsv"
    if out.exists():
        return out
    with open(SRC / "items.tsv", encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        rows, header = list(reader), reader.fieldnames
    keep = np.sort(np.random.default_rng(0).choice(len(rows), min(setup.n_items, len(rows)), replace=False))
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, delimiter="\t")
        writer.writeheader()
        writer.writerows(rows[k] for k in keep)
    tmp.replace(out)
    return out


def labels_by_asin(tsv: Path) -> dict[str, tuple[str | None, str | None]]:
    """asin → (normalized colour, product type), read from the source table (not from the item text)."""
    with open(tsv, encoding="utf-8", newline="") as fh:
        return {
            r["asin"]: (normalize_colour(r.get("color")), (r.get("product_type_name") or "").strip() or None)
            for r in csv.DictReader(fh, delimiter="\t")
        }


def ingest_catalog(setup: Setup) -> DatasetPaths:
    """The catalog-only dataset and its photos (local folder, no network); both steps resume."""
    from pipelines.images import fetch_images
    from pipelines.ingest import ingest

    paths = dataset_paths(f"apparel-{setup.tag}", setup.home)
    tsv = subset_tsv(setup)
    if not paths.items.exists():
        report = ingest(paths.name, "csv", meta=str(tsv), home=setup.home, progress=False)
        log.info("ingest: %s", report["line"])
    if not paths.image_audit.exists():
        summary = fetch_images(paths, workers=4, progress=False, images_dir=str(SRC / "images"))
        log.info("images: %s", summary["line"])
    return paths


def extract_all(setup: Setup, paths: DatasetPaths) -> dict[str, Any]:
    """Pooled and token features (each skipped when up to date, resumed by chunk when cut)."""
    from features.extract import extract

    speed: dict[str, Any] = {}
    for spec, name in ((TEXT_SPEC, TEXT), (IMAGE_SPEC, IMAGE)):
        s = extract(paths, spec, name=name, batch_size=setup.batch_size, progress=True)
        speed[name] = _speed(s)
    if token_features_available():
        from features.tokens import extract_tokens

        for spec, modality, name in ((TEXT_SPEC, "text", TEXT_TOK), (IMAGE_SPEC, "image", IMAGE_TOK)):
            s = extract_tokens(paths, spec, modality, name=name, batch_size=min(setup.batch_size, 32), progress=True)
            speed[name] = _speed(s)
    return speed


def _speed(summary: dict) -> dict:
    keys = ("n_items", "encoded", "resumed", "skipped", "seconds", "items_per_s", "bytes_per_item", "device")
    return {k: summary[k] for k in keys if k in summary}


def token_features_available() -> bool:
    """The token part of the benchmark: on when features.tokens and the token-aware pretrain exist."""
    try:
        import inspect

        from features.tokens import extract_tokens  # noqa: F401
        from models.pretraining.pretrain import pretrain_ica

        return "image_tokens" in inspect.signature(pretrain_ica).parameters
    except ImportError:
        return False


def train_dataset(setup: Setup, paths: DatasetPaths, holdout: np.ndarray) -> DatasetPaths:
    """The 90% as a dataset of its own: items.parquet of the training items, input tables linked in."""
    sub = dataset_paths(f"{paths.name}-train", setup.home)
    items = read_table(paths.items, schemas.ITEMS)
    keep = np.flatnonzero(~holdout)
    table = items.take(keep)
    table = table.set_column(0, "item_id", pa.array(np.arange(len(keep), dtype=np.int32)))
    if (
        not sub.items.exists()
        or read_table(sub.items, schemas.ITEMS).column("asin").to_pylist() != table.column("asin").to_pylist()
    ):
        write_table(table, sub.items, schemas.ITEMS)
    for src_dir, dst_dir in ((paths.features_dir, sub.features_dir), (paths.tokens_dir, sub.tokens_dir)):
        if not src_dir.is_dir():
            continue
        dst_dir.mkdir(parents=True, exist_ok=True)
        for f in src_dir.iterdir():
            if f.name.startswith((".", "ica-")) or not f.is_file():
                continue
            link = dst_dir / f.name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(f.resolve())
    return sub


# --------------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class Method:
    """One encoder to pretrain: the pooled or token inputs and the ICA config changes."""

    name: str
    tokens: bool
    changes: tuple[tuple[str, Any], ...] = ()

    def run_id(self, seed: int, epochs: int, d_model: int = 256) -> str:
        return f"{self.name}-s{seed}-e{epochs}" + (f"-d{d_model}" if d_model != 256 else "")

    @property
    def ablation(self) -> bool:
        return self.name.startswith("token-")


def methods(setup: Setup) -> list[Method]:
    out = [Method("pooled", False)]
    if token_features_available():
        out.append(Method("token", True))
        if setup.ablation:
            out += [Method(f"token-no-{w.removesuffix('_weight')}", True, ((w, 0.0),)) for w in LOSS_WEIGHTS]
            if setup.states_arm:
                out.append(Method("token-states", True, (("text_input", "states"),)))  # contextual states, not ids
    else:
        setup.notes.append("token ICA skipped: features.tokens / token-aware pretrain_ica not available")
    return out


def pretrain(setup: Setup, sub: DatasetPaths, method: Method, seed: int) -> dict:
    """Pretrain (or continue, or reuse) one run on the 90%; pretrain_ica checkpoints every epoch."""
    from models.pretraining.ica import ICAConfig
    from models.pretraining.pretrain import pretrain_ica

    cfg = ICAConfig(
        epochs=setup.epochs, seed=seed, holdout=setup.holdout, d_model=setup.d_model, **dict(method.changes)
    )
    tokens = {"image_tokens": IMAGE_TOK, "text_tokens": TEXT_TOK} if method.tokens else {}
    return pretrain_ica(
        sub,
        IMAGE,
        TEXT,
        cfg,
        run_id=method.run_id(seed, setup.epochs, setup.d_model),
        progress=True,
        threads=setup.threads,
        **tokens,
    )


def encode_all(paths: DatasetPaths, run_dir: Path, method: Method) -> dict[str, np.ndarray]:
    """mm, image and text embeddings of every item of the full dataset by the run's selected encoder."""
    import torch

    from models.pretraining.apply import load_encoder
    from models.pretraining.pretrain import _Tensors, encode_catalog, load_catalog

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _ = load_encoder(run_dir, device)
    tokens = (IMAGE_TOK, TEXT_TOK) if method.tokens else (None, None)
    cat = load_catalog(paths, IMAGE, TEXT, *tokens)
    data, idx = _Tensors(cat, device), np.arange(cat.n)
    return {what: encode_catalog(model, data, idx, what) for what in ("mm", "image", "text")}


# --------------------------------------------------------------------------------- evaluation
@dataclass
class Split:
    """Held-out items (fixed by seed 0) and the labels of every item."""

    test: np.ndarray  # bool (n,)
    colour: list[str | None]
    ptype: list[str | None]

    @property
    def train(self) -> np.ndarray:
        return ~self.test


def probes(vectors: dict[str, np.ndarray], split: Split, seed: int, c: float | None) -> dict[str, float]:
    """Colour and product-type probe accuracy from each vector (fitted on train, scored on test)."""
    out = {}
    tr, te = split.train, split.test
    for label, y in (("colour", split.colour), ("type", split.ptype)):
        ytr, yte = [y[i] for i in np.flatnonzero(tr)], [y[i] for i in np.flatnonzero(te)]
        for what, x in vectors.items():
            out[f"{label}/{what}"] = linear_probe(x[tr], ytr, x[te], yte, seed=seed, c=c)
    return out


def evaluate_run(
    paths: DatasetPaths, run_dir: Path, method: Method, split: Split, seed: int, c: float | None
) -> dict[str, float]:
    z = encode_all(paths, run_dir, method)
    r = retrieval(z["image"][split.test], z["text"][split.test])
    return {"R@1": r["mean_recall@1"], "R@10": r["mean_recall@10"], **probes(z, split, seed, c)}


def evaluate_raw(paths: DatasetPaths, split: Split, c: float | None) -> dict[str, float]:
    """Raw features: ridge-mapped retrieval, probes on the raw vectors and their concatenation."""
    from models.pretraining.pretrain import concat_vectors, load_catalog

    cat = load_catalog(paths, IMAGE, TEXT)
    img, txt = cat.image, cat.text
    mapped = ridge_map(img[split.train], txt[split.train], img[split.test], seed=0)
    r = retrieval(mapped, txt[split.test])
    mm = concat_vectors(img, cat.image_valid, txt, cat.text_valid)
    return {
        "R@1": r["mean_recall@1"],
        "R@10": r["mean_recall@10"],
        **probes({"mm": mm, "image": img, "text": txt}, split, 0, c),
    }


def majority(split: Split) -> dict[str, float]:
    tr, te = np.flatnonzero(split.train), np.flatnonzero(split.test)
    out = {}
    for label, y in (("colour", split.colour), ("type", split.ptype)):
        acc = majority_accuracy([y[i] for i in tr], [y[i] for i in te])
        out.update({f"{label}/{what}": acc for what in ("mm", "image", "text")})
    return out


def cached(path: Path, make, newer_than: Path | None = None) -> dict:
    """JSON result at `path`, recomputed when absent or older than `newer_than` (a rerun run)."""
    if path.exists() and (newer_than is None or path.stat().st_mtime >= newer_than.stat().st_mtime):
        return read_json(path)
    value = make()
    write_json(value, path)
    return value


# --------------------------------------------------------------------------------- report
COLUMNS = ("R@1", "R@10", "colour/mm", "colour/image", "colour/text", "type/mm", "type/image", "type/text")


def summarize(per_seed: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, list[float]]]:
    """method → column → [mean, std] over seeds (std 0 with one seed or for seedless rows)."""
    out: dict[str, dict[str, list[float]]] = {}
    for name, rows in per_seed.items():
        out[name] = {}
        for col in COLUMNS:
            vals = [r[col] for r in rows if col in r]
            if vals:
                out[name][col] = [float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0]
    return out


def markdown(setup: Setup, summary: dict, meta: dict) -> str:
    head = "| method | " + " | ".join(COLUMNS) + " |"
    lines = [
        (
            f"# ICA on the apparel catalog: held-out retrieval and linear probes ({meta['n_items']} items, "
            f"{meta['n_test']} held out)"
        ),
        "",
        (
            f"Command: `{meta['command']}`. Seeds {setup.seeds}, {setup.epochs} epochs, {setup.threads} thread(s), "
            f"{meta['machine']}. Mean ± std over pretraining seeds (raw and majority rows have no seed)."
        ),
        "",
        (
            "R@k: image→text and text→image Recall@k, mean of both directions, among the held-out items "
            f"(chance R@1 {meta['chance@1']:.4f}, R@10 {meta['chance@10']:.4f}). Raw: image vectors mapped into "
            "the text space by ridge regression fitted on the 90% (raw concatenation has no shared space). "
            "colour/* and type/*: linear-probe accuracy (multinomial logistic regression, standardized features, "
            f"C {setup.probe_c or 'chosen on the training part'}) for the top {TOP_COLOURS} normalized colours and "
            "the product type, from the mm vector and from each single modality (raw vectors; the ICA's single-modality embeddings)."
        ),
        "",
        head,
        "|" + "---|" * (len(COLUMNS) + 1),
    ]
    for name, cols in summary.items():
        cells = [f"{cols[c][0]:.4f} ± {cols[c][1]:.4f}" if c in cols else "—" for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Per-epoch retrieval on pretraining's validation items: `{meta['png']}`."]
    rates = {k: v["items_per_s"] for k, v in (meta.get("speed") or {}).items() if v.get("items_per_s")}
    if rates:  # a rerun that found every table up to date has no rate to report
        lines += ["", "Extraction: " + "; ".join(f"{k}: {v} items/s" for k, v in rates.items())]
    if meta.get("pretrain_speed"):
        lines += ["Pretraining: " + "; ".join(f"{k}: {v:.0f} items/s" for k, v in meta["pretrain_speed"].items())]
    lines += [f"- {n}" for n in setup.notes]
    return "\n".join(lines) + "\n"


def curves_png(histories: dict[str, list[dict]], out: Path) -> Path:
    """Per-epoch held-out retrieval (mean R@1 and R@10 on pretraining's validation items), one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from store.tables import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    groups = sorted({k.rsplit(" s", 1)[0] for k in histories})
    colours = {g: plt.cm.tab10(i % 10) for i, g in enumerate(groups)}
    for label, hist in histories.items():
        group = label.rsplit(" s", 1)[0]
        for ax, k in zip(axes, (1, 10)):
            pts = [(h["epoch"], h[f"retrieval/mean_recall@{k}"]) for h in hist if f"retrieval/mean_recall@{k}" in h]
            if pts:
                ax.plot(*zip(*pts), color=colours[group], alpha=0.8, label=label)
    for ax, k in zip(axes, (1, 10)):
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"mean Recall@{k} (image↔text)")
        ax.set_title(f"validation retrieval R@{k}")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out


# --------------------------------------------------------------------------------- main
def run(setup: Setup, out_prefix: Path, command: str) -> dict:
    import torch

    torch.set_num_threads(setup.threads)
    setup.work.mkdir(parents=True, exist_ok=True)
    paths = ingest_catalog(setup)
    tok = "-tok" if token_features_available() else ""
    speed = cached(setup.work / f"extract-{setup.tag}{tok}.json", lambda: extract_all(setup, paths))
    from models.pretraining.pretrain import load_catalog

    cat = load_catalog(paths, IMAGE, TEXT)
    both = cat.image_valid & cat.text_valid
    test = holdout_mask(cat.n, setup.holdout, seed=0, eligible=both)
    labels = labels_by_asin(subset_tsv(setup))
    colour = top_labels([labels.get(a, (None, None))[0] for a in cat.asins], TOP_COLOURS)
    ptype = top_labels([labels.get(a, (None, None))[1] for a in cat.asins], TOP_COLOURS)
    split = Split(test, colour, ptype)
    sub = train_dataset(setup, paths, test)
    res_dir = setup.work / f"results-{setup.tag}-c{setup.probe_c or 'auto'}"

    per_seed: dict[str, list[dict]] = {"majority": [majority(split)]}
    per_seed["raw (ridge / concat)"] = [cached(res_dir / "raw.json", lambda: evaluate_raw(paths, split, setup.probe_c))]
    histories: dict[str, list[dict]] = {}
    item_speed: dict[str, float] = {}
    for method in methods(setup):
        for seed in setup.seeds[: setup.ablation_seeds] if method.ablation else setup.seeds:
            summary = pretrain(setup, sub, method, seed)
            checkpoint = Path(summary["checkpoint"])  # rewritten only when the run trains further
            row = cached(
                res_dir / f"{method.run_id(seed, setup.epochs, setup.d_model)}.json",
                lambda s=summary, m=method, sd=seed: evaluate_run(
                    paths, Path(s["run_dir"]), m, split, sd, setup.probe_c
                ),
                newer_than=checkpoint,
            )
            per_seed.setdefault(f"{method.name} ICA", []).append(row)
            histories[f"{method.name} s{seed}"] = summary["history"]
            rates = [h["train_items_per_s"] for h in summary["history"] if "train_items_per_s" in h]
            if rates:
                item_speed[method.name] = float(np.median(rates))
    summary = summarize(per_seed)
    png = curves_png(histories, out_prefix.with_suffix(".png"))
    meta = {
        "command": command,
        "n_items": cat.n,
        "n_test": int(test.sum()),
        "n_train": int((~test).sum()),
        "chance@1": min(1, int(test.sum())) / max(int(test.sum()), 1),
        "chance@10": min(10, int(test.sum())) / max(int(test.sum()), 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s){', CUDA' if torch.cuda.is_available() else ''}",
        "png": str(png.relative_to(REPO)) if png.is_relative_to(REPO) else str(png),
        "speed": speed,
        "pretrain_speed": item_speed,
        "colour_counts": _counts([colour[i] for i in np.flatnonzero(test)]),
        "type_counts": _counts([ptype[i] for i in np.flatnonzero(test)]),
    }
    result = {
        "setup": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(setup).items()},
        "meta": meta,
        "summary": summary,
        "per_seed": per_seed,
    }
    write_json(result, out_prefix.with_suffix(".json"))
    text = markdown(setup, summary, meta)
    from store.tables import atomic_path

    with atomic_path(out_prefix.with_suffix(".md")) as tmp:
        tmp.write_text(text)
    print(text)
    return result


def _counts(values: list[str | None]) -> dict[str, int]:
    from collections import Counter

    return dict(Counter(v for v in values if v is not None).most_common())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="pretraining seeds 0..N-1")
    ap.add_argument("--epochs", type=int, default=30, help="pretraining epochs (patience stops earlier)")
    ap.add_argument("--items", type=int, default=None, help="a seeded sample of N items (quick runs)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--d-model", type=int, default=256, help="encoder width (pooled and token encoders alike)")
    ap.add_argument("--ablation-seeds", type=int, default=1, help="seeds per ablation arm (the first N of --seeds)")
    ap.add_argument(
        "--states-arm", action="store_true", help="with --ablation: also text_input=states (contextual states)"
    )
    ap.add_argument("--batch-size", type=int, default=64, help="feature extraction batch size")
    ap.add_argument(
        "--probe-c",
        type=float,
        default=None,
        help="fixed C of the linear probes (default: chosen from 0.01/0.1/1 on the training part)",
    )
    ap.add_argument(
        "--ablation",
        action="store_true",
        help="also train the token ICA with each loss weight at 0 in turn, and on text states instead of ids",
    )
    ap.add_argument(
        "--work",
        type=Path,
        default=None,
        help="cache dir (default $ANCHORREC_BENCH_WORK/ica_apparel or /tmp/anchorrec-bench/ica_apparel)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "ica_apparel", help="output prefix (.md, .json, .png)")
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.epochs < 1 or (args.items is not None and args.items < 20) or args.threads < 1:
        ap.error("--seeds, --epochs and --threads must be ≥ 1 and --items ≥ 20")
    if not (SRC / "items.tsv").is_file():
        ap.error(f"{SRC}/items.tsv not found: the apparel set lives in ../shared/data")
    work = args.work or Path(os.environ.get("ANCHORREC_BENCH_WORK", "/tmp/anchorrec-bench")) / "ica_apparel"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    setup = Setup(
        work=work,
        n_items=args.items,
        epochs=args.epochs,
        seeds=list(range(args.seeds)),
        threads=args.threads,
        ablation=args.ablation,
        batch_size=args.batch_size,
        probe_c=args.probe_c,
        d_model=args.d_model,
        ablation_seeds=args.ablation_seeds,
        states_arm=args.states_arm,
    )
    out = args.out
    if args.items and args.out == RESULTS / "ica_apparel":
        out = work / f"ica_apparel-{setup.tag}"  # a quick run never overwrites the full run's results
    t0 = time.perf_counter()
    run(setup, out, "python benchmarks/accuracy/ica_apparel.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    log.info("done in %.0f s; wrote %s.{md,json,png}", time.perf_counter() - t0, out)


if __name__ == "__main__":
    main()
