"""Pretrain the inter-content encoder on a dataset's catalog and write its `mm` feature table.

Only the catalog is trained on: per modality a pooled feature table (`features/<name>.parquet`)
or a token table (`tokens/<name>.parquet`). Interactions, when the dataset has them, are read for
one metric only (content-only top-N on the validation split); a catalog-only dataset skips it and
the run's metrics.json says so. Everything a run needs to continue lives in runs/ica-<run_id>/,
rewritten atomically after every epoch, so a killed run restarted with the same run_id picks up
after its last finished epoch and ends where an uninterrupted run would have (each epoch reseeds
its shuffling, masking and dropout). The same files make the run applicable to another dataset
(models.pretraining.apply): config.json holds the config, the input specs and the vocabulary;
the checkpoint holds the weights and the standardization statistics.
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

from models.evaluation.content_metrics import content_topn, cross_modal_retrieval
from models.pretraining.ica import MODALITIES, ICAConfig, InterContentEncoder, Tokens
from models.pretraining.inputs import TokenInputs, load_inputs
from store.errors import StoreError
from store.fixes import repair
from store.layout import DatasetPaths
from store.tables import atomic_path, read_json, read_table, write_json
from store.vectors import write_features

log = logging.getLogger(__name__)

# Fields that may change when a run is continued: they do not change what an epoch computes.
RESUMABLE_CHANGES = ("epochs", "patience", "eval_every")


@dataclass
class Catalog:
    """The two modalities' encoder inputs aligned with items.parquet (row i = item_id i)."""

    asins: list[str]
    image_inputs: TokenInputs
    text_inputs: TokenInputs

    @property
    def n(self) -> int:
        return len(self.asins)

    @property
    def item_ids(self) -> np.ndarray:
        return np.arange(self.n)

    @property
    def image_valid(self) -> np.ndarray:
        return self.image_inputs.valid

    @property
    def text_valid(self) -> np.ndarray:
        return self.text_inputs.valid

    @property
    def image(self) -> np.ndarray:
        """One vector per item (the token mean for a token table)."""
        return self.image_inputs.mean_pool()

    @property
    def text(self) -> np.ndarray:
        return self.text_inputs.mean_pool()


def item_asins(paths: DatasetPaths) -> list[str]:
    """items.parquet's asins in item_id order (the row order of every input)."""
    items = read_table(paths.items, columns=["item_id", "asin"])
    ids = items.column("item_id").to_numpy().astype(np.int64)
    if not np.array_equal(np.sort(ids), np.arange(len(ids))):
        raise StoreError(paths.items, "item_id is not a permutation of 0..n-1", repair(paths.items))
    all_asins = items.column("asin").to_pylist()
    return [all_asins[i] for i in np.argsort(ids)]


def cold_item_mask(paths: DatasetPaths, n: int) -> np.ndarray:
    """Items held out as cold (ingest --cold-items): the encoder is applied to them, never trained on
    them, as a catalog's new items are encoded by an encoder that never saw them."""
    mask = np.zeros(n, dtype=bool)
    if paths.cold_items.exists():
        mask[read_table(paths.cold_items, columns=["item_id"]).column("item_id").to_numpy().astype(np.int64)] = True
    return mask


