"""Every GPU figure the project owes, in one run: what `benchmarks/gpu/gpu_check.sh` executes.

1. AnchorRec on MMRec Sports (Sports args of METHOD.md's reference run): seconds per training
   epoch (every batch of the trainer's epoch 0, after a warm-up epoch) and per full evaluation
   (all 35,598 users × 18,357 items, valid split), goal ≤ 0.6 s and ≤ 0.5 s on an H100;
2. image extraction with CLIP ViT-B-32 at random weights (saved to a local checkpoint and loaded
   through features.clip, exactly as a user's checkpoint): model-only img/s and files → vectors
   img/s on generated JPEGs, with the bound (decode or model) named;
3. ICA pretraining items/s on a synthetic catalog of EfficientNet-sized image and MiniLM-sized
   text vectors.

Item features for Sports are the MiniLM keyword vectors when `--features FILE.npy` is given
(benchmarks/gpu/gpu_prepare.sh writes them), else random vectors of the same shape: speed depends on
the shapes, not the values. Runs on CPU too (`--quick` shrinks every part) so it is tested here.

    python benchmarks/gpu/gpu_check.py --sports DIR [--features sports_minilm.npy] --out DIR [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common

REPO = Path(__file__).resolve().parents[2]
SPORTS_ARGS = dict(aal_loss=0.01, amp_loss=0.01, tau=0.25, n_layers=1, lambda_weight=1e-3, recover_lambda=0.0005)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


# --------------------------------------------------------------------------- 1. Sports training
def sports_inputs(src: Path, features: Path | None, home: Path) -> tuple[Any, np.ndarray, str]:
    from models.training.data import load_interactions
    from pipelines.mmrec import import_mmrec
    from store.layout import dataset_paths

    paths = dataset_paths("sports", home)
    if not paths.interactions.exists():
        import_mmrec(src, "sports", home=home, progress=False)
    data = load_interactions(paths)
    if features is not None:
        x, what = np.load(features).astype(np.float32), f"MiniLM keyword vectors ({features.name})"
    else:
        x, what = np.random.default_rng(0).normal(size=(data.n_items, 384)).astype(np.float32), "random 384-d vectors"
    if len(x) != data.n_items:
        raise ValueError(f"{features}: {len(x)} rows for {data.n_items} items")
    return data, x, what


def bench_training(args: argparse.Namespace, device: str) -> dict:
    from models.anchorrec import AnchorRec, AnchorRecConfig
    from models.evaluation.metrics import RankingEvaluator
    from models.training.data import build_graph_data
    from models.training.trainer import BPRSampler, evaluate_model

    home = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    data, x, what = sports_inputs(args.sports, args.features, home)
    t_graph, graph = timed(lambda: build_graph_data(data, {"v": x, "t": x, "mm": x}, knn_k=10, device=device), device)
    torch.manual_seed(0)
    model = AnchorRec(graph, AnchorRecConfig(**SPORTS_ARGS)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)  # the trainer's optimizer
    batches = torch.as_tensor(BPRSampler(data).epoch(seed=0, epoch=0), device=device).split(2048)
    if args.quick:
        batches = batches[:4]

    def epoch() -> float:
        total = 0.0
        for b in batches:
            loss = model.batch_loss(b[:, 0], b[:, 1], b[:, 2])["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        return total

    epochs = [timed(epoch, device)[0] for _ in range(1 + args.repeat)]  # the first is the warm-up
    evaluator = RankingEvaluator(data.train_csr, data.valid_csr, (10, 20, 50), device=torch.device(device))

    evals = [timed(lambda: evaluate_model(model, evaluator), device) for _ in range(1 + args.repeat)]
    return {
        "features": what,
        "users": data.n_users,
        "items": data.n_items,
        "batches_per_epoch": len(batches),
        "graph_build_s": round(t_graph, 2),
        "epoch_s": round(statistics.median(epochs[1:]), 3),
        "epoch_s_warmup": round(epochs[0], 3),
        "eval_s": round(statistics.median(t for t, _ in evals[1:]), 3),
        "valid_recall@20": round(evals[-1][1]["recall@20"], 4),
    }


# --------------------------------------------------------------------------- 2. CLIP extraction
def random_clip_checkpoint(folder: Path) -> Path:
    """ViT-B-32 with random weights, saved where a user's checkpoint would be (no download)."""
    import open_clip

    torch.manual_seed(0)
    net = open_clip.create_model("ViT-B-32", pretrained=None)
    path = folder / "vit_b32_random.pt"
    torch.save(net.state_dict(), path)
    return path


