"""What is in a store: datasets and their runs, for `anchorrec ls` and `anchorrec runs`.

Cheap by design (Parquet footers and small JSON files, never a table's data), so listing a home
with large datasets is instant. Both functions return lists of plain dicts (one per row), which
the CLI prints as a table and tests compare directly. A run's status is the one its trainer
wrote (store.run_status), never read from file ages, except for runs written before status files
existed and pretraining runs (legacy_status).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from store.errors import StoreError
from store.index import manifests
from store.layout import DatasetPaths, anchorrec_home
from store.run_status import ENDED, read_status
from store.tables import read_json

# Legacy runs only (no status.json): one with neither metrics.json nor a checkpoint/config written
# this recently is not running.
RUNNING_WINDOW_S = 600.0
SELECT = "recall@20"
ENDED_FILES = ("metrics.json", "item_vectors.parquet", "user_vectors.parquet")  # what a tested run leaves


def _rows(path: Path) -> int | None:
    """Row count from the Parquet footer; None when the file is missing or unreadable."""
    try:
        return int(pq.ParquetFile(path).metadata.num_rows) if path.is_file() else None
    except (pa.ArrowException, OSError):
        return None


def dataset_names(home: str | Path | None = None) -> list[str]:
    """Directories under `home` (default $ANCHORREC_HOME or ./data) that hold a dataset."""
    base = Path(home).expanduser() if home is not None else anchorrec_home()
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def require_dataset(paths: DatasetPaths) -> None:
    """Refuse a dataset that does not exist before anything opens its (missing) tables."""
    if paths.root.is_dir():
        return
    home = paths.root.parent
    names = ", ".join(dataset_names(home)) or "none"
    raise StoreError(
        None,
        f"dataset {paths.name!r} not found under {home} (datasets: {names})",
        f"create it with anchorrec pipeline --dataset {paths.name}",
    )


def list_datasets(home: str | Path | None = None) -> list[dict[str, Any]]:
    """One dict per dataset: name, items, users, interactions (row counts, None if absent),
    features (names), runs (trained recommender runs), pretrain_runs (ica-*), published (run ids
    with a readable index manifest, oldest first) and latest (the run `recommend` would use)."""
    base = Path(home).expanduser() if home is not None else anchorrec_home()
    out = []
    for name in dataset_names(base):
        paths = DatasetPaths(base / name)
        runs = paths.run_ids()
        found = manifests(paths)
        readable = sorted(
            ((r, m) for r, m in found if isinstance(m, dict)), key=lambda rm: (_published_at(rm[1]), rm[0])
        )
        out.append(
            {
                "name": name,
                "items": _rows(paths.items),
                "users": _rows(paths.users),
                "interactions": _rows(paths.interactions),
                "features": paths.feature_names(),
                "runs": sum(not r.startswith("ica-") for r in runs),
                "pretrain_runs": sum(r.startswith("ica-") for r in runs),
                "published": [r for r, _ in readable],
                "latest": None if any(isinstance(m, StoreError) for _, m in found) or not readable else readable[-1][0],
                "broken_manifests": sorted(r for r, m in found if isinstance(m, StoreError)),
            }
        )
    return out


def _published_at(manifest: dict[str, Any]) -> str:
    """When a run was last published (its newest index version), which orders runs for `latest`."""
    return str(manifest.get("published_at") or manifest.get("created_at", ""))


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = read_json(path) if path.is_file() else None
    except StoreError:
        return None
    return data if isinstance(data, dict) else None


def run_status(run_dir: Path, metrics: dict[str, Any] | None, now: float | None = None) -> tuple[str, str | None]:
    """(status, note) of a run: what its trainer recorded in status.json (store.run_status), with
    a 'running' whose trainer is gone shown as 'interrupted', and a note where the files of an
    ended run are incomplete (the same train command rewrites them from the checkpoint)."""
    record = read_status(run_dir)
    if record is None:
        return legacy_status(run_dir, metrics, now), None
    status, note = record["status"], record.get("note")
    if status in ENDED:
        missing = [f for f in ENDED_FILES if not (run_dir / f).is_file()]
        note = f"{', '.join(missing)} missing: rerun its train command to rewrite them" if missing else None
    return status, note


def content_status(run_dir: Path, config: dict[str, Any]) -> tuple[str, str]:
    """A content run (store.index.publish_content) is finished when its vectors are there."""
    if not (run_dir / "item_vectors.parquet").is_file():
        return "failed", f"item_vectors.parquet missing: rerun anchorrec publish --dataset {run_dir.parents[1].name}"
    return "finished", (
        f"content vectors of {config.get('feature')} ({config.get('with_vector')} of "
        f"{config.get('items')} items), no training"
    )


def legacy_status(run_dir: Path, metrics: dict[str, Any] | None, now: float | None = None) -> str:
    """finished / stopped / running / failed, guessed for runs written before status.json, and for
    pretraining (ica-*) runs, which do not record one.

    Training writes metrics.json only at the end and rewrites checkpoint.pt every epoch, so a
    run without metrics whose files were touched within RUNNING_WINDOW_S is taken as running;
    an older one crashed or was killed (rerunning the same command resumes it).
    """
    if metrics is not None:
        return "stopped" if metrics.get("stopped_by_hand") else "finished"
    now = time.time() if now is None else now
    touched = [p.stat().st_mtime for p in (run_dir / "checkpoint.pt", run_dir / "config.json") if p.exists()]
    return "running" if touched and now - max(touched) < RUNNING_WINDOW_S else "failed"


def _metric(metrics: dict[str, Any] | None, split: str) -> float | None:
    value = (metrics or {}).get(split, {})
    return float(value[SELECT]) if isinstance(value, dict) and SELECT in value else None


def _newest(paths: DatasetPaths) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Readable manifests by run, and the run `recommend` would use (None when a manifest is broken)."""
    found = manifests(paths)
    published = {r: m for r, m in found if isinstance(m, dict)}
    broken = any(isinstance(m, StoreError) for _, m in found)
    newest = None if broken or not published else max(published, key=lambda r: (_published_at(published[r]), r))
    return published, newest