def load_catalog(
    paths: DatasetPaths,
    image_feature: str | None,
    text_feature: str | None,
    image_tokens: str | None = None,
    text_tokens: str | None = None,
) -> Catalog:
    """Read items.parquet and each modality's table (token table if named, else the pooled one)."""
    asins = item_asins(paths)
    return Catalog(
        asins,
        load_inputs(paths, asins, "image", image_feature, image_tokens),
        load_inputs(paths, asins, "text", text_feature, text_tokens),
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
    """What the inputs are: both tables' own content hashes and the encoders that made them."""
    return _hash(cat.image_inputs.spec, cat.text_inputs.spec, cat.asins)


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
    """The catalog on the training device: per modality (n, T, D) tokens, (n, T) mask, ids."""

    def __init__(self, cat: Catalog, device: torch.device) -> None:
        self.device = device
        src = {"image": cat.image_inputs, "text": cat.text_inputs}
        self.x = {m: torch.as_tensor(src[m].tokens, device=device) for m in MODALITIES}
        self.valid = {m: torch.as_tensor(src[m].mask, device=device) for m in MODALITIES}
        self.ids = {m: None if src[m].ids is None else torch.as_tensor(src[m].ids, device=device) for m in MODALITIES}
        # real tokens first in every row (as token tables store them): a batch can drop trailing padding
        self.left_aligned = {m: bool(torch.equal(v, v.cummin(1).values)) for m, v in self.valid.items()}

    def batch(self, idx: torch.Tensor) -> dict[str, Tokens]:
        """The items' tokens, cut to the longest row of the batch: a title of 12 word pieces then costs
        12 positions, not the table's max_length (padding is masked, so the outputs are the same)."""
        out = {}
        for m in MODALITIES:
            valid = self.valid[m][idx]
            T = max(int(valid.sum(1).max()), 1) if self.left_aligned[m] and len(idx) else valid.shape[1]
            ids_m = self.ids[m]
            ids = None if ids_m is None else ids_m[idx, :T]
            out[m] = Tokens(self.x[m][idx, :T].float(), valid[:, :T], ids)
        return out


def _autocast(device: torch.device):
    """bf16 autocast on CUDA (the transformer's matmuls); a no-op on CPU, where fp32 is faster."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def encode_catalog(
    model: InterContentEncoder, data: _Tensors, idx: np.ndarray, what: str, batch: int = 512
) -> np.ndarray:
    """`mm` (fused) or one modality's contrastive embedding ('image'/'text') for items `idx`."""
    model.eval()
    out = []
    for s in range(0, len(idx), batch):
        b = data.batch(torch.as_tensor(idx[s : s + batch], device=data.device))
        with _autocast(data.device):
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
    model: InterContentEncoder,
    opt: torch.optim.Optimizer,
    data: _Tensors,
    train_idx: np.ndarray,
    cfg: ICAConfig,
    epoch: int,
) -> dict[str, float]:
    """One pass over the training items; reseeded per epoch so a resumed run repeats it exactly."""
    torch.manual_seed(cfg.seed * 100_003 + epoch)
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    perm = torch.as_tensor(train_idx)[torch.randperm(len(train_idx), generator=gen)]
    steps = math.ceil(len(train_idx) / cfg.batch_size)
    model.train()
    sums = {"loss": 0.0, "contrastive": 0.0, "mmm": 0.0, "mlm": 0.0, "fusion": 0.0, "mlm_acc": 0.0}
    t0 = time.perf_counter()
    for s in range(steps):
        idx = perm[s * cfg.batch_size : (s + 1) * cfg.batch_size].to(data.device)
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, (epoch - 1) * steps + s, steps)
        b = data.batch(idx)
        with _autocast(data.device):
            out = model(*b["image"][:2], *b["text"][:2], text_ids=b["text"].ids)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        for k in sums:
            sums[k] += float(out[k].detach())
    row = {f"loss/{k}": v / max(steps, 1) for k, v in sums.items()}
    row["train_items_per_s"] = len(train_idx) / max(time.perf_counter() - t0, 1e-9)
    return row


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
            out.update(
                {f"content/{k}": v for k, v in content_topn(mm, self.inter.train_csr, self.inter.valid_csr).items()}
            )
        return out


def _load_interactions(paths: DatasetPaths, cat: Catalog):
    if not paths.interactions.exists():
        return None
    from models.training.data import load_interactions

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


