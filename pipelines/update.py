"""A newer dump (or delta files) merged into a dataset with STABLE ids: `anchorrec update`.

The newer files are ingested on their own, into a staging dataset (`<dataset>/.staging/`), by the
very same readers, filters and k-core as a first ingest; this module then merges the staged
tables into the dataset's tables:
- an asin or reviewer already known keeps its item_id / user_id; new ones are appended after the
  largest id, in the staged table's order, so every vector and feature row already written stays
  valid for its id;
- a known item takes the newer metadata (title, text, image URL, …); when its `text` or
  `image_url` changed it is reported as changed (the feature stage re-encodes exactly those,
  features.extract keys rows by what they read);
- an item or user missing from the newer dump STAYS (a dump that forgot an item must not take
  its vectors, its interactions or its ids away);
- interactions not already present (same user, item and timestamp) are appended with split
  `train`: they are training data for the next retrain, and the current run's test split stays
  what it was evaluated on. They count towards the retrain threshold (flows' update stage).

Merging twice with the same files changes nothing: the second merge finds no new rows.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from store import schemas
from store.layout import DatasetPaths, dataset_paths
from store.tables import read_json, read_table, write_json, write_table

STAGING = ".staging"
CHANGE_COLUMNS = ("text", "image_url")  # what the encoders read from items.parquet


def staging_paths(paths: DatasetPaths) -> DatasetPaths:
    """Where the newer files are ingested before the merge: a dataset of the same name under the dataset."""
    return dataset_paths(paths.name, paths.root / STAGING)


def remove_staging(paths: DatasetPaths) -> None:
    shutil.rmtree(paths.root / STAGING, ignore_errors=True)


def _stable_ids(known: list[str], staged: list[str]) -> tuple[np.ndarray, list[str]]:
    """Stable id of every staged key (known ones keep theirs) and the new keys, in staged order."""
    ids = {key: i for i, key in enumerate(known)}
    fresh = [key for key in staged if key not in ids]
    for key in fresh:
        ids[key] = len(ids)
    return np.array([ids[key] for key in staged], dtype=np.int32), fresh


def _by_id(table: pa.Table, id_col: str) -> pa.Table:
    """Rows in id order; ids must be 0..n-1 (the contract of items/users.parquet)."""
    table = table.sort_by(id_col)
    ids = table.column(id_col).to_numpy()
    if not np.array_equal(ids, np.arange(len(ids))):
        raise ValueError(f"{id_col} is not 0..n-1 in the dataset's table: rebuild it with anchorrec ingest")
    return table


def merge_items(old: pa.Table, staged: pa.Table) -> tuple[pa.Table, dict[str, Any]]:
    """Items with stable ids: known asins keep their id and take the newer metadata; the rest appended."""
    old = _by_id(old, "item_id")
    known = old.column("asin").to_pylist()
    staged = staged.sort_by("item_id")
    ids, fresh = _stable_ids(known, staged.column("asin").to_pylist())
    staged = staged.set_column(staged.schema.get_field_index("item_id"), "item_id", pa.array(ids, pa.int32()))
    n_old = len(known)
    is_known = ids < n_old
    changed: list[int] = []
    if is_known.any():
        before = old.take(pa.array(ids[is_known]))
        after = staged.filter(pa.array(is_known))
        differs = np.zeros(len(after), dtype=bool)
        for col in CHANGE_COLUMNS:
            a, b = before.column(col), after.column(col)
            same = pc.fill_null(pc.equal(a, b), False).to_numpy(zero_copy_only=False)
            both_null = pc.and_(pc.is_null(a), pc.is_null(b)).to_numpy(zero_copy_only=False)
            differs |= ~(same | both_null)
        changed = sorted(int(i) for i in ids[is_known][differs])
    seen = np.zeros(n_old, dtype=bool)
    seen[ids[is_known]] = True
    kept = old.filter(pa.array(~seen))  # missing from the newer dump: stay as they were
    merged = pa.concat_tables([kept, staged.select(old.column_names).cast(old.schema)]).sort_by("item_id")
    summary = {
        "items_before": n_old,
        "items": merged.num_rows,
        "new_items": sorted(int(i) for i in ids[~is_known]),
        "changed_items": changed,
        "items_missing_from_dump": int((~seen).sum()),
    }
    return merged, summary


def merge_users(old: pa.Table, staged: pa.Table) -> tuple[pa.Table, np.ndarray, int]:
    """(users with stable ids, staged user_id → stable user_id, how many are new)."""
    old = _by_id(old, "user_id")
    staged = staged.sort_by("user_id")
    ids, fresh = _stable_ids(old.column("reviewer_id").to_pylist(), staged.column("reviewer_id").to_pylist())
    remap = np.full(int(staged.column("user_id").to_numpy().max(initial=-1)) + 1, -1, dtype=np.int32)
    remap[staged.column("user_id").to_numpy()] = ids
    n_old = old.num_rows
    new_rows = pa.table(
        {
            "user_id": pa.array(np.arange(n_old, n_old + len(fresh), dtype=np.int32)),
            "reviewer_id": pa.array(fresh, pa.string()),
        }
    )
    return pa.concat_tables([old, new_rows.cast(old.schema)]), remap, len(fresh)


def merge_interactions(old: pa.Table, staged: pa.Table, user_map: np.ndarray, item_map: np.ndarray) -> pa.Table:
    """The dataset's interactions, then the staged ones not already there (same user, item, time) as train."""
    users = user_map[staged.column("user_id").to_numpy()]
    items = item_map[staged.column("item_id").to_numpy()]
    stamps = staged.column("timestamp").to_numpy()
    have = set(
        zip(
            old.column("user_id").to_numpy().tolist(),
            old.column("item_id").to_numpy().tolist(),
            old.column("timestamp").to_numpy().tolist(),
        )
    )
    fresh = np.array(
        [(u, i, t) not in have for u, i, t in zip(users.tolist(), items.tolist(), stamps.tolist())], dtype=bool
    )
    added = pa.table(
        {
            "user_id": pa.array(users[fresh], pa.int32()),
            "item_id": pa.array(items[fresh], pa.int32()),
            "rating": staged.column("rating").filter(pa.array(fresh)),
            "timestamp": pa.array(stamps[fresh], pa.int64()),
            "split": pa.array(["train"] * int(fresh.sum()), pa.string()),
        }
    )
    return pa.concat_tables([old, added.cast(old.schema)])


