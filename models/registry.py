"""Model names → (module, class, config class), imported lazily so a name costs nothing until used.

Every model follows one protocol (a plain nn.Module): `Model(graph: GraphData, cfg)`,
`batch_loss(users, pos, neg) -> {'loss': total, <term>: value, ...}`,
`final_embeddings() -> (user, item)` with score = user @ item.T, optional `on_epoch_end(epoch)`.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from models.training.data import GraphData

MODELS: dict[str, tuple[str, str, str]] = {
    "lightgcn": ("models.lightgcn", "LightGCN", "LightGCNConfig"),
    "alignrec": ("models.alignrec", "AlignRec", "AlignRecConfig"),
    "anchorrec": ("models.anchorrec", "AnchorRec", "AnchorRecConfig"),
    "vbpr": ("models.vbpr", "VBPR", "VBPRConfig"),
    "freedom": ("models.freedom", "FREEDOM", "FREEDOMConfig"),
    "lattice": ("models.lattice", "LATTICE", "LATTICEConfig"),
    "bm3": ("models.bm3", "BM3", "BM3Config"),
    "lgmrec": ("models.lgmrec", "LGMRec", "LGMRecConfig"),
    "damrs": ("models.damrs", "DAMRS", "DAMRSConfig"),
    "smore": ("models.smore", "SMORE", "SMOREConfig"),
    # baselines without trainable weights (`fixed = True`): the trainer runs no epoch for them
    "pop": ("models.popularity", "Popularity", "PopularityConfig"),
    "content_knn": ("models.content_knn", "ContentKNN", "ContentKNNConfig"),
}

# The content tables (modalities) each model reads. A run's configuration, its cache key and a
# study's budget hold only these, so a new `mm` table (a new ICA run) leaves the runs and studies
# of models that never read `mm` valid, and an ID-only model loads no feature at all.
READS: dict[str, tuple[str, ...]] = {
    "lightgcn": (),
    "alignrec": ("mm",),
    "anchorrec": ("mm", "t", "v"),
    **{name: ("t", "v") for name in ("vbpr", "freedom", "lattice", "bm3", "lgmrec", "damrs", "smore")},
    "pop": (),
    "content_knn": ("mm", "t", "v"),  # one of them: mm when the dataset has it, else t, else v
}


def read_features(name: str, features: dict[str, str]) -> dict[str, str]:
    """The part of a dataset's v/t/mm tables that model `name` reads."""
    return {m: table for m, table in features.items() if m in READS[name]}


def model_module(name: str) -> str:
    """The module that holds model `name` (loaded by name at run time, so cache keys list it)."""
    _check(name)
    return MODELS[name][0]


def _check(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {sorted(MODELS)}")


def _lookup(name: str) -> tuple[type, type]:
    _check(name)
    module_name, cls_name, cfg_name = MODELS[name]
    module = importlib.import_module(module_name)
    return getattr(module, cls_name), getattr(module, cfg_name)


def model_class(name: str) -> type:
    """The model's class (imported on first use)."""
    return _lookup(name)[0]


def is_fixed(name: str) -> bool:
    """A model with no trainable weight (class attribute `fixed = True`: pop, content_knn): nothing
    to tune, one evaluation. The class's own attribute: LATTICE's instances hold a `fixed` dict."""
    return getattr(model_class(name), "fixed", False) is True


def make_config(name: str, **kwargs: Any) -> Any:
    """The model's config dataclass from keyword arguments; an unknown key is a ValueError."""
    _, cfg_cls = _lookup(name)
    valid = [f.name for f in dataclasses.fields(cfg_cls)]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown} for model {name!r}; valid: {valid}")
    return cfg_cls(**kwargs)


def make_model(name: str, graph: GraphData, **kwargs: Any):
    """Build model `name` on `graph` with its config from `kwargs`, on the graph's device."""
    model_cls, _ = _lookup(name)
    model = model_cls(graph, make_config(name, **kwargs))
    return model.to(graph.device)
