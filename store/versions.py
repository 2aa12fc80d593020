"""Index versions of a run: immutable directories and one pointer, so readers never see a mix.

Layout (docs/store.md): `index/<run_id>/versions/<NNNN>/` holds everything a reader needs to
answer — `items.faiss`, `manifest.json`, `item_vectors.parquet`, `user_vectors.parquet` (absent
for a content run) and `change.json` (what changed) — and `index/<run_id>/CURRENT` holds the
name of the version served. Why a copy of the vectors in each version: `recommend` combines a
user vector with the index, and a reader that took the user vectors of one publish and the index
of another would answer for no model; reading both from one immutable directory, resolved once
(`serving`), makes that impossible. A new version is written in a temporary directory, renamed
into place, and only then is CURRENT replaced (write-temp + os.replace): readers see the old
version or the new one.

Rollback moves CURRENT to the version the current one replaced (its change.json `from_version`);
a second rollback walks one step further back, and at the first version there is nothing to roll
back to (an error, nothing changes). A version published after a rollback replaces the version
then current, so rolling it back returns there. Prune keeps the newest `keep` versions by number
and never the current one.

An index directory without CURRENT (written before versions existed) is still served as it is:
`items.faiss` + `manifest.json` in the directory, the vectors from `runs/<run_id>/`.

This module is the layout, the pointer, listing and pruning; writing a version and rolling back
need the FAISS index, so `publish_version` and `rollback` live in store/index.py (which imports
this module, never the other way round).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from store.atomic import temp_beside
from store.errors import StoreError
from store.layout import DatasetPaths, check_name
from store.tables import read_json

VERSIONS_DIR = "versions"
CURRENT_FILE = "CURRENT"
CHANGE_FILE = "change.json"
ITEM_VECTORS = "item_vectors.parquet"
USER_VECTORS = "user_vectors.parquet"
KEEP = 5
KINDS = ("train", "update")  # a rollback writes no version: it moves CURRENT
_VERSION = re.compile(r"^\d{4,}$")


@dataclass(frozen=True)
class Serving:
    """The files one reader answers from, resolved once: a version directory, or an older
    unversioned index directory (version None) whose vectors are the run's."""

    run_id: str
    version: str | None
    directory: Path
    item_vectors: Path
    user_vectors: Path


def versions_root(paths: DatasetPaths, run_id: str) -> Path:
    return paths.index_dir(run_id) / VERSIONS_DIR


def version_dir(paths: DatasetPaths, run_id: str, version: str) -> Path:
    if not _VERSION.match(version or ""):
        raise ValueError(f"invalid version name {version!r}: four or more digits, e.g. 0001")
    return versions_root(paths, run_id) / version


def current_file(paths: DatasetPaths, run_id: str) -> Path:
    return paths.index_dir(run_id) / CURRENT_FILE


def version_names(paths: DatasetPaths, run_id: str) -> list[str]:
    """The kept versions of a run, oldest (lowest number) first."""
    root = versions_root(paths, run_id)
    if not root.is_dir():
        return []
    return sorted((p.name for p in root.iterdir() if _VERSION.match(p.name) and p.is_dir()), key=int)


def fix_text(paths: DatasetPaths, run_id: str) -> str:
    return (
        f"anchorrec versions --dataset {paths.name} --run {run_id} lists the kept versions; "
        f"anchorrec publish --dataset {paths.name} publishes a new one"
    )


def current_version(paths: DatasetPaths, run_id: str) -> str | None:
    """The version CURRENT names, or None for an index directory without versions.

    A CURRENT that names no kept version is refused (never a silent fallback to another one)."""
    pointer = current_file(paths, check_name("run", run_id))
    try:
        text = pointer.read_text().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(pointer, f"cannot be read ({exc})", fix_text(paths, run_id)) from exc
    if not _VERSION.match(text) or not version_dir(paths, run_id, text).is_dir():
        kept = ", ".join(version_names(paths, run_id)) or "none"
        raise StoreError(
            pointer, f"names version {text[:40]!r}, which is not kept (kept: {kept})", fix_text(paths, run_id)
        )
    return text


def serving(paths: DatasetPaths, run_id: str) -> Serving:
    """What a reader of `run_id` reads now: CURRENT resolved once, so every file comes from one version."""
    version = current_version(paths, run_id)
    if version is None:
        return Serving(run_id, None, paths.index_dir(run_id), paths.item_vectors(run_id), paths.user_vectors(run_id))
    directory = version_dir(paths, run_id, version)
    return Serving(run_id, version, directory, directory / ITEM_VECTORS, directory / USER_VECTORS)


def pinned(paths: DatasetPaths, run_id: str, version: str) -> Serving:
    """A named version (rollback checks its target before switching to it)."""
    directory = version_dir(paths, run_id, version)
    return Serving(run_id, version, directory, directory / ITEM_VECTORS, directory / USER_VECTORS)


