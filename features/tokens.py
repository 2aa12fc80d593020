"""Token-level features: several fp16 vectors per item, beside the pooled feature tables.

Why: a fusion encoder that does masked modelling needs parts of an item to hide and predict —
image regions and word pieces — not one pooled vector per modality. This module writes
`tokens/<name>.parquet` (schema in store.tokens):

- image tokens: EfficientNet-Lite0's 1280-channel head map average-pooled to `grid` × `grid`
  regions (16 tokens by default), or a CLIP ViT's patch tokens pooled to the same grid;
- text tokens: the last hidden states of a BERT-family encoder (MiniLM) up to `max_length`
  word pieces, [CLS] and [SEP] included, with the tokenizer ids masked word modelling predicts.

It is `features.extract` with another output: the same items, inputs and content keys, partial
rows in `tokens/.<name>.partial/` so a killed run resumes, shards for the flow's fan-out, missing
modalities as rows with 0 tokens and a reason, no clock time in the table (the same inputs give
the same bytes), and an up-to-date table is not rebuilt.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.base import Encoder, parse_spec
from features.extract import (
    Inputs,
    Partial,
    check_extract_args,
    extract,
    item_inputs,
    run_pending,
    shard_plan,
    up_to_date,
)
from features.registry import get_encoder
from store.layout import DatasetPaths, portable
from store.tables import read_metadata, read_table
from store.tokens import (
    TokenTable,
    leaf_values,
    load_tokens,
    padded,
    to_fp16,
    token_columns,
    write_tokens,
)

log = logging.getLogger(__name__)

TOKEN_SUFFIX = "-tok"
MAX_GRID = 16  # beyond the 7×7 map of a 224 px image the regions only repeat pixels

__all__ = ["TokenTable", "default_token_name", "extract_tokens", "load_tokens"]


def default_token_name(spec: str) -> str:
    """The pooled feature's default name + '-tok' (image-effnet-tok, text-minilm-tok, …)."""
    return parse_spec(spec).default_name + TOKEN_SUFFIX


@dataclass
class Rows:
    """Tokens of every item while a table is assembled, zero-padded to max_tokens."""

    tokens: np.ndarray  # float16 (n, T, dim)
    counts: np.ndarray  # int64 (n,)
    ids: np.ndarray | None  # int32 (n, T), text only
    reasons: list[str | None]
    filled: np.ndarray  # bool (n,)

    @classmethod
    def empty(cls, n: int, max_tokens: int, dim: int, with_ids: bool) -> Rows:
        ids = np.zeros((n, max_tokens), np.int32) if with_ids else None
        return cls(
            np.zeros((n, max_tokens, dim), np.float16), np.zeros(n, np.int64), ids, [None] * n, np.zeros(n, bool)
        )

    def put(self, positions: list[int], tokens: np.ndarray, mask: np.ndarray, ids: np.ndarray | None) -> None:
        """Store a batch; real tokens move to the front of each row whatever side the padding was."""
        order = np.argsort(~mask, axis=1, kind="stable")
        tokens = np.take_along_axis(tokens, order[:, :, None], axis=1)
        counts = mask.sum(axis=1)
        keep = np.arange(tokens.shape[1])[None, :] < counts[:, None]
        width = tokens.shape[1]
        self.tokens[positions, :width] = to_fp16(np.where(keep[:, :, None], tokens, 0))
        self.counts[positions] = counts
        if self.ids is not None and ids is not None:
            self.ids[positions, :width] = np.where(keep, np.take_along_axis(ids, order, axis=1), 0)
        self.filled[positions] = True

    def fail(self, pos: int, reason: str | None) -> None:
        self.reasons[pos], self.filled[pos] = reason, True

    def columns(self, positions: list[int] | slice) -> dict[str, pa.Array]:
        ids = self.ids[positions] if self.ids is not None else None
        return token_columns(self.tokens[positions], self.counts[positions], ids)

    def partial_columns(self, positions: list[int]) -> dict[str, pa.Array]:
        return {**self.columns(positions), "reason": pa.array([self.reasons[p] for p in positions], pa.string())}

    def load_partial(self, partial: Partial, inputs: Inputs) -> int:
        """Take the rows an interrupted run finished; returns how many."""
        before = int(self.filled.sum())
        for table, rows, positions in partial.matching_rows(inputs):
            if not rows:
                continue
            table = table.take(pa.array(rows))
            counts = table.column("n_tokens").to_numpy().astype(np.int64)
            flat_ids = leaf_values(table.column("ids")) if self.ids is not None else None
            self.put(
                positions,
                *padded(
                    counts, self.tokens.shape[1], self.tokens.shape[2], leaf_values(table.column("tokens")), flat_ids
                ),
            )
            for pos, reason in zip(positions, table.column("reason").to_pylist()):
                self.reasons[pos] = reason
        return int(self.filled.sum()) - before