def merge_staged(paths: DatasetPaths, staged: DatasetPaths) -> dict[str, Any]:
    """Merge the staged tables into the dataset's (written atomically, one table after another).

    A crash between the three writes is repaired by running the same update again: the merge is
    idempotent, and the tables already merged simply find nothing new.
    """
    old_items = read_table(paths.items, schemas.ITEMS)
    items, summary = merge_items(old_items, read_table(staged.items, schemas.ITEMS))
    staged_items = read_table(staged.items, schemas.ITEMS, columns=["item_id", "asin"])
    item_ids = {a: i for i, a in enumerate(items.sort_by("item_id").column("asin").to_pylist())}
    item_map = np.full(int(staged_items.column("item_id").to_numpy().max(initial=-1)) + 1, -1, dtype=np.int32)
    item_map[staged_items.column("item_id").to_numpy()] = [item_ids[a] for a in staged_items.column("asin").to_pylist()]
    users, user_map, new_users = merge_users(
        read_table(paths.users, schemas.USERS), read_table(staged.users, schemas.USERS)
    )
    old_inter = read_table(paths.interactions, schemas.INTERACTIONS)
    inter = merge_interactions(old_inter, read_table(staged.interactions, schemas.INTERACTIONS), user_map, item_map)
    added = inter.slice(old_inter.num_rows)
    new_items = np.array(summary["new_items"], dtype=np.int64)
    on_new = np.isin(added.column("item_id").to_numpy(), new_items)
    write_table(items, paths.items, schemas.ITEMS)
    write_table(users, paths.users, schemas.USERS)
    write_table(inter, paths.interactions, schemas.INTERACTIONS)
    summary.update(
        users_before=users.num_rows - new_users,
        users=users.num_rows,
        new_users=new_users,
        interactions_before=old_inter.num_rows,
        interactions=inter.num_rows,
        new_interactions=added.num_rows,
        new_interactions_on_new_items=int(on_new.sum()),
        users_with_new_interactions=sorted(int(u) for u in np.unique(added.column("user_id").to_numpy())),
    )
    summary["line"] = merge_line(summary)
    return summary


def merge_line(s: dict[str, Any]) -> str:
    """The stage's one line: what the newer files added and changed, and what stayed."""
    return (
        f"{len(s['new_items'])} new items, {len(s['changed_items'])} changed, {s['items_missing_from_dump']} missing "
        f"from the newer files (kept); {s['new_users']} new users; {s['new_interactions']} new interactions "
        f"(added to train, {s['new_interactions_on_new_items']} on new items); now {s['items']} items, "
        f"{s['users']} users, {s['interactions']} interactions"
    )


# --------------------------------------------------------------------------- the retrain counter
LEDGER = "updates.json"


def ledger_path(paths: DatasetPaths) -> Path:
    return paths.root / LEDGER


def read_ledger(paths: DatasetPaths, run_id: str, items: int, interactions: int) -> dict[str, Any]:
    """What was added since `run_id` was trained; a run met for the first time starts at zero,
    with the tables' counts as they are before this update (what that run was trained on)."""
    path = ledger_path(paths)
    ledger = read_json(path) if path.exists() else {}
    if ledger.get("run") != run_id:
        ledger = {"run": run_id, "at_training": {"items": items, "interactions": interactions}, "since": {}}
        ledger["since"] = {"items": 0, "interactions": 0, "updates": 0}
    return ledger


def retrain_fraction(ledger: dict[str, Any], new_items: int, new_interactions: int) -> float:
    """The larger of (new items / items at training) and (new interactions / interactions at
    training), counted over every update since the training, this one included: either kind of
    growth alone can make the trained model stale (a catalog that doubled, or a busy week)."""
    at, since = ledger["at_training"], ledger["since"]
    items = (since["items"] + new_items) / max(1, at["items"])
    inter = (since["interactions"] + new_interactions) / max(1, at["interactions"])
    return max(items, inter)


def record_update(paths: DatasetPaths, ledger: dict[str, Any], new_items: int, new_interactions: int) -> None:
    since = ledger["since"]
    since.update(
        items=since["items"] + new_items,
        interactions=since["interactions"] + new_interactions,
        updates=since["updates"] + 1,
    )
    write_json(ledger, ledger_path(paths))


def record_training(paths: DatasetPaths, run_id: str, items: int, interactions: int) -> None:
    """A retrain resets the counter: the new run has seen everything."""
    ledger = {"run": run_id, "at_training": {"items": items, "interactions": interactions}}
    ledger["since"] = {"items": 0, "interactions": 0, "updates": 0}
    write_json(ledger, ledger_path(paths))
