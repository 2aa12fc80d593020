"""Pretrain the inter-content encoder on a dataset's catalog and write its `mm` feature table.

Only the catalog is trained on (image + text feature tables); interactions, when the dataset has
them, are read for one metric only (content-only top-N on the validation split). Everything a
run needs to continue lives in runs/ica-<run_id>/, rewritten atomically after every epoch, so a
killed run restarted with the same run_id picks up after its last finished epoch and ends where
an uninterrupted run would have (each epoch reseeds its shuffling, masking and dropout).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from models.content_metrics import content_topn, cross_modal_retrieval
from models.ica import MODALITIES, ICAConfig, InterContentEncoder
from store.errors import StoreError
from store.fixes import repair
from store.layout import DatasetPaths
from store.tables import atomic_path, read_json, read_table, write_json
from store.vectors import align_features, read_features, write_features

log = logging.getLogger(__name__)

# Fields that may change when a run is continued: they do not change what an epoch computes.
RESUMABLE_CHANGES = ("epochs", "patience", "eval_every")


@dataclass
class Catalog:
    """The two feature tables aligned with items.parquet (row i = item_id i)."""

    asins: list[str]
    item_ids: np.ndarray
    image: np.ndarray
    image_valid: np.ndarray
    text: np.ndarray
    text_valid: np.ndarray
    image_meta: dict[str, str]
    text_meta: dict[str, str]

    @property
    def n(self) -> int:
        return len(self.asins)


def load_catalog(paths: DatasetPaths, image_feature: str, text_feature: str) -> Catalog:
    """Read items.parquet and the two feature tables, matched by asin in item_id order."""
    items = read_table(paths.items, columns=["item_id", "asin"])
    ids = items.column("item_id").to_numpy().astype(np.int64)
    if not np.array_equal(np.sort(ids), np.arange(len(ids))):
        raise StoreError(paths.items, "item_id is not a permutation of 0..n-1", repair(paths.items))
    order = np.argsort(ids)
    all_asins = items.column("asin").to_pylist()
    asins = [all_asins[i] for i in order]
    out = {}
    for m, name in (("image", image_feature), ("text", text_feature)):
        path = paths.feature(name)
        table = read_features(path)
        if table.metadata.get("modality") not in (None, m):
            log.warning("%s: modality is %r, used here as %s", path, table.metadata.get("modality"), m)
        vectors, valid = align_features(table, asins, source=path)
        if not np.isfinite(vectors[valid]).all():
            bad = np.where(valid & ~np.isfinite(vectors).all(1))[0][:5]
            raise StoreError(path, f"non-finite values in the vectors of item_id(s) {bad.tolist()}", repair(path))
        out[m] = (vectors, valid, table.metadata)
    return Catalog(
        asins=asins,
        item_ids=np.arange(len(asins)),
        image=out["image"][0],
        image_valid=out["image"][1],
        text=out["text"][0],
        text_valid=out["text"][1],
        image_meta=out["image"][2],
        text_meta=out["text"][2],
    )


def concat_vectors(image: np.ndarray, image_valid: np.ndarray, text: np.ndarray, text_valid: np.ndarray) -> np.ndarray:
    """[v/‖v‖, t/‖t‖], row-normalized; a missing modality is a zero block."""
    def unit(x: np.ndarray, ok: np.ndarray) -> np.ndarray:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return np.where(ok[:, None], x, 0.0).astype(np.float32)

    cat = np.concatenate([unit(image, image_valid), unit(text, text_valid)], axis=1)
    return (cat / np.maximum(np.linalg.norm(cat, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _hash(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _inputs_hash(cat: Catalog) -> str:
    """What the inputs are: both tables' own input hashes and the encoders that made them."""
    keys = ("input_hash", "encoder", "model", "weights", "dim")
    return _hash({k: cat.image_meta.get(k) for k in keys}, {k: cat.text_meta.get(k) for k in keys}, cat.asins)


def write_concat_feature(paths: DatasetPaths, image_feature: str, text_feature: str, name: str | None = None) -> Path:
    """The ablation's baseline `mm`: normalized concatenation of the raw image and text features."""
    cat = load_catalog(paths, image_feature, text_feature)
    name = name or f"concat-{image_feature}-{text_feature}"
    valid = cat.image_valid | cat.text_valid
    return write_features(
        paths.feature(name),
        cat.asins,
        cat.item_ids,
        concat_vectors(cat.image, cat.image_valid, cat.text, cat.text_valid),
        encoder="concat",
        model=f"concat({image_feature},{text_feature}) of L2-normalized blocks",
        weights="",
        modality="mm",
        input_hash=_inputs_hash(cat),
        valid=valid,
        reasons=[None if ok else "no image and no text feature" for ok in valid],
    )