# --- encoders ------------------------------------------------------------------------------------


def token_encode(encoder: Encoder, modality: str, grid: int, max_length: int):
    """A batch → (tokens (b, T, dim), mask (b, T), ids or None) function for `encoder`."""
    if modality == "image":
        if not hasattr(encoder, "encode_image_tokens"):
            raise ValueError(
                f"encoder {encoder.spec!r} has no image tokens: use 'efficientnet-lite0' or a CLIP ViT ('clip-image:…')"
            )

        def image(batch: Any) -> tuple[np.ndarray, np.ndarray, None]:
            out = encoder.encode_image_tokens(batch, grid)
            return out, np.ones(out.shape[:2], bool), None

        return image
    if not hasattr(encoder, "encode_tokens"):
        raise ValueError(f"encoder {encoder.spec!r} has no text tokens: use 'minilm' or 'bert:<model or dir>'")
    return lambda batch: encoder.encode_tokens(batch, max_length)


def token_meta(encoder: Encoder, modality: str, grid: int, max_length: int) -> dict:
    """What a reader of the tokens needs beyond the vectors (typed; stored as JSON)."""
    if modality == "image":
        source = "patch tokens, projected" if encoder.spec.startswith("clip") else "head feature map"
        return {
            "grid": grid,
            "max_tokens": grid * grid,
            "source": f"{source}, average-pooled to {grid}x{grid}, row-major",
        }
    tok = encoder.tokenizer  # type: ignore[attr-defined]
    return {
        "max_length": max_length,
        "max_tokens": max_length,
        "tokenizer": encoder.model,
        "vocab_size": len(tok),
        "mask_token_id": tok.mask_token_id,
        "cls_token_id": tok.cls_token_id,
        "sep_token_id": tok.sep_token_id,
        "pad_token_id": tok.pad_token_id,
        "source": "last hidden states, [CLS] … [SEP]; ids 0 where there is no token",
    }


def _token_spec(spec_text: str, modality: str, grid: int, max_length: int) -> str:
    """The encoder spec plus what shapes the tokens: the partial rows' and the input hash's key."""
    return f"{spec_text}|tokens:" + (f"grid={grid}" if modality == "image" else f"max_length={max_length}")


def _check_shape_args(grid: int, max_length: int) -> None:
    if not 1 <= grid <= MAX_GRID:
        raise ValueError(f"grid must be 1..{MAX_GRID} (tokens per image = grid²), got {grid}")
    if max_length < 3:
        raise ValueError(f"max_length must be ≥ 3 ([CLS], one word piece, [SEP]), got {max_length}")


def _resolve(spec: str | Encoder, modality: str) -> tuple[str, str, Encoder | None]:
    """(canonical spec, default table name, loaded encoder or None); refuses a modality mismatch."""
    if isinstance(spec, str):
        parsed = parse_spec(spec)
        text, actual, name, encoder = parsed.text, parsed.modality, parsed.default_name, None
    else:
        text, actual, name, encoder = spec.spec, spec.modality, spec.name, spec
    if modality != actual:
        raise ValueError(
            f"encoder {text!r} makes {actual} features, not {modality}: "
            f"give an {modality} encoder ({'efficientnet-lite0, clip-image:…' if modality == 'image' else 'minilm, bert:…'})"
        )
    return text, name + TOKEN_SUFFIX, encoder


# --- the stage -----------------------------------------------------------------------------------


