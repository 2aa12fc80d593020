"""The item-cold protocol's test: full ranking on three divisions of the catalog (issue 33).

- cold: candidates are the cold TEST items only; held out = the test interactions on them. How
  well a model ranks items nobody interacted with, from their content alone.
- warm: candidates are the warm items, training positives masked; held out = the test
  interactions on warm items. The usual protocol on the sub-catalog the model was trained on.
- all: candidates are every item (warm, cold valid, cold test), training positives masked; held
  out = every test interaction. What a user of the published index meets.

Each is `RankingEvaluator` on a column slice of the full matrices, so the metric definitions are
the warm protocol's (MMRec's). A model with no cold path has no vector for a cold item: its cold
and all divisions are None (reported as null), never computed with zeros. One function, reused
by the trainer, the report and the leaderboard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from models.evaluation.metrics import RankingEvaluator
from models.training.data import InteractionData
from store.tables import atomic_path

DIVISIONS = ("cold", "warm", "all")
PER_USER_COLD = "per_user_cold.npz"


def division_items(full: InteractionData) -> dict[str, np.ndarray]:
    """Full item ids of each division's candidates, ascending."""
    cold_test = np.sort(full.cold_items[full.cold_split == 2])
    warm = np.setdiff1d(np.arange(full.n_items), full.cold_items)
    return {"cold": cold_test, "warm": warm, "all": np.arange(full.n_items)}


def division_evaluator(
    full: InteractionData, name: str, ks: Sequence[int], device: str | torch.device | None = None
) -> tuple[RankingEvaluator, np.ndarray]:
    """(evaluator over the division's candidate columns, those columns' full item ids)."""
    cols = division_items(full)[name]
    return RankingEvaluator(full.train_csr[:, cols], full.test_csr[:, cols], ks, device=device), cols


def evaluate_divisions(
    user: np.ndarray | torch.Tensor,
    items: np.ndarray | None,
    warm_items: np.ndarray,
    full: InteractionData,
    ks: Sequence[int],
    device: str | torch.device | None = None,
) -> tuple[dict[str, dict[str, float] | None], dict[str, np.ndarray] | None]:
    """({'cold': metrics | None, 'warm': metrics, 'all': metrics | None}, cold per-user arrays | None).

    `items`: vectors of every item in full item_id order, or None for a model without a cold
    path; `warm_items`: the warm items' vectors in warm order (item_id order of warm items).
    """
    user = np.asarray(user.float().cpu() if isinstance(user, torch.Tensor) else user, np.float32)
    warm_eval, _ = division_evaluator(full, "warm", ks, device)
    out: dict[str, dict[str, float] | None] = {"cold": None, "warm": warm_eval.evaluate(user, warm_items), "all": None}
    if items is None:
        return out, None
    cold_eval, cold_cols = division_evaluator(full, "cold", ks, device)
    per_user = cold_eval.per_user(user, items[cold_cols])
    out["cold"] = {name: float(v.mean()) if len(v) else 0.0 for name, v in per_user.items() if name != "users"}
    all_eval, _ = division_evaluator(full, "all", ks, device)
    out["all"] = all_eval.evaluate(user, items)
    return {name: out[name] for name in DIVISIONS}, per_user


def write_per_user_cold(run_dir: Path, per_user: dict[str, np.ndarray]) -> Path:
    """runs/<id>/per_user_cold.npz beside per_user.npz: the cold division per user, for paired tests."""
    path = Path(run_dir) / PER_USER_COLD
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **per_user)  # type: ignore[arg-type]  # numpy's stub reads a name as allow_pickle
    return path


def division_line(metrics: dict[str, Any], keys: Sequence[str] = ("recall@20", "ndcg@20")) -> str:
    """One line of a run's three divisions, or the one line saying why cold and all are null."""
    divisions = metrics.get("test_divisions") or {}

    def values(name: str) -> str:
        return " / ".join(f"{divisions[name][k]:.4f}" for k in keys)

    head = "test " + " / ".join(keys)
    if divisions.get("cold") is None:
        model = metrics.get("model", "this model")
        return f"{head}: warm {values('warm')}; cold and all: null ({model} has no cold path)"
    return f"{head}: cold {values('cold')}, warm {values('warm')}, all {values('all')}"


DIVISION_KEYS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def division_summary(
    runs: Sequence[dict[str, Any]], keys: Sequence[str] = DIVISION_KEYS
) -> dict[str, dict[str, dict[str, float]] | None] | None:
    """Mean ± std over seed runs of each division: {'cold': {'recall@20': {'mean', 'std'}, …} | None, …}.

    None when no run has divisions (a warm dataset); a division is None when any run has it null
    (the model has no cold path): a mean over some seeds would not be the model's figure."""
    with_div = [r["test_divisions"] for r in runs if r.get("test_divisions")]
    if not with_div:
        return None
    out: dict[str, dict[str, dict[str, float]] | None] = {}
    for name in DIVISIONS:
        values = [d.get(name) for d in with_div]
        if any(v is None for v in values):
            out[name] = None
            continue
        stats: dict[str, dict[str, float]] = {}
        out[name] = stats
        for k in keys:
            v = np.array([x[k] for x in values], dtype=np.float64)
            stats[k] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
    return out


def division_table(summaries: dict[str, dict[str, Any] | None], keys: Sequence[str] = DIVISION_KEYS) -> list[str]:
    """Markdown rows model × division (mean ± std over seeds); 'null: no cold path' where it has none.

    Empty when no model has divisions, so a warm dataset's report does not change."""
    summaries = {m: s for m, s in summaries.items() if s}
    if not summaries:
        return []
    lines = [
        "## Item-cold protocol (test divisions, mean ± std over seeds)",
        "",
        "cold: ranked among the cold test items; warm: among the warm items; all: among every item "
        "(models.evaluation.cold). A model with no cold path has no cold or all figure.",
        "",
        "| model | division | " + " | ".join(keys) + " |",
        "| --- | --- | " + " | ".join("---" for _ in keys) + " |",
    ]
    for model, summary in summaries.items():
        for name in DIVISIONS:
            values = summary.get(name) if summary is not None else None
            if values is None:
                cells = ["null: no cold path"] + ["–"] * (len(keys) - 1)
            else:
                cells = [f"{values[k]['mean']:.4f} ± {values[k]['std']:.4f}" for k in keys]
            lines.append(f"| {model} | {name} | " + " | ".join(cells) + " |")
    return lines + [""]