def run_summary(
    paths: DatasetPaths,
    run_id: str,
    now: float | None = None,
    _published: tuple[dict[str, Any], str | None] | None = None,
) -> dict[str, Any]:
    """One run as a dict: run_id, model, seed, status, valid_recall@20 (best validation),
    test_recall@20 (of that epoch), best_epoch, published (a readable index manifest exists),
    latest (it is the run `recommend` uses), version (the index version it serves), note (why a run is failed or interrupted, or which of
    an ended run's files are missing). Pretraining runs (ica-*) have model 'ica' and no recall."""
    published, newest = _published if _published is not None else _newest(paths)
    run_dir = paths.run(run_id)
    config = _json(run_dir / "config.json") or {}
    metrics = _json(run_dir / "metrics.json")
    ica = run_id.startswith("ica-")
    seed = (config.get("config", {}) or {}).get("seed") if ica else config.get("seed", (metrics or {}).get("seed"))
    note: str | None
    if config.get("model") == "content":  # a catalog's content vectors published as is: nothing trained
        status, note = content_status(run_dir, config)
    else:
        status, note = run_status(run_dir, metrics, now)
    return {
        "run_id": run_id,
        "model": "ica" if ica else config.get("model", (metrics or {}).get("model")),
        "seed": seed,
        "status": status,
        "valid_recall@20": None if ica else _metric(metrics, "valid"),
        "test_recall@20": None if ica else _metric(metrics, "test"),
        "best_epoch": (metrics or {}).get("best_epoch"),
        "published": run_id in published,
        "latest": run_id == newest,
        "version": (published.get(run_id) or {}).get("version"),
        "note": note,
    }


def list_runs(paths: DatasetPaths, now: float | None = None) -> list[dict[str, Any]]:
    """`run_summary` of every run directory of the dataset, by run id."""
    published = _newest(paths)
    return [run_summary(paths, run_id, now, published) for run_id in paths.run_ids()]


# Column types for printing the lists as tables (a column that is None in every row has no type of its own).
DATASETS_SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("items", pa.int64()),
        ("users", pa.int64()),
        ("interactions", pa.int64()),
        ("features", pa.list_(pa.string())),
        ("runs", pa.int64()),
        ("pretrain_runs", pa.int64()),
        ("published", pa.list_(pa.string())),
        ("latest", pa.string()),
        ("broken_manifests", pa.list_(pa.string())),
    ]
)
RUNS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("model", pa.string()),
        ("seed", pa.int64()),
        ("status", pa.string()),
        ("valid_recall@20", pa.float64()),
        ("test_recall@20", pa.float64()),
        ("best_epoch", pa.int64()),
        ("published", pa.bool_()),
        ("latest", pa.bool_()),
        ("version", pa.string()),
        ("note", pa.string()),
    ]
)
