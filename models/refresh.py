"""A published run's vectors brought up to date after `anchorrec update`, with no retraining.

- Items the run never saw (appended by the update) get vectors from the run's cold path:
  `models.cold.load_kit(run_dir)` + `cold_vectors(model, kit, features)`, fed their feature rows
  prepared exactly as training prepares them (models.training.data.load_modalities). A model
  with no honest cold path (COLD_PATH None) leaves them out: they wait for the retrain, and the
  update says so.
- Items whose encoder inputs changed keep their trained vectors, except for models without
  trained weights (`fixed`, e.g. content_knn), whose item vector IS a function of the features:
  those are recomputed through the same cold path.
- Users keep their vectors unless the model's user vector is a function of item vectors and the
  interactions (USERS_FROM_ITEMS); then every user is recomputed from the merged train
  interactions. A new user of any other model has no vector until the retrain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from store import schemas
from store.layout import DatasetPaths
from store.tables import read_json, read_table
from store.vectors import read_vectors
from store.versions import serving


def _mean_of_items(
    paths: DatasetPaths, item_ids: np.ndarray, item_vectors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """User = mean of the vectors of their train items (models/content_knn.py's rule), users with
    at least one train item whose vector is known."""
    inter = read_table(paths.interactions, schemas.INTERACTIONS, columns=["user_id", "item_id", "split"])
    train = inter.filter(inter.column("split").to_numpy(zero_copy_only=False) == "train")
    users = train.column("user_id").to_numpy().astype(np.int64)
    items = train.column("item_id").to_numpy().astype(np.int64)
    row = np.full(int(max(item_ids.max(initial=-1), items.max(initial=-1))) + 1, -1, dtype=np.int64)
    row[item_ids] = np.arange(len(item_ids))
    known = row[items] >= 0
    users, rows = users[known], row[items[known]]
    user_ids = np.unique(users)
    slot = np.searchsorted(user_ids, users)
    sums = np.zeros((len(user_ids), item_vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, slot, item_vectors[rows])
    counts = np.bincount(slot, minlength=len(user_ids))[:, None]
    return user_ids, (sums / counts).astype(np.float32)


def _unit_mean_of_items(
    paths: DatasetPaths, item_ids: np.ndarray, item_vectors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """content_knn's user: the mean of its items' (unit) vectors, scaled to length 1."""
    user_ids, means = _mean_of_items(paths, item_ids, item_vectors)
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    return user_ids, np.divide(means, norms, out=np.zeros_like(means), where=norms > 0)


# model → how its user vectors follow from item vectors and the train interactions (the others'
# user vectors are trained embeddings or graph outputs that need the retrain)
USERS_FROM_ITEMS = {"content_knn": _unit_mean_of_items}


@dataclass
class Refreshed:
    """What publish_version takes, plus what the update reports."""

    item_ids: np.ndarray
    item_vectors: np.ndarray
    user_ids: np.ndarray | None
    user_vectors: np.ndarray | None
    metadata: dict[str, str]
    items_added: int = 0
    items_changed: int = 0
    users_updated: int = 0
    notes: list[str] = field(default_factory=list)


def run_model(paths: DatasetPaths, run_id: str) -> tuple[str, dict[str, str]]:
    """(model name, modality → feature table) of a trained run, from its config.json."""
    config = read_json(paths.run(run_id) / "config.json")
    from models.registry import read_features

    return str(config["model"]), read_features(str(config["model"]), dict(config.get("features") or {}))


def new_item_features(paths: DatasetPaths, tables: dict[str, str], item_ids: np.ndarray) -> dict[str, np.ndarray]:
    """The feature rows of `item_ids`, prepared as training prepares every item's (missing rows filled).

    An `mm` table written by ICA pretraining has no row for an item that arrived after it: those
    rows are encoded here by the same pretrained encoder from the items' image and text rows.
    """
    from models.training.data import load_modalities

    every = load_modalities(paths, tables)  # item_id order, all items: the fill is the catalog's mean
    out = {modality: rows[item_ids] for modality, rows in every.items()}
    if "mm" in tables and (paths.run(tables["mm"]) / "checkpoint.pt").is_file():
        out["mm"] = ica_rows(paths, tables["mm"], item_ids, out["mm"])
    return out


def ica_rows(paths: DatasetPaths, table: str, item_ids: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """`mm` of `item_ids` by the pretraining run `table` (runs/<table>/), applied to their pooled
    image and text rows as the pretraining applied it to every item; the fill stays for an item
    with neither."""
    from models.pretraining.apply import apply_encoder
    from models.pretraining.inputs import load_inputs

    run_dir = paths.run(table)
    config = read_json(run_dir / "config.json")
    if config.get("image_tokens") or config.get("text_tokens"):
        raise ValueError(
            f"{table} was pretrained on token features, which update does not extract for new items: "
            f"anchorrec update --dataset {paths.name} … --retrain"
        )
    items = read_table(paths.items, columns=["item_id", "asin"]).sort_by("item_id")
    asins = [items.column("asin")[int(i)].as_py() for i in item_ids]
    image = load_inputs(paths, asins, "image", config.get("image_feature"), None)
    text = load_inputs(paths, asins, "text", config.get("text_feature"), None)
    mm = apply_encoder(run_dir, image, text)
    has = image.valid | text.valid
    return np.where(has[:, None], mm, filled).astype(np.float32)


def cold_item_vectors(
    paths: DatasetPaths, run_id: str, model: str, tables: dict[str, str], item_ids: np.ndarray
) -> np.ndarray | None:
    """Vectors of `item_ids` from the run's cold path; None when the model has none."""
    from models.cold import cold_vectors, load_kit

    if len(item_ids) == 0:
        return None
    kit = load_kit(paths.run(run_id))
    if kit is None:
        return None
    features = new_item_features(paths, tables, item_ids) if tables else {}
    return cold_vectors(model, kit, features, n_items=len(item_ids))  # n_items: pop reads no feature


def refresh(paths: DatasetPaths, run_id: str, new_items: list[int], changed_items: list[int]) -> Refreshed:
    """The run's current version's vectors with the update applied (see the module docstring)."""
    import importlib

    from models.cold import cold_path
    from models.registry import MODELS

    model, tables = run_model(paths, run_id)
    now = serving(paths, run_id)
    item_ids, item_vectors, meta = read_vectors(now.item_vectors, "item_id")
    metadata = {k: v for k, v in meta.items() if k in ("model",)}
    out = Refreshed(item_ids, item_vectors, None, None, metadata)
    if now.user_vectors.exists():
        out.user_ids, out.user_vectors, _ = read_vectors(now.user_vectors, "user_id")
    module, cls, _ = MODELS[model]
    fixed = bool(getattr(getattr(importlib.import_module(module), cls), "fixed", False))
    added = np.array(sorted(set(new_items) - set(item_ids.tolist())), dtype=np.int64)
    redo = np.array(sorted(set(changed_items) & set(item_ids.tolist())), dtype=np.int64) if fixed else added[:0]
    wanted = np.concatenate([added, redo])
    vectors = cold_item_vectors(paths, run_id, model, tables, wanted)
    if vectors is None and len(added):
        out.notes.append(
            f"{len(added)} new items wait for the retrain: {model} has no cold path ({cold_path(model) or 'none'})"
        )
    elif vectors is not None:
        vectors = np.asarray(vectors, dtype=np.float32)
        position = {int(i): p for p, i in enumerate(item_ids)}
        out.item_vectors = out.item_vectors.copy()
        for row, item in zip(vectors[len(added) :], redo):
            out.item_vectors[position[int(item)]] = row
        out.item_ids = np.concatenate([item_ids, added])
        out.item_vectors = np.concatenate([out.item_vectors, vectors[: len(added)]])
        out.items_added, out.items_changed = len(added), len(redo)
    if len(changed_items) and not fixed:
        out.notes.append(f"{len(changed_items)} changed items keep their trained vectors until the retrain")
    users = USERS_FROM_ITEMS.get(model)
    if users is not None:
        out.user_ids, out.user_vectors = users(paths, out.item_ids, out.item_vectors)
        out.users_updated = len(out.user_ids)
    return out
