"""What a recommender is trained on: interaction matrices, item feature tables, and the graphs.

Everything a model needs is gathered once into `GraphData`, on the training device, so that the
training loop never goes back to disk or to NumPy (the reference re-derives these per batch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
import torch

from store import schemas
from store.errors import StoreError
from store.fixes import repair
from store.layout import DatasetPaths
from store.tables import read_table
from store.vectors import align_features, array_hash, read_features

log = logging.getLogger(__name__)


@dataclass
class InteractionData:
    """The split interactions of one dataset as binary user × item matrices.

    `train` lists each distinct training pair once: it is what BPR samples positives from.
    """

    n_users: int
    n_items: int
    train: np.ndarray  # (m, 2) int64 [user, item]
    train_csr: sp.csr_matrix
    valid_csr: sp.csr_matrix
    test_csr: sp.csr_matrix
    asins: list[str] = field(default_factory=list)
    # item-cold protocol (cold_items.parquet): held-out item ids, sorted, and their half (1 valid, 2 test)
    cold_items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    cold_split: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    # set on the warm sub-catalog the trainer trains on (`warm_subset`): the full data and the map back
    holdout: ColdHoldout | None = None

    def __post_init__(self) -> None:
        if len(self.cold_items) != len(self.cold_split):
            raise ValueError(f"{len(self.cold_items)} cold items but {len(self.cold_split)} cold split codes")
        shape = (self.n_users, self.n_items)
        for name in ("train_csr", "valid_csr", "test_csr"):
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {shape}")
        if self.asins and len(self.asins) != self.n_items:
            raise ValueError(f"asins has {len(self.asins)} entries for {self.n_items} items")

    def split(self, name: str) -> sp.csr_matrix:
        if name not in ("train", "valid", "test"):
            raise ValueError(f"split must be train/valid/test, got {name!r}")
        return getattr(self, f"{name}_csr")


@dataclass
class ColdHoldout:
    """What the trainer needs beside the warm sub-catalog to embed and test the cold items."""

    full: InteractionData  # every item, ids as in items.parquet
    warm_ids: np.ndarray  # full item_id of warm item j (j = 0..n_warm-1), ascending
    cold_features: dict[str, np.ndarray] = field(default_factory=dict)  # rows aligned with full.cold_items


def warm_subset(data: InteractionData) -> InteractionData:
    """The warm sub-catalog: warm items re-indexed 0..n_warm-1 in item_id order, cold columns gone.

    Training on this can see no cold item: not its interactions (valid/test only, and dropped
    here), not a graph edge to it, not its popularity. Validation keeps warm items only, so model
    selection never looks at the cold half either.
    """
    cold = np.zeros(data.n_items, dtype=bool)
    cold[data.cold_items] = True
    leaked = int(data.train_csr[:, np.flatnonzero(cold)].nnz) if cold.any() else 0
    if leaked:
        raise ValueError(f"{leaked} training interaction(s) on cold items: the cold split is broken; ingest again")
    warm_ids = np.flatnonzero(~cold)
    warm = interactions_from_arrays(
        data.n_users,
        len(warm_ids),
        _pairs(data.train_csr[:, warm_ids]),
        _pairs(data.valid_csr[:, warm_ids]),
        _pairs(data.test_csr[:, warm_ids]),
        [data.asins[i] for i in warm_ids] if data.asins else None,
    )
    warm.holdout = ColdHoldout(full=data, warm_ids=warm_ids)
    return warm


def _pairs(m: sp.csr_matrix) -> np.ndarray:
    coo = m.tocoo()
    return np.stack([coo.row.astype(np.int64), coo.col.astype(np.int64)], axis=1)


def binary_csr(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """Pairs → 0/1 float32 CSR; duplicated pairs count once."""
    m = sp.csr_matrix(
        (np.ones(len(users), dtype=np.float32), (np.asarray(users, np.int64), np.asarray(items, np.int64))),
        shape=(n_users, n_items),
    )
    m.sum_duplicates()
    m.data[:] = 1.0
    m.sort_indices()
    return m


def interactions_from_arrays(
    n_users: int,
    n_items: int,
    train: np.ndarray,
    valid: np.ndarray,
    test: np.ndarray,
    asins: list[str] | None = None,
) -> InteractionData:
    """Build `InteractionData` from (m, 2) [user, item] arrays (tests, imported MMRec sets)."""
    mats = []
    for name, pairs in (("train", train), ("valid", valid), ("test", test)):
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        if len(pairs) and (pairs[:, 0].min() < 0 or pairs[:, 0].max() >= n_users):
            raise ValueError(f"{name}: user ids outside 0..{n_users - 1}")
        if len(pairs) and (pairs[:, 1].min() < 0 or pairs[:, 1].max() >= n_items):
            raise ValueError(f"{name}: item ids outside 0..{n_items - 1}")
        mats.append(binary_csr(pairs[:, 0], pairs[:, 1], n_users, n_items))
    train_csr = mats[0]
    coo = train_csr.tocoo()
    train_pairs = np.stack([coo.row.astype(np.int64), coo.col.astype(np.int64)], axis=1)
    return InteractionData(
        n_users=n_users,
        n_items=n_items,
        train=train_pairs,
        train_csr=train_csr,
        valid_csr=mats[1],
        test_csr=mats[2],
        asins=list(asins) if asins is not None else [str(i) for i in range(n_items)],
    )


def load_interactions(paths: DatasetPaths) -> InteractionData:
    """Read items.parquet + interactions.parquet (+ users.parquet when present) of a dataset."""
    items = read_table(paths.items, columns=["item_id", "asin"])
    item_ids = items.column("item_id").to_numpy().astype(np.int64)
    n_items = len(item_ids)
    if n_items == 0:
        raise StoreError(paths.items, "has no items", repair(paths.items))
    if not np.array_equal(np.sort(item_ids), np.arange(n_items)):
        raise StoreError(paths.items, "item_id is not a permutation of 0..n-1", repair(paths.items))
    asins: list[str] = [""] * n_items  # every slot is filled: item_id is a permutation (checked above)
    for i, a in zip(item_ids.tolist(), items.column("asin").to_pylist()):
        asins[i] = a

    inter = read_table(paths.interactions, schemas.INTERACTIONS, columns=["user_id", "item_id", "split"])
    users = inter.column("user_id").to_numpy().astype(np.int64)
    its = inter.column("item_id").to_numpy().astype(np.int64)
    if paths.users.exists():
        n_users = read_table(paths.users, columns=["user_id"]).num_rows
    else:
        n_users = int(users.max()) + 1 if len(users) else 0
    if len(users) and (users.min() < 0 or users.max() >= n_users):
        raise StoreError(paths.interactions, f"user_id outside 0..{n_users - 1}", repair(paths.interactions))
    if len(its) and (its.min() < 0 or its.max() >= n_items):
        raise StoreError(paths.interactions, f"item_id outside 0..{n_items - 1}", repair(paths.interactions))
    split = inter.column("split")
    unknown = pc.sum(pc.invert(pc.is_in(split, value_set=pa.array(list(schemas.SPLITS), pa.string())))).as_py() or 0
    if unknown:
        raise StoreError(paths.interactions, f"{unknown} row(s) with a split other than {schemas.SPLITS}")
    pairs = {}
    for name in schemas.SPLITS:
        mask = pc.equal(split, name).to_numpy(zero_copy_only=False)
        pairs[name] = np.stack([users[mask], its[mask]], axis=1)
    if not len(pairs["train"]):
        raise StoreError(paths.interactions, "has no training interactions", repair(paths.interactions))
    data = interactions_from_arrays(n_users, n_items, pairs["train"], pairs["valid"], pairs["test"], asins)
    data.cold_items, data.cold_split = load_cold_items(paths, asins)
    return data


def load_cold_items(paths: DatasetPaths, asins: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(sorted cold item ids, 1 valid / 2 test per id) from cold_items.parquet; empty when absent.

    Checked against items.parquet by asin: a cold table from another ingest would silently
    hold out the wrong items."""
    path = paths.cold_items
    if not path.exists():
        return np.zeros(0, np.int64), np.zeros(0, np.int8)
    table = read_table(path, schemas.COLD_ITEMS)
    ids = table.column("item_id").to_numpy().astype(np.int64)
    split = table.column("split").to_pylist()
    for row, (i, asin, s) in enumerate(zip(ids.tolist(), table.column("asin").to_pylist(), split)):
        if not 0 <= i < len(asins) or asins[i] != asin or s not in schemas.COLD_SPLITS:
            raise StoreError(
                path, f"row {row} (item_id {i}, asin {asin!r}, split {s!r}) does not match items.parquet", repair(path)
            )
    codes = np.array([schemas.SPLITS.index(s) for s in split], np.int8)
    order = np.argsort(ids)
    return ids[order], codes[order]


