"""Vectors for items a model never saw: the shared half of every model's cold path (issue 33).

A new item has features but no interactions and no trained ID embedding. Each model says in its
own file how it embeds such an item from its features alone (`COLD_PATH`, `cold_kit()`,
`cold_item_vectors(kit, features)`); this module holds what they share:

- `neighbours` / `knn_propagate`: a new item's content kNN neighbours among the WARM items and
  the weighted sum of vectors over them, weighted the way the models' own item–item graphs are
  (models/training/graphs.py `sym_normalized_knn`): the top-k cosines s_nj of the new item n
  among the warm items j, weights s_nj / sqrt(d_n d_j) with d_n = Σ_j s_nj over the kept k and
  d_j the warm item's own degree in its kNN graph (the sum of its top-k cosines, itself among them
  when the graph was built with `knn_self`); 'unweighted' graphs (FREEDOM, DA-MRS) use
  1 / sqrt(c_n d_j) with c_n, d_j neighbour counts. The new item takes k WARM neighbours and no
  self-loop: it has no trained vector of its own to keep. A warm item's own feature row therefore
  finds itself and the rest of its own kNN row, and gets exactly one step of the model's graph:
  the check tests/test_cold_paths.py runs against each model's graph.
- the kit's file: `save_kit(run_dir, model)` writes `cold_kit.pt` (what the model computed from the
  warm items at training time: their features, degrees, final or branch vectors, projection
  weights), `load_kit(run_dir)` reads it back; nothing else of the run is needed to embed an item.
- `cold_vectors(model_name, kit, features)` dispatches to the model's module; None when the model
  has no honest cold path (`COLD_PATH = None`, e.g. LightGCN), so it is left out of the cold
  column instead of being given zeros. `cold_path(model_name)` is the sentence for reports.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from models.registry import MODELS, READS, model_module
from store.atomic import atomic_path

KIT_FILE = "cold_kit.pt"
WEIGHTINGS = ("cosine", "unweighted")
BLOCK = 4096  # new items propagated at a time


# ------------------------------------------------------------------------ neighbours and weights


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (a zero row stays zero: it has no direction to compare)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def neighbours(new: np.ndarray, warm: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The `n` warm rows of highest cosine with each new row, best first: (indices, cosines).

    Exact inner-product search over unit rows (FAISS flat): a day's new items against the catalog.
    """
    if new.shape[1] != warm.shape[1]:
        raise ValueError(f"new features have {new.shape[1]} dims, the warm items' {warm.shape[1]}")
    n = min(n, len(warm))
    index = faiss.IndexFlatIP(warm.shape[1])
    index.add(unit_rows(warm))
    sim, idx = index.search(unit_rows(new), n)
    return idx.astype(np.int64), sim.astype(np.float32)


def warm_degrees(warm: np.ndarray, k: int, include_self: bool, weighting: str) -> np.ndarray:
    """d_j of every warm item in its own kNN graph: the sum of its top-k cosines (or k, unweighted)."""
    from models.training.graphs import knn_search

    if weighting == "unweighted":
        return np.full(len(warm), float(min(k, len(warm) if include_self else len(warm) - 1)), np.float32)
    _, sim = knn_search(np.asarray(warm, np.float32), k, include_self=include_self)
    return sim.astype(np.float64).sum(1).astype(np.float32)