def check_inputs(
    paths: DatasetPaths,
    cat: Catalog,
    image_feature: str | None = None,
    text_feature: str | None = None,
    max_tokens: int | None = None,
) -> None:
    """ICA learns from items that have both modalities: with one modality all null its losses are
    exactly 0 and it 'succeeds' as a meaningless model, so refuse before training. Also refuse
    rows longer than the position table, before an epoch is spent finding out."""
    for inputs in (cat.image_inputs, cat.text_inputs):
        longest = int(inputs.mask.sum(1).max(initial=0))
        if max_tokens is not None and longest > max_tokens:
            raise ValueError(
                f"{inputs.source}: an item has {longest} tokens but ICAConfig.max_tokens is {max_tokens}; "
                "raise max_tokens or extract fewer tokens per item (a smaller grid / max length)"
            )
    for inputs in (cat.image_inputs, cat.text_inputs):
        if not inputs.valid.any():
            raise ValueError(
                f"{inputs.source}: no item has a vector, so ICA has nothing to align; pretrain needs image "
                "and text features (the pipeline skips ICA on its own when a modality is missing; give images "
                "with --images DIR)"
            )
    both = int((cat.image_valid & cat.text_valid).sum())
    if both < MIN_PAIRED_ITEMS:
        names = ", ".join(Path(x.source).stem for x in (cat.image_inputs, cat.text_inputs))
        raise ValueError(
            f"{paths.root}: only {both} item(s) have both an image and a text vector ({names}); "
            f"ICA needs at least {MIN_PAIRED_ITEMS}"
        )


