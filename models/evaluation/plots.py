"""The report's pictures (PNG, matplotlib's Agg backend: no display is ever needed).

- training curves: loss and validation Recall@20 per epoch, from metrics.json histories;
- a 2-D projection (PCA to ≤ 50 dims, then t-SNE, on a seeded subsample) of the ID and the final
  item embeddings side by side, coloured by category, plus both in one shared map when their
  dimensions agree — positional collapse shows as final points landing on their ID points;
- coherence bars: text/vision coherence at each neighbour rank per model, with error bars over
  seeds;
- long-tail bars: Recall@K per popularity bucket per model.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from models.evaluation.diagnostics import few_threads  # noqa: E402
from store.tables import atomic_path  # noqa: E402

OTHER = "other"


def _save(fig: "plt.Figure", out: Path) -> Path:
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


# ------------------------------------------------------------------------------ training curves


def training_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]], out: Path, metric: str = "recall@20") -> Path:
    """One line per run: training loss (left) and validation `metric` (right) per epoch.

    `histories` maps a label (e.g. 'anchorrec s0') to metrics.json's 'history' list. Runs that
    share the part of the label before the first space share a colour.
    """
    if not histories:
        raise ValueError("training_curves needs at least one run history")
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
    groups = sorted({label.split(" ")[0] for label in histories})
    colours = {g: plt.cm.tab10(i % 10) for i, g in enumerate(groups)}
    styles = ["-", "--", ":", "-."]
    seen: Counter[str] = Counter()
    losses: list[float] = []
    for label, history in histories.items():
        group = label.split(" ")[0]
        style = styles[seen[group] % len(styles)]
        seen[group] += 1
        epochs = [h["epoch"] for h in history if "loss" in h]
        losses += [h["loss"] for h in history if "loss" in h]
        ax_loss.plot(epochs, [h["loss"] for h in history if "loss" in h], style, color=colours[group])
        val = [(h["epoch"], h["valid"][metric]) for h in history if metric in h.get("valid", {})]
        if val:
            ax_val.plot(*zip(*val), style, color=colours[group], marker=".", markersize=3)
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="loss")
    if losses and min(losses) > 0 and max(losses) > 20 * min(losses):
        ax_loss.set_yscale("log")  # models' losses differ by orders of magnitude (BM3's is ~10, BPR's ~0.1)
    ax_val.set(title=f"validation {metric}", xlabel="epoch", ylabel=metric)
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
    # one entry per model (its seeds share the colour; line styles tell them apart), outside the axes
    handles = [
        plt.Line2D([], [], color=colours[g], label=f"{g} ({seen[g]} run{'s' if seen[g] > 1 else ''})") for g in groups
    ]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    return _save(fig, out)


# ------------------------------------------------------------------------------ projection


def category_labels(categories: Sequence[Sequence[str] | None], top: int = 10) -> tuple[np.ndarray, str]:
    """One label per item: its category at the first level where items differ; top-`top` else 'other'.

    Amazon lists start with the store's top category ('Sports & Outdoors' for every item), so
    the first entry alone would colour everything alike; the first level with ≥ 2 distinct
    values is what the brief's "first entry" means in practice. Returns (labels, level used);
    all 'other' with level '' when no item has categories.
    """
    cats = [list(c) if c is not None else [] for c in categories]
    depth = max((len(c) for c in cats), default=0)
    for level in range(depth):
        raw = [c[level] if len(c) > level and c[level] else None for c in cats]
        present = [r for r in raw if r is not None]
        if len(set(present)) < 2:
            continue
        keep = {name for name, _ in Counter(present).most_common(top)}
        return np.array([r if r in keep else OTHER for r in raw], dtype=object), f"category level {level}"
    return np.array([OTHER] * len(cats), dtype=object), ""


def tsne_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """PCA to ≤ 50 dims (t-SNE's usual preconditioning), then 2-D t-SNE on cosine geometry."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(x, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n_comp = min(50, x.shape[1], len(x))
    if n_comp < x.shape[1]:
        x = PCA(n_components=n_comp, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    method = "exact" if len(x) <= 300 else "barnes_hut"  # exact is faster (and exact) for tiny sets
    init = "pca" if x.shape[1] >= 2 else "random"  # one-dimensional vectors (popularity) have no 2-D PCA
    with few_threads():
        return TSNE(n_components=2, perplexity=perplexity, init=init, method=method, random_state=seed).fit_transform(x)


def projection(
    id_emb: np.ndarray | None,
    final_emb: np.ndarray,
    labels: Sequence[str] | np.ndarray,
    out: Path,
    sample: int = 2000,
    seed: int = 0,
    title: str = "",
    legend_title: str = "category",
) -> Path:
    """t-SNE maps of the ID and final item embeddings of one seeded item subsample.

    Panels: ID space, final space (each coloured by label) and, when both have the same
    dimension, a joint map of the two sets (ID grey, final coloured) with a line from each
    item's ID point to its final point — short lines everywhere is positional collapse. When
    the two are the same matrix (LightGCN) there is one panel.
    """
    n = len(final_emb)
    label = np.asarray(labels, dtype=object)
    if len(label) != n:
        raise ValueError(f"{len(label)} labels for {n} items")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, min(sample, n), replace=False))
    names = [c for c, _ in Counter(label[rows]).most_common() if c != OTHER]
    if OTHER in set(label[rows]):
        names.append(OTHER)
    colour_of = {c: plt.cm.tab10(i % 10) for i, c in enumerate(c for c in names if c != OTHER)}
    colour_of[OTHER] = (0.75, 0.75, 0.75, 1.0)
    colours = np.array([colour_of[c] for c in label[rows]])

    panels: list[tuple[str, np.ndarray]] = []
    same = (
        id_emb is not None
        and np.asarray(id_emb).shape == np.asarray(final_emb).shape
        and np.array_equal(id_emb, final_emb)
    )
    if id_emb is not None and not same:
        panels.append(("ID item embeddings", tsne_2d(np.asarray(id_emb)[rows], seed)))
    panels.append(
        ("ID = final item embeddings" if same else "final item embeddings", tsne_2d(np.asarray(final_emb)[rows], seed))
    )
    joint = id_emb is not None and not same and np.asarray(id_emb).shape[1] == np.asarray(final_emb).shape[1]
    fig, axes = plt.subplots(1, len(panels) + int(joint), figsize=(5 * (len(panels) + int(joint)), 4.8))
    axes = np.atleast_1d(axes)
    for ax, (name, xy) in zip(axes, panels):
        ax.scatter(xy[:, 0], xy[:, 1], c=colours, s=6, linewidths=0)
        ax.set_title(name)
    if joint:
        both = tsne_2d(np.vstack([np.asarray(id_emb)[rows], np.asarray(final_emb)[rows]]), seed)
        a, b = both[: len(rows)], both[len(rows) :]
        ax = axes[-1]
        ax.plot(np.stack([a[:, 0], b[:, 0]]), np.stack([a[:, 1], b[:, 1]]), color="k", alpha=0.08, lw=0.5)
        ax.scatter(a[:, 0], a[:, 1], c="lightgrey", s=6, linewidths=0, label="ID")
        ax.scatter(b[:, 0], b[:, 1], c=colours, s=6, linewidths=0, label="final")
        ax.set_title("ID (grey) and final, one map")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], marker="o", ls="", color=colour_of[c], label=str(c)[:28]) for c in names]
    fig.legend(handles=handles, title=legend_title, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, out)