@contextlib.contextmanager
def run_lock(paths: DatasetPaths, run_id: str) -> Iterator[None]:
    """Publishers, rollback and prune of one run take turns (readers never take it)."""
    directory = paths.index_dir(run_id)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".publish.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def switch_current(paths: DatasetPaths, run_id: str, version: str) -> None:
    """Point CURRENT at `version` in one rename: the single step that changes what readers serve."""
    pointer = current_file(paths, run_id)
    tmp = temp_beside(pointer)
    try:
        with open(tmp, "w") as fh:
            fh.write(version + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, pointer)
    finally:
        if tmp.exists():
            tmp.unlink()


def change_record(change: dict[str, Any], previous: str | None) -> dict[str, Any]:
    kind = change.get("kind")
    if kind not in KINDS:
        raise ValueError(f"change['kind'] must be one of {KINDS}, got {kind!r}")
    out = {"items_added": 0, "items_changed": 0, "users_updated": 0, "note": "", **change}
    out["from_version"] = previous
    out["created_at"] = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    return out


def check_keep(keep: int) -> int:
    if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) or keep < 1:
        raise ValueError(f"--keep must be an integer ≥ 1 (versions kept per run), got {keep!r}")
    return int(keep)


def read_dict(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise StoreError(path, f"is not a JSON object (a {type(data).__name__})")
    return data


def list_versions(paths: DatasetPaths, run_id: str) -> list[dict[str, Any]]:
    """One dict per kept version, oldest first: version, current, created, kind, items, users, dim,
    items_added, items_changed, users_updated, from_version, note, problem (why it cannot be read)."""
    current = current_version(paths, run_id)
    rows = []
    for name in version_names(paths, run_id):
        directory = version_dir(paths, run_id, name)
        row: dict[str, Any] = {"version": name, "current": name == current, "problem": None}
        try:
            manifest, change = read_dict(directory / "manifest.json"), read_dict(directory / CHANGE_FILE)
        except StoreError as exc:
            rows.append({**row, "problem": str(exc)})
            continue
        row.update(
            {
                "created": str(manifest.get("created_at", "")),
                "kind": change.get("kind"),
                "items": manifest.get("count"),
                "users": manifest.get("users"),
                "dim": manifest.get("dim"),
                "items_added": change.get("items_added"),
                "items_changed": change.get("items_changed"),
                "users_updated": change.get("users_updated"),
                "from_version": change.get("from_version"),
                "note": change.get("note") or None,
            }
        )
        rows.append(row)
    return rows


# Column types of `anchorrec versions` (a column that is None in every row has no type of its own).
VERSIONS_SCHEMA = pa.schema(
    [
        ("version", pa.string()),
        ("current", pa.bool_()),
        ("created", pa.string()),
        ("kind", pa.string()),
        ("items", pa.int64()),
        ("users", pa.int64()),
        ("dim", pa.int64()),
        ("items_added", pa.int64()),
        ("items_changed", pa.int64()),
        ("users_updated", pa.int64()),
        ("from_version", pa.string()),
        ("note", pa.string()),
        ("problem", pa.string()),
    ]
)


def prune(paths: DatasetPaths, run_id: str, keep: int = KEEP) -> list[str]:
    """Remove all but the newest `keep` versions, never the current one; returns the removed names."""
    keep = check_keep(keep)
    with run_lock(paths, run_id):
        return prune_locked(paths, run_id, keep)


def prune_locked(paths: DatasetPaths, run_id: str, keep: int) -> list[str]:
    current = current_version(paths, run_id)
    names = version_names(paths, run_id)
    doomed = [n for n in names[: max(len(names) - keep, 0)] if n != current]
    for name in doomed:
        # renamed away first: a reader sees the whole version or none of it, never half deleted
        trash = versions_root(paths, run_id) / f".pruned-{name}-{uuid.uuid4().hex[:8]}"
        os.rename(version_dir(paths, run_id, name), trash)
        shutil.rmtree(trash, ignore_errors=True)
    for stale in versions_root(paths, run_id).glob(".*"):  # a crashed publisher's .new-, a crashed prune's .pruned-
        if stale.name.startswith((".new-", ".pruned-")):  # (safe: publishers hold the run lock, as we do)
            shutil.rmtree(stale, ignore_errors=True)
    if current is not None:
        for legacy in ("items.faiss", "manifest.json"):  # an older home's unversioned index, now unused
            (paths.index_dir(run_id) / legacy).unlink(missing_ok=True)
    return doomed


def newest_created(paths: DatasetPaths, run_id: str) -> str | None:
    """created_at of the run's newest version: when it was last published (a rollback does not
    change it, so rolling back one run never makes another run the default)."""
    names = version_names(paths, run_id)
    if not names:
        return None
    try:
        return str(read_dict(version_dir(paths, run_id, names[-1]) / "manifest.json").get("created_at", ""))
    except StoreError:
        return None