def extract_tokens(
    paths: DatasetPaths,
    spec: str | Encoder,
    modality: str,
    name: str | None = None,
    grid: int = 4,
    max_length: int = 32,
    batch_size: int = 32,
    device: str | None = None,
    progress: bool = True,
    *,
    workers: int = 2,
    resume: bool = True,
    chunk_size: int = 512,
    draft: bool = True,
    shard: tuple[int, int] | None = None,
) -> dict:
    """Token table of every item of `paths` with `spec` into tokens/<name>.parquet; returns a summary.

    Arguments mean what they mean for features.extract.extract; `grid` (image: grid² tokens) and
    `max_length` (text: word pieces, [CLS] and [SEP] included) shape the tokens. A table whose
    encoder, shape and inputs are unchanged is not rebuilt (summary["skipped"]).
    """
    if modality not in ("image", "text"):
        raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
    check_extract_args(batch_size, workers, chunk_size, shard)
    _check_shape_args(grid, max_length)
    t0 = time.perf_counter()
    spec_text, default_name, encoder = _resolve(spec, modality)
    name = name or default_name
    out_path = paths.token_feature(name)
    inputs = item_inputs(paths, modality)
    tspec = _token_spec(spec_text, modality, grid, max_length)
    ihash = inputs.input_hash(tspec)
    if resume and up_to_date(out_path, ihash, spec_text):
        return _summary(name, out_path, t0, encoded=0, resumed=0, skipped=True)

    encoder = encoder or get_encoder(spec_text, device)
    encode = token_encode(encoder, modality, grid, max_length)
    max_tokens = grid * grid if modality == "image" else max_length
    partial = Partial(
        paths.tokens_dir / f".{name}.partial", tspec, encoder.dim, f"s{shard[0]}of{shard[1]}-" if shard else ""
    )
    partial.open(resume)
    rows = Rows.empty(len(inputs.asins), max_tokens, encoder.dim, with_ids=modality == "text")
    resumed = rows.load_partial(partial, inputs)
    missing, pending = shard_plan(inputs, rows.filled, shard)
    for pos in missing:
        rows.fail(pos, inputs.missing[pos])

    t_encode = time.perf_counter()
    run_pending(
        encoder,
        inputs,
        pending,
        modality,
        store=lambda positions, out: rows.put(positions, *out),
        fail=rows.fail,
        save=lambda positions: partial.write_columns(inputs, positions, rows.partial_columns(positions)),
        buffer=missing,
        batch_size=batch_size,
        workers=workers,
        draft=draft,
        chunk_size=chunk_size,
        progress=progress,
        desc=f"tokens {name}",
        encode=encode,
        kept=resumed,
    )
    encode_seconds = time.perf_counter() - t_encode
    if shard is not None:
        return {
            "name": name,
            "shard": list(shard),
            "encoded": len(pending),
            "resumed": resumed,
            "seconds": round(time.perf_counter() - t0, 3),
        }
    if not rows.filled.all():  # pragma: no cover - a bug guard: every item must have a row
        raise RuntimeError(f"{int((~rows.filled).sum())} items got no token row")
    write_tokens(
        out_path,
        inputs.asins,
        inputs.item_ids,
        rows.columns(slice(None)),
        rows.reasons,
        dim=encoder.dim,
        max_tokens=max_tokens,
        modality=modality,
        metadata={
            "encoder": spec_text,
            "model": encoder.model,
            "weights": portable(encoder.weights),
            "input_hash": ihash,
            "name": name,
            "n_items": str(len(inputs.asins)),
        },
        token_meta=token_meta(encoder, modality, grid, max_length),
    )
    partial.remove()
    summary = _summary(name, out_path, t0, encoded=len(pending), resumed=resumed, skipped=False)
    summary.update(
        encode_seconds=round(encode_seconds, 3),
        device=encoder.device,
        items_per_s=round(len(pending) / encode_seconds, 1) if encode_seconds > 0 and pending else 0.0,
    )
    log.info(
        "%s: %d items, %d with tokens, %d without (%s), %.0f bytes/item; %d encoded, %d resumed",
        out_path,
        summary["n_items"],
        summary["n_with_tokens"],
        summary["n_missing"],
        ", ".join(f"{k}: {v}" for k, v in summary["reasons"].items()) or "none",
        summary["bytes_per_item"],
        len(pending),
        resumed,
    )
    return summary


