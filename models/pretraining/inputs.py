"""What the inter-content encoder reads: per modality, padded tokens + a mask (+ tokenizer ids).

A pooled feature table is the one-token case, so today's `features/<name>.parquet` and the token
tables `tokens/<name>.parquet` (store.tokens) enter the encoder through the same `TokenInputs`.
The `spec` records what made the inputs (extractor, model, dim, tokenizer), because a pretrained
encoder only means something on inputs from the extractor it was trained on: `check_compatible`
is what refuses to apply it to anything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from store import fixes
from store.errors import StoreError
from store.layout import DatasetPaths
from store.tokens import load_tokens
from store.vectors import align_features, read_features

# Spec fields that must be equal for a pretrained encoder to be applied to other inputs.
SPEC_KEYS = ("kind", "encoder", "model", "dim", "tokenizer", "vocab_size")
# Token-table metadata keys that may name a special token id (the extractor's spelling varies).
SPECIAL_KEYS = ("cls_id", "sep_id", "pad_id", "cls_token_id", "sep_token_id", "pad_token_id")


@dataclass
class TokenInputs:
    """One modality of a catalog, rows in item_id order: tokens (n, T, D), mask (n, T), ids (n, T)."""

    tokens: np.ndarray  # float16/float32 (n, T, D), zero where mask is False
    mask: np.ndarray  # bool (n, T)
    ids: np.ndarray | None  # int32 (n, T) tokenizer ids (text token tables), else None
    spec: dict = field(default_factory=dict)  # SPEC_KEYS + special ids, input hash (see module doc)
    source: str = ""  # the file they came from, for messages

    @property
    def n(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def dim(self) -> int:
        return int(self.tokens.shape[2])

    @property
    def valid(self) -> np.ndarray:
        """Items with at least one real token; a missing modality has none, never a zero vector."""
        return np.asarray(self.mask.any(axis=1))

    @classmethod
    def pooled(cls, vectors: np.ndarray, valid: np.ndarray, meta: dict | None = None, source: str = "") -> TokenInputs:
        """A pooled feature table as one token per item."""
        meta = meta or {}
        vectors = np.asarray(vectors, dtype=np.float32)
        spec = {
            "kind": "pooled",
            "encoder": meta.get("encoder"),
            "model": meta.get("model"),
            "dim": int(vectors.shape[1]),
            "input_hash": meta.get("input_hash"),
        }
        return cls(vectors[:, None, :], np.asarray(valid, bool)[:, None], None, spec, source)

    def mean_pool(self) -> np.ndarray:
        """Mean of the real tokens per item (zeros for an item without any): the raw baseline."""
        m = self.mask[..., None].astype(np.float32)
        total = (self.tokens.astype(np.float32) * m).sum(1)
        return total / np.maximum(m.sum(1), 1.0)

    def special_ids(self) -> list[int]:
        """[CLS]/[SEP]/[PAD] ids of a text token table: never hidden for masked word modelling."""
        return list(self.spec.get("special_ids", []))


def _token_spec(meta: dict) -> dict:
    """The spec of a token table from its metadata (store.tokens.TokenTable.meta)."""
    spec = {
        "kind": "tokens",
        "encoder": meta.get("encoder"),
        "model": meta.get("model"),
        "dim": int(meta["dim"]),
        "input_hash": meta.get("content_hash"),
    }
    for key in ("tokenizer", "vocab_size", "mask_token_id", "grid", "max_length"):
        if meta.get(key) is not None:
            spec[key] = meta[key]
    special = {int(meta[k]) for k in SPECIAL_KEYS if meta.get(k) is not None}
    special |= {int(i) for i in meta.get("special_ids") or ()}
    spec["special_ids"] = sorted(special)
    return spec


def load_token_inputs(paths: DatasetPaths, name: str, asins: Sequence[str], modality: str) -> TokenInputs:
    """`tokens/<name>.parquet` as encoder inputs, rows matched to `asins` (the items' item_id order)."""
    path = paths.token_feature(name)
    if not path.exists():
        raise StoreError(path, f"no token table {name!r} for the {modality} tokens", fixes.repair(path, "features"))
    table = load_tokens(path)
    if table.modality != modality:
        raise StoreError(
            path,
            f"holds {table.modality} tokens, used here as {modality}",
            f"pass a {modality} token table (have: {', '.join(paths.token_names())})",
        )
    pos = {a: i for i, a in enumerate(table.asin)}
    rows = np.array([pos.get(a, -1) for a in asins], dtype=np.int64)
    if len(asins) and (rows < 0).mean() > 0.5:
        raise StoreError(
            path,
            f"only {int((rows >= 0).sum())} of {len(asins)} items have a row in this token table",
            f"it was extracted for another catalog: {fixes.repair(path, 'features')}",
        )
    found = rows >= 0
    take = np.where(found, rows, 0)
    mask = table.mask[take] & found[:, None]
    tokens = np.where(mask[..., None], table.tokens[take], 0).astype(np.float16)
    ids = None if table.ids is None else np.where(mask, table.ids[take], 0).astype(np.int32)
    return TokenInputs(tokens, mask, ids, _token_spec(table.meta), str(path))


def load_pooled_inputs(paths: DatasetPaths, name: str, asins: Sequence[str]) -> TokenInputs:
    """`features/<name>.parquet` (one vector per item) as one-token encoder inputs."""
    path = paths.feature(name)
    table = read_features(path)
    vectors, valid = align_features(table, asins, source=path)
    if not np.isfinite(vectors[valid]).all():
        bad = np.where(valid & ~np.isfinite(vectors).all(1))[0][:5]
        raise StoreError(path, f"non-finite values in the vectors of item_id(s) {bad.tolist()}", fixes.repair(path))
    return TokenInputs.pooled(vectors, valid, table.metadata, str(path))


def load_inputs(
    paths: DatasetPaths, asins: Sequence[str], modality: str, feature: str | None, tokens: str | None
) -> TokenInputs:
    """The token table when one is named, else the pooled feature table."""
    if tokens:
        return load_token_inputs(paths, tokens, asins, modality)
    if not feature:
        raise ValueError(f"no {modality} input: name a {modality} feature table or a {modality} token table")
    return load_pooled_inputs(paths, feature, asins)


class EncoderMismatch(ValueError):
    """A pretrained encoder asked to read inputs from another extractor, dim or tokenizer."""


def check_compatible(run: str, modality: str, trained: dict, target: TokenInputs) -> None:
    """Refuse, in one line naming both specs, inputs the run's encoder was not trained on."""
    diff = [k for k in SPEC_KEYS if str(trained.get(k)) != str(target.spec.get(k))]
    if not diff:
        return

    def show(spec):
        return ", ".join(f"{k}={spec.get(k)}" for k in SPEC_KEYS if spec.get(k) is not None)

    raise EncoderMismatch(
        f"{run}: the encoder was pretrained on {modality} inputs [{show(trained)}] but {target.source or 'the target'} "
        f"has [{show(target.spec)}] (differs in {', '.join(diff)}); extract the target's {modality} features with the "
        f"same extractor, or pretrain on this dataset (anchorrec pretrain without --ica-from)"
    )
