"""A tiny synthetic dataset with one published-ready run, for the store's tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from store import DatasetPaths, schemas
from store.tables import write_table
from store.vectors import write_features, write_vectors


@dataclass
class Synthetic:
    paths: DatasetPaths
    run_id: str
    user_ids: np.ndarray
    users: np.ndarray  # (n_users, d), row i = user_ids[i]
    item_ids: np.ndarray
    items: np.ndarray  # (n_items, d), row j = item_ids[j]
    train: dict[int, set[int]]

    def exact(
        self, queries: np.ndarray, k: int, exclude: list[set[int]] | None = None
    ) -> tuple[np.ndarray | list, np.ndarray | list]:
        """Exact top-k by numpy: the ground truth every search is compared with."""
        scores = queries.astype(np.float64) @ self.items.T.astype(np.float64)
        out_ids, out_scores = [], []
        for row, s in enumerate(scores):
            order = np.argsort(-s, kind="stable")
            ids = self.item_ids[order]
            if exclude is not None:
                keep = ~np.isin(ids, list(exclude[row]))
                ids, order = ids[keep], order[keep]
            out_ids.append(ids[:k])
            out_scores.append(s[order[:k]])
        if len({len(x) for x in out_ids}) > 1:  # ragged: heavy exclusions exhausted the catalog
            return out_ids, out_scores
        return np.array(out_ids), np.array(out_scores)


def items_table(item_ids: np.ndarray) -> pa.Table:
    n = len(item_ids)
    return pa.table(
        {
            "item_id": pa.array(item_ids, pa.int32()),
            "asin": [f"B{int(i):05d}" for i in item_ids],
            "title": [f"Item number {int(i)}" for i in item_ids],
            "description": pa.nulls(n, pa.string()),
            "brand": ["acme" if i % 2 else "globex" for i in item_ids],
            "categories": pa.array([["Toys"]] * n, pa.list_(pa.string())),
            "image_url": pa.nulls(n, pa.string()),
            "text": [f"text {int(i)}" for i in item_ids],
        }
    )


def make_dataset(
    root: Path,
    n_users: int = 40,
    n_items: int = 120,
    d: int = 8,
    seed: int = 0,
    run_id: str = "run-a",
    per_user: int = 6,
) -> Synthetic:
    rng = np.random.default_rng(seed)
    paths = DatasetPaths(Path(root) / "toys")
    user_ids = np.arange(n_users, dtype=np.int64)
    item_ids = np.arange(n_items, dtype=np.int64)
    users = rng.standard_normal((n_users, d)).astype(np.float32)
    items = rng.standard_normal((n_items, d)).astype(np.float32)
    write_table(items_table(item_ids), paths.items, schemas.ITEMS)
    write_table(
        pa.table({"user_id": pa.array(user_ids, pa.int32()), "reviewer_id": [f"R{u}" for u in user_ids]}),
        paths.users,
        schemas.USERS,
    )
    rows_u, rows_i, splits = [], [], []
    train: dict[int, set[int]] = {}
    for u in user_ids:
        chosen = rng.choice(item_ids, size=per_user, replace=False)
        for j, i in enumerate(chosen):
            split = "train" if j < per_user - 2 else ("valid" if j == per_user - 2 else "test")
            rows_u.append(u), rows_i.append(i), splits.append(split)
            if split == "train":
                train.setdefault(int(u), set()).add(int(i))
    n = len(rows_u)
    write_table(
        pa.table(
            {
                "user_id": pa.array(rows_u, pa.int32()),
                "item_id": pa.array(rows_i, pa.int32()),
                "rating": pa.array(rng.integers(1, 6, n).astype(np.float32)),
                "timestamp": pa.array(np.arange(n), pa.int64()),
                "split": splits,
            }
        ),
        paths.interactions,
        schemas.INTERACTIONS,
    )
    write_features(
        paths.feature("clip-image"),
        [f"B{int(i):05d}" for i in item_ids],
        item_ids,
        rng.standard_normal((n_items, 4)).astype(np.float32),
        encoder="test",
        model="none",
        weights="none",
        modality="image",
        input_hash="x",
    )
    write_run(paths, run_id, user_ids, users, item_ids, items)
    return Synthetic(paths, run_id, user_ids, users, item_ids, items, train)


def write_run(paths: DatasetPaths, run_id: str, user_ids, users, item_ids, items) -> None:
    write_vectors(paths.user_vectors(run_id), "user_id", user_ids, users)
    write_vectors(paths.item_vectors(run_id), "item_id", item_ids, items)