def edge_weights(sim: np.ndarray, keep: np.ndarray, deg: np.ndarray, weighting: str) -> np.ndarray:
    """Sym-normalised weights of each new row's kept neighbours: s/sqrt(d_n d_j) or 1/sqrt(c_n d_j).

    A degree ≤ 0 (only non-positive cosines) gives weight 0, as `sym_normalized_knn` does.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    w = np.where(keep, sim if weighting == "cosine" else 1.0, 0.0).astype(np.float64)
    d_new = w.sum(1, keepdims=True)
    inv_new = np.divide(1.0, np.sqrt(np.maximum(d_new, 1e-300)), where=d_new > 0, out=np.zeros_like(d_new))
    inv_warm = np.divide(1.0, np.sqrt(np.maximum(deg, 1e-300)), where=deg > 0, out=np.zeros_like(deg, np.float64))
    return w * inv_new * inv_warm


def knn_propagate(
    new: np.ndarray,
    warm: np.ndarray,
    warm_vectors: np.ndarray,
    k: int,
    *,
    weighting: str = "cosine",
    warm_degree: np.ndarray | None = None,
    keep: Any = None,
    candidates: int = 1,
) -> np.ndarray:
    """Σ_j w_nj · warm_vectors[j] over each new row's k content neighbours among the warm items.

    `warm_degree` None: the warm items' degrees are computed here (`warm_degrees`, for a graph with
    self-loops, the trainer's default); a kit passes the trained graph's own. `keep(idx, sim) -> bool mask`
    filters candidate neighbours (DA-MRS's denoising mask); then `candidates`·k are searched and
    the first k that pass are kept, as the model builds its own graph.
    """
    if k < 1:
        raise ValueError(f"knn k must be ≥ 1, got {k}")
    if len(warm) != len(warm_vectors):
        raise ValueError(f"{len(warm)} warm feature rows for {len(warm_vectors)} warm vectors")
    if warm_degree is None:
        warm_degree = warm_degrees(warm, k, True, weighting)
    idx, sim = neighbours(new, warm, k * max(1, candidates))
    ok = idx >= 0
    if keep is not None:
        ok &= keep(np.maximum(idx, 0), sim)
    ok &= np.cumsum(ok, axis=1) <= k  # best first: the first k that pass
    safe = np.maximum(idx, 0)
    w = edge_weights(sim, ok, np.asarray(warm_degree, np.float64)[safe], weighting)
    vecs = np.asarray(warm_vectors, np.float32)
    out = np.empty((len(new), vecs.shape[1]), np.float32)
    for start in range(0, len(new), BLOCK):  # bounded memory: BLOCK × candidates × d at a time
        part = slice(start, start + BLOCK)
        out[part] = np.einsum("nk,nkd->nd", w[part], vecs[safe[part]].astype(np.float64))
    return out


# ------------------------------------------------------------------------ kits of graph models


def graph_shape(edges: tuple[torch.Tensor, ...], n_items: int) -> tuple[int, bool]:
    """(k, include_self) of a kNN graph given as (rows, cols, vals) edges: what its builder used."""
    rows, cols = edges[0], edges[1]
    k = int(torch.bincount(rows, minlength=n_items).max()) if len(rows) else 1
    return max(k, 1), bool((rows == cols).any())


def as_tensor(x: Any) -> torch.Tensor:
    """A detached float32 CPU copy (what a kit holds)."""
    return torch.as_tensor(x).detach().to("cpu", torch.float32).clone()


def edge_degrees(features: torch.Tensor, edges: tuple[torch.Tensor, ...], n: int, weighting: str) -> np.ndarray:
    """d_j of every warm item read off the model's own kNN edges: Σ of its cosines, or its count."""
    rows, cols = edges[0].cpu().numpy(), edges[1].cpu().numpy()
    if weighting == "unweighted":
        return np.bincount(rows, minlength=n).astype(np.float32)
    unit = unit_rows(features.detach().cpu().numpy())
    sim = np.einsum("ed,ed->e", unit[rows], unit[cols]).astype(np.float64)
    return np.bincount(rows, weights=sim, minlength=n).astype(np.float32)


def graph_entry(
    modality: str,
    weight: float,
    features: torch.Tensor,
    vectors: torch.Tensor,
    edges: tuple[torch.Tensor, ...],
    weighting: str,
) -> dict[str, Any]:
    """One item–item graph of a kit: the warm features it searches, their degrees in the model's
    graph (`edges`), and the warm vectors it propagates."""
    f = as_tensor(features)
    return {
        "modality": modality,
        "weight": float(weight),
        "features": f,
        "degree": as_tensor(edge_degrees(f, edges, len(f), weighting)),
        "vectors": as_tensor(vectors),
    }


def graph_kit(
    model: str, graphs: list[dict[str, Any]], edges: tuple[torch.Tensor, ...], weighting: str, **extra: Any
) -> dict[str, Any]:
    """A kit of graph entries, k and self-loops read off the model's kNN `edges`."""
    n = len(graphs[0]["features"])
    k, include_self = graph_shape(edges, n)
    kit = {"model": model, "k": k, "knn_self": include_self, "weighting": weighting, "graphs": graphs, **extra}
    return share_storage(kit)


def share_storage(kit: dict[str, Any]) -> dict[str, Any]:
    """Graphs with equal feature tables (t = v, the text-only setup) hold one tensor: saved once."""
    seen: list[torch.Tensor] = []
    for g in kit["graphs"]:
        for key in ("features", "degree", "vectors"):
            t = g[key]
            same = next((s for s in seen if s.shape == t.shape and torch.equal(s, t)), None)
            if same is None:
                seen.append(t)
            else:
                g[key] = same
    return kit


def check_features(kit: dict[str, Any], features: dict[str, np.ndarray]) -> int:
    """The number of new items; a clear error for a missing modality or a wrong width."""
    n = None
    for g in kit["graphs"]:
        m = g["modality"]
        if m not in features:
            raise ValueError(f"cold path of {kit.get('model')}: no {m!r} features for the new items; give {m!r}")
        f = features[m]
        if f.ndim != 2 or f.shape[1] != g["features"].shape[1]:
            raise ValueError(
                f"cold path of {kit.get('model')}: {m!r} features have shape {f.shape}, "
                f"the model was trained on {g['features'].shape[1]} dims"
            )
        if n is not None and len(f) != n:
            raise ValueError(f"cold path of {kit.get('model')}: {m!r} has {len(f)} rows, other modalities {n}")
        n = len(f)
    return int(n or 0)


def propagate_graphs(kit: dict[str, Any], features: dict[str, np.ndarray], keep: Any = None) -> list[np.ndarray]:
    """Each graph's propagation of its warm vectors to the new items (graph weights not applied)."""
    check_features(kit, features)
    out = []
    for g in kit["graphs"]:
        out.append(
            knn_propagate(
                np.asarray(features[g["modality"]], np.float32),
                g["features"].numpy(),
                g["vectors"].numpy(),
                kit["k"],
                weighting=kit["weighting"],
                warm_degree=g["degree"].numpy(),
                keep=keep,
                candidates=kit.get("candidates", 1),
            )
        )
    return out


def mixed_propagation(kit: dict[str, Any], features: dict[str, np.ndarray], keep: Any = None) -> np.ndarray:
    """Σ_g weight_g · (graph g's propagation): the final-space cold vector of the graph models."""
    parts = propagate_graphs(kit, features, keep)
    return sum(g["weight"] * p for g, p in zip(kit["graphs"], parts)).astype(np.float32)


# ------------------------------------------------------------------------ the kit's file and dispatch


def save_kit(run_dir: str | Path, model: torch.nn.Module, kit: dict[str, Any] | None = None) -> Path | None:
    """Write the model's kit to `run_dir/cold_kit.pt` (atomically); None, nothing written, without a path.

    `kit`: one already taken from the model (LGMRec's vectors carry fresh Gumbel noise per call, so
    the kit written is then the one used).
    """
    if kit is None:
        make = getattr(model, "cold_kit", None)
        kit = make() if callable(make) else None
    if kit is None:
        return None
    path = Path(run_dir) / KIT_FILE
    with atomic_path(path) as tmp:
        torch.save(kit, tmp)
    return path


def load_kit(run_dir: str | Path) -> dict[str, Any] | None:
    """The kit a run saved; None when the run's model has no cold path (no file)."""
    path = Path(run_dir) / KIT_FILE
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which and how to rebuild it
        raise ValueError(
            f"{path}: not a readable cold kit ({type(exc).__name__}); retrain the run to rewrite it"
        ) from exc


def _model_class(model_name: str) -> type:
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; known models: {sorted(MODELS)}")
    module_name, cls_name, _ = MODELS[model_name]
    return getattr(importlib.import_module(module_name), cls_name)


def cold_path(model_name: str) -> str | None:
    """How model `model_name` embeds an unseen item (its `COLD_PATH`); None: it has no honest way."""
    return getattr(_model_class(model_name), "COLD_PATH", None)


def cold_vectors(
    model_name: str, kit: dict[str, Any] | None, features: dict[str, np.ndarray], n_items: int | None = None
) -> np.ndarray | None:
    """Final-space vectors of new items from their feature rows; None for a model without a cold path.

    `n_items` counts the new items for a model that reads no feature (pop); others ignore it.
    """
    if cold_path(model_name) is None or kit is None:
        return None
    module = importlib.import_module(model_module(model_name))
    extra = {"n_items": n_items} if n_items is not None and not READS[model_name] else {}
    return np.asarray(module.cold_item_vectors(kit, features, **extra), dtype=np.float32)