def token_stats(inputs: TokenInputs, idx: np.ndarray, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std over the real tokens of items `idx`, in chunks (fp16 tables are big)."""
    total = np.zeros(inputs.dim, np.float64)
    sq = np.zeros(inputs.dim, np.float64)
    count = 0
    for s in range(0, len(idx), chunk):
        rows = idx[s : s + chunk]
        x = inputs.tokens[rows][inputs.mask[rows]].astype(np.float64)
        total += x.sum(0)
        sq += (x**2).sum(0)
        count += len(x)
    if count == 0:
        return np.zeros(inputs.dim, np.float32), np.ones(inputs.dim, np.float32)
    mean = total / count
    return mean.astype(np.float32), np.sqrt(np.maximum(sq / count - mean**2, 0.0)).astype(np.float32)


def encoder_spec(cat: Catalog) -> dict:
    """What a checkpoint needs beside its weights to be rebuilt: dims, vocabulary, special ids."""
    text = cat.text_inputs
    vocab = sorted(np.unique(text.ids[text.mask]).tolist()) if text.ids is not None else []
    return {
        "image_dim": cat.image_inputs.dim,
        "text_dim": text.dim,
        "vocab_ids": vocab,
        "special_ids": text.special_ids(),
    }


def build_encoder(spec: dict, cfg: ICAConfig) -> InterContentEncoder:
    return InterContentEncoder(spec["image_dim"], spec["text_dim"], cfg, spec["vocab_ids"] or None, spec["special_ids"])


def _new_model(cat: Catalog, cfg: ICAConfig, train_idx: np.ndarray, device: torch.device) -> InterContentEncoder:
    """The encoder, standardized with the training items' token statistics."""
    torch.manual_seed(cfg.seed)
    model = build_encoder(encoder_spec(cat), cfg)
    for m, inputs in (("image", cat.image_inputs), ("text", cat.text_inputs)):
        rows = np.intersect1d(train_idx, np.flatnonzero(inputs.valid))
        if len(rows):
            model.set_normalization(m, *map(torch.as_tensor, token_stats(inputs, rows)))
    return model.to(device)


def _baselines(cat: Catalog, holdout: np.ndarray, inter) -> dict[str, dict]:
    out: dict[str, dict] = {}
    if holdout.any():
        n = int(holdout.sum())
        out["chance"] = {f"retrieval/mean_recall@{k}": min(k, n) / n for k in (1, 10)}
    if inter is not None:
        raw = concat_vectors(cat.image, cat.image_valid, cat.text, cat.text_valid)
        out["raw_concat"] = {f"content/{k}": v for k, v in content_topn(raw, inter.train_csr, inter.valid_csr).items()}
    return out


def _skipped(inter, holdout: np.ndarray) -> dict[str, str]:
    """Metrics a run could not compute, and why (so a reader of metrics.json is not left guessing)."""
    out = {}
    if inter is None:
        out["content/recall@20, content/ndcg@20"] = (
            "no interactions.parquet: a catalog-only dataset has no users to rank for"
        )
    if not holdout.any():
        out["retrieval/*"] = "too few items with both modalities for a holdout (ICAConfig.holdout)"
    return out


def _fresh_state(model: InterContentEncoder, evaluate, cfg: ICAConfig) -> dict:
    first = {"epoch": 0, **evaluate(model)}
    return {
        "epoch": 0,
        "history": [first],
        "best_epoch": 0,
        "best_value": first.get(cfg.select_metric),
        "best_model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "bad_epochs": 0,
        "done": False,
    }


def _run_epochs(model, opt, data, train_idx, cfg, state, evaluate, save, run_name: str, progress: bool) -> None:
    """Train until done, saving the state after every epoch (what makes a kill resumable)."""
    selectable = state["history"][0].get(cfg.select_metric) is not None
    if not selectable:
        log.warning(
            "%s: %s is not available (no holdout or no interactions): keeping the last epoch",
            run_name,
            cfg.select_metric,
        )
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
        save()
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss/loss']:.3f}", sel=f"{value:.3f}" if value is not None else "-")
    bar.close()
    if not state["done"]:
        state["done"] = True
        save()


def pretrain_ica(
    paths: DatasetPaths,
    image_feature: str | None,
    text_feature: str | None,
    cfg: ICAConfig,
    run_id: str | None = None,
    progress: bool = True,
    *,
    image_tokens: str | None = None,
    text_tokens: str | None = None,
    threads: int | None = None,
) -> dict:
    """Pretrain (or continue) an ICA run and write features/ica-<run_id>.parquet (modality 'mm').

    Each modality is read from its token table when `image_tokens` / `text_tokens` name one
    (tokens/<name>.parquet), else from the pooled feature table. run_id defaults to a hash of the
    inputs and the config, so the same call twice reuses the finished run. `threads` sets torch's
    CPU threads for the run (None: torch's default). Returns a summary: paths, the untrained
    (epoch 0), final (selected epoch) and baseline metrics, the per-epoch history and the metrics
    it skipped (also in runs/ica-<run_id>/metrics.json).
    """
    cat = load_catalog(paths, image_feature, text_feature, image_tokens, text_tokens)
    check_inputs(paths, cat, max_tokens=cfg.max_tokens)
    cold = cold_item_mask(paths, cat.n)
    both = cat.image_valid & cat.text_valid & ~cold
    input_hash = _inputs_hash(cat)
    # items held out as cold (ingest --cold-items) are never trained on: their run is another run
    key = (input_hash, cfg.to_dict(), np.flatnonzero(cold).tolist()) if cold.any() else (input_hash, cfg.to_dict())
    run_id = run_id or _hash(*key)[:10]
    run_name = f"ica-{run_id}"
    run_dir = paths.run(run_name)
    ckpt_path = run_dir / "checkpoint.pt"
    if (run_dir / "config.json").exists():
        _check_resumable(run_dir, cfg, input_hash)
    holdout = split_holdout(both, cfg.holdout, cfg.seed)
    train_idx = np.flatnonzero((cat.image_valid | cat.text_valid) & ~holdout & ~cold)
    if len(train_idx) < 2:
        raise ValueError(f"{paths.root}: only {len(train_idx)} training item(s) with content after the holdout")
    inputs = {
        "image_feature": image_feature,
        "text_feature": text_feature,
        "image_tokens": image_tokens,
        "text_tokens": text_tokens,
    }
    spec = encoder_spec(cat)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(
        {
            "config": cfg.to_dict(),
            "input_hash": input_hash,
            **inputs,
            "specs": {"image": cat.image_inputs.spec, "text": cat.text_inputs.spec},
            "encoder": spec,
        },
        run_dir / "config.json",
    )

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = _new_model(cat, cfg, train_idx, device)
        opt = _optimizer(model, cfg)
        data = _Tensors(cat, device)
        inter = _load_interactions(paths, cat)
        evaluate = _Evaluator(cat, data, holdout, inter)
        baselines, skipped = _baselines(cat, holdout, inter), _skipped(inter, holdout)
        if ckpt_path.exists():
            state = torch.load(ckpt_path, map_location=device, weights_only=False)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            log.info("resuming %s after epoch %d", run_name, state["epoch"])
        else:
            state = _fresh_state(model, evaluate, cfg)

        def save() -> None:
            _save_checkpoint(
                ckpt_path,
                {
                    **state,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "config": cfg.to_dict(),
                    "encoder": spec,
                },
            )
            write_json(
                {
                    "history": state["history"],
                    "baselines": baselines,
                    "skipped": skipped,
                    "best_epoch": state["best_epoch"],
                },
                run_dir / "metrics.json",
            )

        _run_epochs(model, opt, data, train_idx, cfg, state, evaluate, save, run_name, progress)

        # the selected epoch's encoder writes the table
        model.load_state_dict(state["best_model"])
        mm = encode_catalog(model, data, np.arange(cat.n), "mm")
    finally:
        torch.set_num_threads(before)
    feature_path = write_mm_feature(
        paths,
        run_name,
        cat,
        mm,
        cfg.summary() + f" epoch{state['best_epoch']}",
        paths.relative(ckpt_path),
        _hash(input_hash, cfg.to_dict()),
        {"run_id": run_name, "best_epoch": str(state["best_epoch"]), **_str_values(inputs)},
    )
    final = next(r for r in state["history"] if r["epoch"] == state["best_epoch"])
    summary = {
        "run_id": run_name,
        "run_dir": str(run_dir),
        "checkpoint": str(ckpt_path),
        "feature": run_name,
        "feature_path": str(feature_path),
        "device": str(device),
        "inputs": inputs,
        "n_items": cat.n,
        "n_train_items": len(train_idx),
        "n_holdout_items": int(holdout.sum()),
        "n_both": int(both.sum()),
        "epochs_run": state["epoch"],
        "best_epoch": state["best_epoch"],
        "select_metric": cfg.select_metric,
        "stopped_early": state["epoch"] < cfg.epochs,
        "baselines": baselines,
        "skipped": skipped,
        "untrained": state["history"][0],
        "final": final,
        "history": state["history"],
    }
    on_disk = {k: paths.relative(summary[k]) for k in ("run_dir", "checkpoint", "feature_path")}
    write_json({**summary, **on_disk}, run_dir / "metrics.json")  # dataset-relative: no machine path in the home
    return summary


def _str_values(d: dict) -> dict[str, str]:
    return {k: str(v) for k, v in d.items() if v is not None}


def write_mm_feature(
    paths: DatasetPaths,
    name: str,
    cat: Catalog,
    mm: np.ndarray,
    model: str,
    weights: str,
    input_hash: str,
    extra: dict[str, str],
) -> Path:
    """features/<name>.parquet, modality 'mm': the encoder's vectors, items without content invalid."""
    has_any = cat.image_valid | cat.text_valid
    mm = np.where(has_any[:, None], mm, 0.0).astype(np.float32)
    return write_features(
        paths.feature(name),
        cat.asins,
        cat.item_ids,
        mm,
        encoder="ica",
        model=model,
        weights=weights,
        modality="mm",
        input_hash=input_hash,
        valid=has_any,
        reasons=[None if ok else "no image and no text feature" for ok in has_any],
        extra=extra,
    )