def split_holdout(both: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Items (among those with both modalities) kept out of training for the retrieval metric."""
    idx = np.flatnonzero(both)
    n_out = int(round(share * len(idx)))
    if n_out < 2 or len(idx) - n_out < 2:
        return np.zeros(len(both), dtype=bool)
    rng = np.random.default_rng([seed, 7])
    out = np.zeros(len(both), dtype=bool)
    out[rng.choice(idx, n_out, replace=False)] = True
    return out


class _Tensors:
    """The catalog on the training device as (n, 1, D) pooled-token tensors with validity masks."""

    def __init__(self, cat: Catalog, device: torch.device) -> None:
        self.x = {
            "image": torch.as_tensor(cat.image, device=device).unsqueeze(1),
            "text": torch.as_tensor(cat.text, device=device).unsqueeze(1),
        }
        self.valid = {
            "image": torch.as_tensor(cat.image_valid, device=device).unsqueeze(1),
            "text": torch.as_tensor(cat.text_valid, device=device).unsqueeze(1),
        }

    def batch(self, idx: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {m: (self.x[m][idx], self.valid[m][idx]) for m in MODALITIES}


@torch.no_grad()
def encode_catalog(model: InterContentEncoder, data: _Tensors, idx: np.ndarray, what: str, batch: int = 1024) -> np.ndarray:
    """`mm` (fused) or one modality's contrastive embedding ('image'/'text') for items `idx`."""
    model.eval()
    dev = data.x["image"].device
    out = []
    for s in range(0, len(idx), batch):
        b = data.batch(torch.as_tensor(idx[s : s + batch], device=dev))
        out.append(model.fuse(b) if what == "mm" else model.embed_modality(what, *b[what]))
    if not out:
        return np.zeros((0, model.cfg.d_model), dtype=np.float32)
    return torch.cat(out).float().cpu().numpy()


def _lr(cfg: ICAConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up then cosine decay to 0: a function of the step alone, so resuming needs no state."""
    warm = cfg.warmup_epochs * steps_per_epoch
    total = max(cfg.epochs * steps_per_epoch, warm + 1)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / (total - warm)))


def _optimizer(model: InterContentEncoder, cfg: ICAConfig) -> torch.optim.Optimizer:
    """AdamW; matrices decay, biases / norms / embeddings / the temperature do not (nanoGPT)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "emb" not in n]
    keep = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "emb" not in n)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": keep, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _train_epoch(
    model: InterContentEncoder, opt: torch.optim.Optimizer, data: _Tensors, train_idx: np.ndarray, cfg: ICAConfig, epoch: int
) -> dict[str, float]:
    """One pass over the training items; reseeded per epoch so a resumed run repeats it exactly."""
    torch.manual_seed(cfg.seed * 100_003 + epoch)
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    perm = torch.as_tensor(train_idx)[torch.randperm(len(train_idx), generator=gen)]
    steps = math.ceil(len(train_idx) / cfg.batch_size)
    dev = data.x["image"].device
    model.train()
    sums = {"loss": 0.0, "contrastive": 0.0, "mmm": 0.0, "fusion": 0.0}
    for s in range(steps):
        idx = perm[s * cfg.batch_size : (s + 1) * cfg.batch_size].to(dev)
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, (epoch - 1) * steps + s, steps)
        b = data.batch(idx)
        out = model(b["image"][0], b["image"][1], b["text"][0], b["text"][1])
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        for k in sums:
            sums[k] += float(out[k].detach())
    return {f"loss/{k}": v / max(steps, 1) for k, v in sums.items()}


class _Evaluator:
    """Per-epoch intermediate metrics: held-out retrieval and, with interactions, content top-N."""

    def __init__(self, cat: Catalog, data: _Tensors, holdout: np.ndarray, interactions) -> None:
        self.data = data
        self.holdout_idx = np.flatnonzero(holdout)
        self.has_any = cat.image_valid | cat.text_valid
        self.inter = interactions

    def __call__(self, model: InterContentEncoder) -> dict[str, float]:
        out: dict[str, float] = {"temperature": model.temperature()}
        if len(self.holdout_idx) >= 2:
            zi = encode_catalog(model, self.data, self.holdout_idx, "image")
            zt = encode_catalog(model, self.data, self.holdout_idx, "text")
            r = cross_modal_retrieval(zi, zt, ks=(1, 10))
            out.update({f"retrieval/{k}": v for k, v in r.items()})
        if self.inter is not None:
            mm = encode_catalog(model, self.data, np.arange(len(self.has_any)), "mm")
            mm[~self.has_any] = 0.0
            out.update({f"content/{k}": v for k, v in content_topn(mm, self.inter.train_csr, self.inter.valid_csr).items()})
        return out