_FILL_WARNED: set[tuple[str, int, int]] = set()


def fill_missing_rows(name: str, vectors: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Items without this modality get the mean of the items that have it.

    A zero row would give those items a degenerate cosine (and kNN neighbours by accident); the
    mean keeps them neutral. The count is logged so a bad extraction is visible, once per table
    and process (a leaderboard loads the same table for each of its runs).
    """
    n_missing = int((~valid).sum())
    if n_missing == len(valid):
        raise ValueError(f"feature {name!r}: no item has a valid vector")
    if n_missing:
        vectors = vectors.copy()
        vectors[~valid] = vectors[valid].mean(axis=0)
        key = (name, n_missing, len(valid))
        log.log(
            logging.DEBUG if key in _FILL_WARNED else logging.WARNING,
            "feature %s: %d of %d items missing, filled with the mean vector",
            name,
            n_missing,
            len(valid),
        )
        _FILL_WARNED.add(key)
    return vectors


def load_modalities(
    paths: DatasetPaths, names: dict[str, str], asins: list[str] | None = None
) -> dict[str, np.ndarray]:
    """{'v': 'image-effnet', 't': 'text-minilm', ...} → {modality: (n_items, d) float32} in item_id order."""
    if asins is None:
        items = read_table(paths.items, columns=["item_id", "asin"])
        order = np.argsort(items.column("item_id").to_numpy())
        all_asins = items.column("asin").to_pylist()
        asins = [all_asins[i] for i in order]
    out = {}
    for modality, table_name in names.items():
        path = paths.feature(table_name)
        table = read_features(path)
        vectors, valid = align_features(table, asins, source=path)
        out[modality] = fill_missing_rows(table_name, vectors, valid)
    return out


def load_cold_modalities(
    paths: DatasetPaths, names: dict[str, str], asins: list[str], warm_ids: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """({modality: warm rows}, {modality: cold rows}) with missing rows filled from WARM items only.

    `load_modalities` fills with the mean of all items, which would let a cold item's features
    into a warm item's row; here the cold rows are read and returned apart, never mixed in.
    """
    warm_mask = np.zeros(len(asins), dtype=bool)
    warm_mask[warm_ids] = True
    warm_out, cold_out = {}, {}
    for modality, table_name in names.items():
        path = paths.feature(table_name)
        vectors, valid = align_features(read_features(path), asins, source=path)
        warm_out[modality] = fill_missing_rows(table_name, vectors[warm_mask], valid[warm_mask])
        cold = vectors[~warm_mask].copy()
        cold[~valid[~warm_mask]] = warm_out[modality][valid[warm_mask]].mean(axis=0)
        cold_out[modality] = cold
    return warm_out, cold_out


@dataclass
class GraphData:
    """Everything a model's constructor gets: graphs, features and statistics, on `device`."""

    n_users: int
    n_items: int
    adj: torch.Tensor  # sparse (n_users+n_items)², D^-1/2 A D^-1/2
    ui: torch.Tensor  # sparse n_users × n_items, rows sum to 1
    features: dict[str, torch.Tensor]
    knn: dict[str, torch.Tensor]  # sparse n_items², symmetric-normalized kNN graph per modality
    knn_edges: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    item_pop: torch.Tensor  # training interactions per item, float32
    device: torch.device
    # the user × item block of `adj` (D_u^-1/2 R D_i^-1/2): what the reference code lifts with
    ui_sym: torch.Tensor | None = None


def default_device(device: str | torch.device | None = None) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def build_graph_data(
    data: InteractionData,
    features: dict[str, np.ndarray],
    knn_k: int = 10,
    device: str | torch.device | None = None,
    cache_dir: Path | None = None,
    knn_self: bool = True,
) -> GraphData:
    """Build the user–item graph, per-modality kNN graphs and feature tensors on `device`.

    knn_self=True keeps each item among its own k neighbours, as the reference does (see
    models.training.graphs); False gives k true neighbours.
    """
    from models.training import graphs

    device = default_device(device)
    for name, f in features.items():
        if f.shape[0] != data.n_items:
            raise ValueError(f"feature {name!r} has {f.shape[0]} rows for {data.n_items} items")
    adj = graphs.to_torch_sparse(graphs.normalized_adjacency(data.train_csr), device)
    ui = graphs.to_torch_sparse(graphs.row_normalized(data.train_csr), device)
    knn: dict[str, torch.Tensor] = {}
    knn_edges: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    feats: dict[str, torch.Tensor] = {}
    seen: dict[str, str] = {}  # content hash → first modality with it (the reference run uses one table thrice)
    for name, f in features.items():
        f = np.ascontiguousarray(f, dtype=np.float32)
        key = array_hash(f)
        if key in seen:
            first = seen[key]
            knn[name], knn_edges[name] = knn[first], knn_edges[first]  # fixed graphs: shared
            feats[name] = feats[first].clone()  # own storage: a model may train its features
            continue
        seen[key] = name
        g = graphs.knn_graph(f, knn_k, include_self=knn_self, cache_dir=cache_dir)
        knn[name] = graphs.to_torch_sparse(g, device)
        coo = g.tocoo()
        knn_edges[name] = (
            torch.as_tensor(coo.row.astype(np.int64), device=device),
            torch.as_tensor(coo.col.astype(np.int64), device=device),
            torch.as_tensor(coo.data.astype(np.float32), device=device),
        )
        feats[name] = torch.as_tensor(f, device=device)
    pop = np.asarray(data.train_csr.sum(axis=0)).ravel().astype(np.float32)
    return GraphData(
        n_users=data.n_users,
        n_items=data.n_items,
        adj=adj,
        ui=ui,
        features=feats,
        knn=knn,
        knn_edges=knn_edges,
        item_pop=torch.as_tensor(pop, device=device),
        device=device,
        ui_sym=graphs.to_torch_sparse(graphs.user_item_block(data.train_csr), device),
    )