# ------------------------------------------------------------------------------ bars


def _grouped_bars(
    ax: "plt.Axes", groups: Sequence[str], series: Mapping[str, tuple[Sequence[float], Sequence[float]]]
) -> None:
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for i, (name, (means, stds)) in enumerate(series.items()):
        ax.bar(
            x + (i - (len(series) - 1) / 2) * width,
            means,
            width,
            yerr=stds,
            capsize=3,
            label=name,
            color=plt.cm.tab10(i % 10),
        )
    ax.set_xticks(x, groups)
    ax.grid(axis="y", alpha=0.3)


def coherence_bars(per_model: Mapping[str, Mapping[str, tuple[float, float]]], out: Path, top: int = 3) -> Path:
    """One panel per feature (text, vision, …): bars of coherence@1..top per model, ± std over seeds.

    `per_model[model]['text@1'] = (mean, std)` (keys as models.evaluation.diagnostics.coherence returns).
    """
    feats = sorted({k.split("@")[0] for m in per_model.values() for k in m})
    if not feats:
        raise ValueError("coherence_bars: no coherence values to draw")
    fig, axes = plt.subplots(1, len(feats), figsize=(5 * len(feats), 3.8), squeeze=False, layout="constrained")
    ranks = [f"@{r}" for r in range(1, top + 1)]
    for ax, feat in zip(axes[0], feats):
        series = {
            model: (
                [vals.get(f"{feat}{r}", (np.nan, 0.0))[0] for r in ranks],
                [vals.get(f"{feat}{r}", (np.nan, 0.0))[1] for r in ranks],
            )
            for model, vals in per_model.items()
        }
        _grouped_bars(ax, [f"neighbour {r[1:]}" for r in ranks], series)
        ax.set(title=f"{feat} coherence", ylabel="mean raw-feature cosine")
    axes[0][-1].legend(fontsize=8)
    return _save(fig, out)


def bucket_bars(
    per_model: Mapping[str, Mapping[str, tuple[float, float]]], buckets: Sequence[str], out: Path, metric: str
) -> Path:
    """Bars of `metric` per popularity bucket per model (± std over seeds)."""
    fig, ax = plt.subplots(figsize=(6, 3.8), layout="constrained")
    series = {m: ([v[b][0] for b in buckets], [v[b][1] for b in buckets]) for m, v in per_model.items()}
    _grouped_bars(ax, list(buckets), series)
    ax.set(title=f"test {metric} by item popularity", ylabel=metric)
    ax.legend(fontsize=8)
    return _save(fig, out)
