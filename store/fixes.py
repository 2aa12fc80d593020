"""Which `anchorrec` command rewrites a given store file: the fix text of every StoreError.

A message that says "run the stage that writes it" leaves the reader to guess; one that says
`anchorrec features --dataset demo` can be pasted. The mapping follows the layout of
store.layout (one writer per file).
"""

from __future__ import annotations

from pathlib import Path

# top-level entry of a dataset directory → the command (stage) that writes it
_WRITERS = {
    "raw": "ingest",
    "items.parquet": "ingest",
    "users.parquet": "ingest",
    "interactions.parquet": "ingest",
    "cold_items.parquet": "ingest",
    "prepare.json": "ingest",
    "images": "features",
    "features": "features",
    "tokens": "features",
    "runs": "train",
    "index": "publish",
}


def locate(path: str | Path) -> tuple[Path, str] | None:
    """(dataset root, top-level entry) of a path inside a dataset directory, else None."""
    parts = Path(path).parts
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] in _WRITERS:
            return Path(*parts[:i]), parts[i]
    return None


def dataset_of(path: str | Path) -> str:
    """The dataset a store path belongs to ('D' when the path is not inside one)."""
    found = locate(path)
    return found[0].name if found else "D"


def command(stage: str, dataset: str) -> str:
    return f"anchorrec {stage} --dataset {dataset}"


def writer_of(path: str | Path) -> str:
    """The stage that writes `path`: ingest, features, train (runs/ of ica-* runs: pretrain) or publish."""
    found = locate(path)
    if found is None:
        return "pipeline"
    root, top = found
    stage = _WRITERS[top]
    if top == "runs":
        rel = Path(path).relative_to(root / "runs").parts
        if rel and rel[0].startswith("ica-"):
            stage = "pretrain"
    return stage


def repair(path: str | Path, stage: str | None = None) -> str:
    """The fix text for a bad or missing `path`: the command that rewrites it."""
    stage = stage or writer_of(path)
    dataset = dataset_of(path)
    text = f"rerun: {command(stage, dataset)}"
    if stage not in ("pipeline", "ingest"):
        text += f" (or {command('pipeline', dataset)})"
    return text
