"""Apply a pretrained inter-content encoder to another dataset (`--ica-from RUN`).

Why: the encoder is worth pretraining on a large catalog (thousands of product photos) and
using on a small one (Gift Cards has 147 items, too few to pretrain on). A run directory is
self-contained: config.json (config, input specs, vocabulary) + checkpoint.pt (weights of the
selected epoch, standardization statistics as buffers). The target's inputs must come from the
same extractor, dim and tokenizer as the run's, or the weights read noise: `check_compatible`
refuses them in one line that names both specs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.pretraining.ica import ICAConfig, InterContentEncoder
from models.pretraining.inputs import TokenInputs, check_compatible, load_inputs
from models.pretraining.pretrain import (
    Catalog,
    _hash,
    _Tensors,
    build_encoder,
    encode_catalog,
    item_asins,
    write_mm_feature,
)
from store.hashing import file_sha256
from store.layout import DatasetPaths
from store.tables import read_json


def load_encoder(run_dir: Path, device: torch.device | None = None) -> tuple[InterContentEncoder, dict]:
    """The run's selected-epoch encoder (eval mode) and its config.json; refuses an unfinished run."""
    run_dir = Path(run_dir)
    config_path, ckpt_path = run_dir / "config.json", run_dir / "checkpoint.pt"
    if not config_path.exists() or not ckpt_path.exists():
        raise FileNotFoundError(
            f"{run_dir}: not a pretraining run (no config.json / checkpoint.pt); "
            "give --ica-from a run that anchorrec pretrain wrote (runs/ica-…)"
        )
    config = read_json(config_path)
    if "encoder" not in config or "specs" not in config:
        raise ValueError(
            f"{config_path}: written before runs recorded their input specs; pretrain it again "
            "(anchorrec pretrain --dataset D)"
        )
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    if not state.get("done"):
        raise ValueError(
            f"{ckpt_path}: pretraining stopped after epoch {state.get('epoch')} of "
            f"{config['config'].get('epochs')}; finish it first (the same anchorrec pretrain command resumes)"
        )
    cfg = ICAConfig.from_dict(config["config"])
    model = build_encoder(config["encoder"], cfg)
    model.load_state_dict(state["best_model"])
    config["best_epoch"] = state.get("best_epoch")
    return model.to(device or torch.device("cpu")).eval(), config


def apply_encoder(
    run_dir: Path,
    image: TokenInputs,
    text: TokenInputs,
    device: torch.device | None = None,
    batch: int = 512,
) -> np.ndarray:
    """`mm` (n, d_model), L2-normalized, of items given as inputs in the run's specs; items with
    neither modality get zeros (the caller marks them invalid)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, config = load_encoder(run_dir, device)
    return encode_inputs(model, config, str(run_dir), image, text, batch)


def encode_inputs(
    model: InterContentEncoder,
    config: dict,
    run: str,
    image: TokenInputs,
    text: TokenInputs,
    batch: int = 512,
) -> np.ndarray:
    """`apply_encoder` with the run already loaded: checks the inputs' specs, then encodes."""
    check_compatible(run, "image", config["specs"]["image"], image)
    check_compatible(run, "text", config["specs"]["text"], text)
    if image.n != text.n:
        raise ValueError(f"{image.n} image rows but {text.n} text rows: both must be the same items in the same order")
    cat = Catalog([str(i) for i in range(image.n)], image, text)
    device = next(model.parameters()).device
    mm = encode_catalog(model, _Tensors(cat, device), np.arange(image.n), "mm", batch)
    return np.where((image.valid | text.valid)[:, None], mm, 0.0).astype(np.float32)


def checkpoint_record(paths: DatasetPaths, checkpoint: Path) -> str:
    """How the table's metadata names the encoder it was applied with: dataset-relative when the run
    is this dataset's, else `<dataset>/runs/<run>/checkpoint.pt` with its sha256, never the machine's
    path (a copied home must give the same bytes)."""
    try:
        return paths.relative(checkpoint)
    except ValueError:
        digest = file_sha256(checkpoint)[:16] if checkpoint.is_file() else "missing"
        return f"{'/'.join(checkpoint.parts[-4:])} sha256:{digest}"


def write_applied_feature(
    paths: DatasetPaths,
    run_dir: Path,
    image_feature: str | None = None,
    text_feature: str | None = None,
    image_tokens: str | None = None,
    text_tokens: str | None = None,
    name: str | None = None,
) -> Path:
    """features/<name>.parquet of the target dataset `paths`, encoded by the run's encoder.

    Inputs default to the tables of the same names the run was pretrained on; `name` defaults to
    the run's name (ica-<id>), so `--ica-from RUN` gives the target an `mm` feature called RUN.
    """
    run_dir = Path(run_dir)
    model, config = load_encoder(
        run_dir, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )  # before the target
    given = {
        "image_feature": image_feature,
        "text_feature": text_feature,
        "image_tokens": image_tokens,
        "text_tokens": text_tokens,
    }
    if not any(given.values()):
        given = {k: config.get(k) for k in given}
    asins = item_asins(paths)
    image = load_inputs(paths, asins, "image", given["image_feature"], given["image_tokens"])
    text = load_inputs(paths, asins, "text", given["text_feature"], given["text_tokens"])
    mm = encode_inputs(model, config, str(run_dir), image, text)
    cfg = ICAConfig.from_dict(config["config"])
    weights = checkpoint_record(paths, run_dir / "checkpoint.pt")
    extra = {
        "run_id": run_dir.name,
        "applied_from": weights.split(" ")[0].removesuffix("/checkpoint.pt"),  # the run, by name
        "best_epoch": str(config.get("best_epoch")),
        **{k: str(v) for k, v in given.items() if v},
    }
    return write_mm_feature(
        paths,
        name or run_dir.name,
        Catalog(asins, image, text),
        mm,
        cfg.summary() + f" epoch{config.get('best_epoch')} applied",
        weights,
        _hash(config["input_hash"], image.spec, text.spec, asins, cfg.to_dict(), config.get("best_epoch")),
        extra,
    )