def _load_interactions(paths: DatasetPaths, cat: Catalog):
    if not paths.interactions.exists():
        return None
    from models.data import load_interactions

    data = load_interactions(paths)
    if list(data.asins) != cat.asins:
        raise StoreError(paths.interactions, "items of the interactions and of the features disagree", "rerun prepare")
    return data


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _check_resumable(run_dir: Path, cfg: ICAConfig, input_hash: str) -> None:
    saved = read_json(run_dir / "config.json")
    if saved.get("input_hash") != input_hash:
        raise ValueError(
            f"{run_dir}: this run was trained on other feature tables (input hash {saved.get('input_hash')} ≠ "
            f"{input_hash}); pass another run_id"
        )
    old, new = saved.get("config", {}), cfg.to_dict()
    for key in sorted(set(old) | set(new)):
        if key not in RESUMABLE_CHANGES and old.get(key) != new.get(key):
            raise ValueError(
                f"{run_dir}: run was started with ICAConfig.{key}={old.get(key)!r}, now {new.get(key)!r}; "
                "pass another run_id or the same config"
            )


MIN_PAIRED_ITEMS = 4


def check_inputs(paths: DatasetPaths, cat: Catalog, image_feature: str, text_feature: str) -> None:
    """ICA learns from items that have both modalities: with one modality all null its losses are
    exactly 0 and it 'succeeds' as a meaningless model, so refuse before training."""
    for name, valid in ((image_feature, cat.image_valid), (text_feature, cat.text_valid)):
        if not valid.any():
            raise ValueError(
                f"{paths.feature(name)}: no item has a vector, so ICA has nothing to align; pretrain needs image "
                "and text features (the pipeline skips ICA on its own when a modality is missing; give images "
                "with --images DIR)"
            )
    both = int((cat.image_valid & cat.text_valid).sum())
    if both < MIN_PAIRED_ITEMS:
        raise ValueError(
            f"{paths.root}: only {both} item(s) have both an image and a text vector ({image_feature}, "
            f"{text_feature}); ICA needs at least {MIN_PAIRED_ITEMS}"
        )