def _summary(name: str, path, t0: float, *, encoded: int, resumed: int, skipped: bool) -> dict:
    meta = read_metadata(path)
    table = read_table(path, columns=["n_tokens", "reason"])
    n = table.num_rows
    with_tokens = int(pc.sum(pc.greater(table.column("n_tokens"), 0)).as_py() or 0)
    size = path.stat().st_size
    reasons = [r for r in table.column("reason").to_pylist() if r]
    return {
        "name": name,
        "path": str(path),
        "encoder": meta.get("encoder"),
        "modality": meta.get("modality"),
        "dim": int(meta["dim"]),
        "max_tokens": int(meta["max_tokens"]),
        "n_items": n,
        "n_with_tokens": with_tokens,
        "n_missing": n - with_tokens,
        "reasons": dict(Counter(r.split(":")[0] for r in reasons)),
        "mean_tokens": round(float(pc.mean(table.column("n_tokens")).as_py() or 0.0), 2),
        "bytes": size,
        "bytes_per_item": round(size / n, 1) if n else 0.0,
        "bytes_per_item_with_tokens": round(size / with_tokens, 1) if with_tokens else 0.0,
        "input_hash": meta.get("input_hash"),
        "encoded": encoded,
        "resumed": resumed,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - t0, 3),
    }


# --- pooled features and image tokens from one backbone pass -------------------------------------


def shares_pass(spec: str) -> bool:
    """Whether the pooled feature of `spec` and its image tokens can come from one forward pass
    (EfficientNet-Lite0: both are averages of its head map; a CLIP ViT returns both at once)."""
    parsed = parse_spec(spec)
    return parsed.kind in ("efficientnet-lite0", "clip-image")


class TokenSide:
    """Image tokens as the side output of a pooled extraction (features.extract.SideOutput): its
    rows go to the token table's partial folder as the pooled rows are saved, so extract_tokens
    afterwards finds them done and only writes the table. Off when that table is up to date."""

    def __init__(self, paths: DatasetPaths, name: str, grid: int) -> None:
        self.paths, self.name, self.grid = paths, name, grid
        self.active = False
        self.saved = 0

    def begin(self, encoder: Encoder, inputs: Inputs, shard: tuple[int, int] | None, resume: bool) -> None:
        if not hasattr(encoder, "encode_with_tokens"):
            raise ValueError(
                f"encoder {encoder.spec!r} has no image tokens: use 'efficientnet-lite0' or a CLIP ViT ('clip-image:…')"
            )
        self.encoder, self.inputs = encoder, inputs
        tspec = _token_spec(encoder.spec, "image", self.grid, 0)
        if resume and up_to_date(self.paths.token_feature(self.name), inputs.input_hash(tspec), encoder.spec):
            return
        self.active = True
        tag = f"s{shard[0]}of{shard[1]}-" if shard else ""
        self.partial = Partial(self.paths.tokens_dir / f".{self.name}.partial", tspec, encoder.dim, tag)
        self.partial.open(resume)
        self.rows = Rows.empty(len(inputs.asins), self.grid * self.grid, encoder.dim, with_ids=False)
        self.done = {pos for _, _, positions in self.partial.matching_rows(inputs) for pos in positions}

    def encode(self, batch: Any) -> tuple[np.ndarray, np.ndarray | None]:
        if not self.active:
            return self.encoder.encode(batch), None
        return self.encoder.encode_with_tokens(batch, self.grid)

    def store(self, positions: list[int], tokens: np.ndarray | None) -> None:
        if self.active and tokens is not None:
            self.rows.put(positions, tokens, np.ones(tokens.shape[:2], bool), None)

    def fail(self, pos: int, reason: str) -> None:
        if self.active:
            self.rows.fail(pos, reason)

    def save(self, positions: list[int]) -> None:
        if not self.active:
            return
        new = [p for p in positions if p not in self.done and self.rows.filled[p]]  # no-input items: extract_tokens's
        self.partial.write_columns(self.inputs, new, self.rows.partial_columns(new))
        self.done.update(new)
        self.saved += len(new)


def extract_with_tokens(
    paths: DatasetPaths, spec: str | Encoder, *, grid: int = 4, token_name: str | None = None, **kwargs: Any
) -> dict:
    """features.extract.extract (same arguments) whose backbone pass also gives the image tokens.

    Why: EfficientNet-Lite0's pooled vector and its token grid are two averages of one head map,
    so a second pass for the tokens doubles the cost of a photo for nothing. The tokens land in
    the token table's partial rows; extract_tokens (same grid) then only assembles the table.
    summary["token_rows"] says how many token rows the pass saved.
    """
    _check_shape_args(grid, 3)
    if token_name is None:
        token_name = default_token_name(spec) if isinstance(spec, str) else spec.name + TOKEN_SUFFIX
    side = TokenSide(paths, token_name, grid)
    summary = extract(paths, spec, side=side, **kwargs)
    return {**summary, "token_rows": side.saved}