def jpeg_files(folder: Path, n: int, side: int = 320) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 255, size=(side, side, 3), dtype=np.uint8))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=88)
        path = folder / f"img{i:05d}.jpg"
        path.write_bytes(buf.getvalue())
        files.append(path)
    return files


def bench_extraction(args: argparse.Namespace, device: str) -> dict:
    from features.extract import extract_images
    from features.registry import get_encoder

    folder = Path(tempfile.mkdtemp(prefix="gpu-check-img-"))
    ckpt = random_clip_checkpoint(folder)
    encoder = get_encoder(f"clip-image:ViT-B-32:{ckpt}", device=device)
    n = 64 if args.quick else args.images
    batch = torch.randn(args.batch_size, 3, encoder.image_size, encoder.image_size)
    encoder.encode(batch)  # warm-up
    reps = 2 if args.quick else max(1, n // args.batch_size)
    t_model, _ = timed(lambda: [encoder.encode(batch) for _ in range(reps)], device)
    files = jpeg_files(folder, n)
    extract_images(encoder, files[: args.batch_size], batch_size=args.batch_size, workers=args.decode_workers)
    t_files, (vectors, valid, _) = timed(
        lambda: extract_images(encoder, files, batch_size=args.batch_size, workers=args.decode_workers), device
    )
    model_ips, files_ips = reps * args.batch_size / t_model, n / t_files
    return {
        "model": f"ViT-B-32, random weights from a local checkpoint; autocast bf16 on CUDA; batch {args.batch_size}",
        "model_img_s": round(model_ips, 1),
        "files_img_s": round(files_ips, 1),
        "decode_workers": args.decode_workers,
        "bound": "model" if files_ips > 0.85 * model_ips else "decode (JPEG → tensor on the CPU)",
        "vectors_ok": int(valid.sum()),
        "dim": int(vectors.shape[1]),
    }


# --------------------------------------------------------------------------- 3. ICA pretraining
def bench_ica(args: argparse.Namespace, device: str) -> dict:
    """Pooled inputs on a large synthetic catalog; token inputs on an apparel-sized one."""
    from models.pretraining.ica import ICAConfig
    from models.pretraining.pretrain import pretrain_ica

    epochs = 1 if args.quick else args.ica_epochs
    out = {"epochs": epochs, "note": "includes per-epoch evaluation and checkpointing, as a real run"}
    for label, n in (
        ("pooled", 512 if args.quick else args.ica_items),
        ("tokens", 256 if args.quick else args.ica_token_items),
    ):
        paths, asins, img, rng = synthetic_catalog(n)
        tokens = {}
        if label == "tokens":
            write_synthetic_tokens(paths, asins, img, rng)
            tokens = {"image_tokens": "img-tok", "text_tokens": "txt-tok"}
        cfg = ICAConfig(epochs=epochs, seed=0)
        seconds, summary = timed(
            lambda: pretrain_ica(paths, "img", "txt", cfg, run_id=f"gpu-{label}", progress=False, **tokens), device
        )
        trained = int(summary.get("n_train_items", n))
        out.update(
            {
                f"{label}_items": n,
                f"{label}_seconds": round(seconds, 2),
                f"{label}_items_per_s": round(trained * epochs / seconds, 1),
            }
        )
    out["items_per_s"] = out["pooled_items_per_s"]
    return out


def synthetic_catalog(n: int) -> tuple[Any, list[str], np.ndarray, np.random.Generator]:
    """A catalog of n items with EfficientNet-sized image and MiniLM-sized text vectors that share a signal."""
    import pyarrow as pa

    from store import schemas
    from store.layout import dataset_paths
    from store.tables import write_table
    from store.vectors import write_features

    rng = np.random.default_rng(0)
    paths = dataset_paths("catalog", Path(tempfile.mkdtemp(prefix="gpu-check-ica-")))
    asins = [f"B{i:09d}" for i in range(n)]
    items = pa.table(
        {
            "item_id": pa.array(np.arange(n, dtype=np.int32)),
            "asin": asins,
            "title": ["t"] * n,
            "description": [None] * n,
            "brand": [None] * n,
            "categories": pa.array([[]] * n, pa.list_(pa.string())),
            "image_url": [None] * n,
            "text": ["t"] * n,
        }
    )
    write_table(items, paths.items, schemas.ITEMS)
    img = rng.normal(size=(n, 1280)).astype(np.float32)
    txt = (img[:, :384] + 0.1 * rng.normal(size=(n, 384))).astype(np.float32)
    for name, x, modality in (("img", img, "image"), ("txt", txt, "text")):
        write_features(
            paths.feature(name),
            asins,
            np.arange(n),
            x,
            encoder="synthetic",
            model="synthetic",
            weights="",
            modality=modality,
            input_hash=name,
        )
    return paths, asins, img, rng


def write_synthetic_tokens(paths: Any, asins: list[str], img: np.ndarray, rng: np.random.Generator) -> None:
    """Apparel-sized token tables: 16 EfficientNet regions (1280-d), 24 MiniLM word pieces (384-d) with ids."""
    from store.tokens import token_columns, write_tokens

    n = len(asins)
    image = (img[:, None, :] + 0.5 * rng.normal(size=(n, 16, 1280))).astype(np.float32)
    ids = rng.integers(1000, 30000, size=(n, 24)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 101, 102
    text = (img[:, None, :384] + 0.5 * rng.normal(size=(n, 24, 384))).astype(np.float32)
    meta = {
        "tokenizer": "synthetic",
        "vocab_size": 30522,
        "mask_token_id": 103,
        "cls_id": 101,
        "sep_id": 102,
        "pad_id": 0,
        "max_length": 24,
    }
    for name, x, tids, modality, token_meta in (
        ("img-tok", image, None, "image", {"grid": 4}),
        ("txt-tok", text, ids, "text", meta),
    ):
        write_tokens(
            paths.token_feature(name),
            asins,
            np.arange(n),
            token_columns(x, np.full(n, x.shape[1]), tids),
            [None] * n,
            dim=x.shape[2],
            max_tokens=x.shape[1],
            modality=modality,
            token_meta=token_meta,
            metadata={"encoder": "synthetic", "model": name, "weights": "", "input_hash": name},
        )


# --------------------------------------------------------------------------- report
def table(device_name: str, results: dict) -> str:
    t, e, i = results.get("training", {}), results.get("extraction", {}), results.get("ica", {})
    rows = [
        (
            f"AnchorRec Sports, s / training epoch ({t.get('batches_per_epoch')} batches of 2048)",
            t.get("epoch_s"),
            "≤ 0.6 s (H100)",
        ),
        ("AnchorRec Sports, s / full evaluation", t.get("eval_s"), "≤ 0.5 s (H100)"),
        ("CLIP ViT-B-32 extraction, model img/s", e.get("model_img_s"), "report"),
        ("CLIP ViT-B-32 extraction, files → vectors img/s", e.get("files_img_s"), f"bound: {e.get('bound')}"),
        ("ICA pretraining (pooled inputs), items/s", i.get("pooled_items_per_s"), "report"),
        ("ICA pretraining (16 image + 24 text tokens), items/s", i.get("tokens_items_per_s"), "report"),
    ]
    lines = [f"device: {device_name}", "", "| figure | measured | goal / note |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    errors = {k: v["error"] for k, v in results.items() if isinstance(v, dict) and "error" in v}
    lines += [f"\n{k} failed: {v}" for k, v in errors.items()]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sports", type=Path, default=REPO.parent / "shared" / "data" / "mmrec-sports")
    ap.add_argument("--features", type=Path, default=None, help="(n_items, d) .npy item vectors for Sports")
    ap.add_argument("--out", type=Path, default=REPO / "bench-out" / "gpu")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--decode-workers", type=int, default=12)
    ap.add_argument("--ica-items", type=int, default=50_000)
    ap.add_argument("--ica-token-items", type=int, default=8_000, help="items of the token run (apparel-sized)")
    ap.add_argument("--ica-epochs", type=int, default=3)
    ap.add_argument(
        "--only", nargs="+", choices=["training", "extraction", "ica"], default=["training", "extraction", "ica"]
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check that it runs (CPU)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    name = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    )
    results: dict[str, Any] = {"device": name, "torch": torch.__version__, "quick": args.quick}
    for part, fn in (("training", bench_training), ("extraction", bench_extraction), ("ica", bench_ica)):
        if part not in args.only:
            continue
        t0 = time.perf_counter()
        try:
            results[part] = fn(args, args.device)
        except Exception as exc:  # noqa: BLE001 - one failed part must not cost the others' figures
            results[part] = {"error": f"{type(exc).__name__}: {exc}"}
        results[part]["wall_s"] = round(time.perf_counter() - t0, 1)
        print(part, json.dumps(results[part]), flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2))
    text = table(name, results)
    (args.out / "gpu_check.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