def pretrain_ica(
    paths: DatasetPaths,
    image_feature: str,
    text_feature: str,
    cfg: ICAConfig,
    run_id: str | None = None,
    progress: bool = True,
) -> dict:
    """Pretrain (or continue) an ICA run and write features/ica-<run_id>.parquet (modality 'mm').

    run_id defaults to a hash of the inputs and the config, so the same call twice reuses the
    finished run. Returns a summary: paths, the untrained (epoch 0), final (selected epoch) and
    baseline metrics, and the per-epoch history (also in runs/ica-<run_id>/metrics.json).
    """
    cat = load_catalog(paths, image_feature, text_feature)
    check_inputs(paths, cat, image_feature, text_feature)
    both = cat.image_valid & cat.text_valid
    input_hash = _inputs_hash(cat)
    run_id = run_id or _hash(input_hash, cfg.to_dict())[:10]
    run_name = f"ica-{run_id}"
    run_dir = paths.run(run_name)
    ckpt_path = run_dir / "checkpoint.pt"
    if (run_dir / "config.json").exists():
        _check_resumable(run_dir, cfg, input_hash)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(
        {"config": cfg.to_dict(), "input_hash": input_hash, "image_feature": image_feature, "text_feature": text_feature},
        run_dir / "config.json",
    )

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    holdout = split_holdout(both, cfg.holdout, cfg.seed)
    train_idx = np.flatnonzero((cat.image_valid | cat.text_valid) & ~holdout)
    if len(train_idx) < 2:
        raise ValueError(f"{paths.root}: only {len(train_idx)} training item(s) with content after the holdout")
    torch.manual_seed(cfg.seed)
    model = InterContentEncoder(cat.image.shape[1], cat.text.shape[1], cfg).to(device)
    for m, x, ok in (("image", cat.image, cat.image_valid), ("text", cat.text, cat.text_valid)):
        rows = x[np.intersect1d(train_idx, np.flatnonzero(ok))]
        if len(rows):
            model.set_normalization(m, torch.as_tensor(rows.mean(0)), torch.as_tensor(rows.std(0)))
    opt = _optimizer(model, cfg)
    data = _Tensors(cat, device)
    inter = _load_interactions(paths, cat)
    evaluate = _Evaluator(cat, data, holdout, inter)

    baselines: dict[str, dict] = {}
    if holdout.any():
        n = int(holdout.sum())
        baselines["chance"] = {f"retrieval/mean_recall@{k}": min(k, n) / n for k in (1, 10)}
    if inter is not None:
        raw = concat_vectors(cat.image, cat.image_valid, cat.text, cat.text_valid)
        baselines["raw_concat"] = {f"content/{k}": v for k, v in content_topn(raw, inter.train_csr, inter.valid_csr).items()}

    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        log.info("resuming %s after epoch %d", run_name, state["epoch"])
    else:
        first = {"epoch": 0, **evaluate(model)}
        state = {
            "epoch": 0,
            "history": [first],
            "best_epoch": 0,
            "best_value": first.get(cfg.select_metric),
            "best_model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "bad_epochs": 0,
            "done": False,
        }
    selectable = state["history"][0].get(cfg.select_metric) is not None
    if not selectable:
        log.warning("%s: %s is not available (no holdout or no interactions): keeping the last epoch", run_name, cfg.select_metric)

    bar = tqdm(total=cfg.epochs, initial=min(state["epoch"], cfg.epochs), desc=run_name, disable=not progress)
    while not state["done"] and state["epoch"] < cfg.epochs:
        epoch = state["epoch"] + 1
        t0 = time.perf_counter()
        row = {"epoch": epoch, **_train_epoch(model, opt, data, train_idx, cfg, epoch)}
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            row.update(evaluate(model))
        row["seconds"] = time.perf_counter() - t0
        state["history"].append(row)
        value = row.get(cfg.select_metric)
        if not selectable or (value is not None and value > state["best_value"]):
            state.update(best_epoch=epoch, best_value=value, bad_epochs=0)
            state["best_model"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif value is not None:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        if cfg.patience and state["bad_epochs"] >= cfg.patience:
            state["done"] = True
        _save_checkpoint(ckpt_path, {**state, "model": model.state_dict(), "optimizer": opt.state_dict(), "config": cfg.to_dict()})
        write_json({"history": state["history"], "baselines": baselines, "best_epoch": state["best_epoch"]}, run_dir / "metrics.json")
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss/loss']:.3f}", sel=f"{value:.3f}" if value is not None else "-")
    bar.close()
    if not state["done"]:
        state["done"] = True
        _save_checkpoint(ckpt_path, {**state, "model": model.state_dict(), "optimizer": opt.state_dict(), "config": cfg.to_dict()})

    # the selected epoch's encoder writes the table
    model.load_state_dict(state["best_model"])
    has_any = cat.image_valid | cat.text_valid
    mm = encode_catalog(model, data, np.arange(cat.n), "mm")
    mm[~has_any] = 0.0
    feature_name = run_name
    feature_path = write_features(
        paths.feature(feature_name),
        cat.asins,
        cat.item_ids,
        mm,
        encoder="ica",
        model=cfg.summary() + f" epoch{state['best_epoch']}",
        weights=str(ckpt_path),
        modality="mm",
        input_hash=_hash(cat.image_meta.get("input_hash"), cat.text_meta.get("input_hash"), input_hash, cfg.to_dict()),
        valid=has_any,
        reasons=[None if ok else "no image and no text feature" for ok in has_any],
        extra={"run_id": run_name, "best_epoch": str(state["best_epoch"]), "image_feature": image_feature, "text_feature": text_feature},
    )
    final = next(r for r in state["history"] if r["epoch"] == state["best_epoch"])
    summary = {
        "run_id": run_name,
        "run_dir": str(run_dir),
        "checkpoint": str(ckpt_path),
        "feature": feature_name,
        "feature_path": str(feature_path),
        "device": str(device),
        "n_items": cat.n,
        "n_train_items": int(len(train_idx)),
        "n_holdout_items": int(holdout.sum()),
        "n_both": int(both.sum()),
        "epochs_run": state["epoch"],
        "best_epoch": state["best_epoch"],
        "select_metric": cfg.select_metric,
        "stopped_early": state["epoch"] < cfg.epochs,
        "baselines": baselines,
        "untrained": state["history"][0],
        "final": final,
        "history": state["history"],
    }
    write_json({k: v for k, v in summary.items()}, run_dir / "metrics.json")
    return summary
