"""Reference values for the VBPR and FREEDOM parity tests, computed by MMRec's own classes.

Imports `VBPR` and `FREEDOM` from an MMRec checkout (github.com/enoche/MMRec, its `src/`
folder), gives them the tiny fixed input of `tiny.py` (features written as the .npy files MMRec
reads, a dataset stub with the training pairs, the initial weights copied in), runs one
`calculate_loss` + backward and `full_sort_predict`, and prints, per case, the loss, a
fingerprint (norm, probe sum; see tiny.fingerprint) of every parameter's gradient and of the
score matrix, as JSON. tests/test_vbpr.py and tests/test_freedom.py hold these numbers.

FREEDOM's edge sampling is made deterministic by handing MMRec's `pre_epoch_processing` the
kept edges of tiny.KEPT_EDGES in place of its `torch.multinomial` draw; the tests give our model
the same edges (`FREEDOM.use_edges`). The sampler itself is checked apart (`freedom_draws`): after
torch.manual_seed(s) MMRec's own draw keeps the edges it prints, and ours, from the same random
stream and the same edge probabilities, must keep the same ones.

    MMREC_SRC=/path/to/MMRec/src .venv/bin/python benchmarks/parity/mmrec_parity.py
    .venv/bin/python benchmarks/parity/mmrec_parity.py --mmrec /path/to/MMRec/src
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common
from benchmarks.parity import tiny  # noqa: E402


class TinyDataset:
    """What MMRec's models read from their dataset/dataloader argument."""

    def __init__(self) -> None:
        self.dataset = self  # GeneralRecommender reads dataloader.dataset

    def get_user_num(self) -> int:
        return tiny.N_USERS

    def get_item_num(self) -> int:
        return tiny.N_ITEMS

    def inter_matrix(self, form: str = "coo") -> sp.coo_matrix:
        assert form == "coo"
        u, i = tiny.TRAIN[:, 0], tiny.TRAIN[:, 1]
        return sp.coo_matrix((np.ones(len(u), np.float32), (u, i)), shape=(tiny.N_USERS, tiny.N_ITEMS))


def base_config(data_dir: Path, **model_args: Any) -> dict[str, Any]:
    return {
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "NEG_PREFIX": "neg__",
        "train_batch_size": len(tiny.USERS),
        "device": torch.device("cpu"),
        "end2end": False,
        "is_multimodal_model": True,
        "data_path": str(data_dir.parent) + os.sep,
        "dataset": data_dir.name,
        "vision_feature_file": "image_feat.npy",
        "text_feature_file": "text_feat.npy",
        "embedding_size": tiny.DIM,
        **model_args,
    }


def write_features(data_dir: Path, same: bool) -> None:
    data_dir.mkdir(parents=True)
    f = tiny.features()
    np.save(data_dir / "text_feat.npy", f["t"])
    np.save(data_dir / "image_feat.npy", f["t"] if same else f["v"])


def load_weights(model: torch.nn.Module, weights: dict[str, np.ndarray], names: dict[str, str]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for ours, value in weights.items():
            params[names[ours]].copy_(torch.as_tensor(value))


def record(model: torch.nn.Module, loss: torch.Tensor, scores: torch.Tensor, names: dict[str, str]) -> dict[str, Any]:
    params = dict(model.named_parameters())
    grads = {}
    for ours, theirs in names.items():
        if theirs in params:
            g = params[theirs].grad
            grads[ours] = tiny.fingerprint(np.zeros(params[theirs].shape) if g is None else g.numpy())
    return {"loss": float(loss), "grads": grads, "scores": tiny.fingerprint(scores.detach().numpy())}


def batch() -> torch.Tensor:
    return torch.as_tensor(np.stack([tiny.USERS, tiny.POS, tiny.NEG]))


def run_vbpr(vbpr_cls: type, root: Path, same: bool) -> dict[str, Any]:
    data_dir = root / f"vbpr-{int(same)}"
    write_features(data_dir, same)
    model = vbpr_cls(base_config(data_dir, reg_weight=0.1), TinyDataset())
    v_dim = tiny.T_DIM if same else tiny.V_DIM
    load_weights(model, tiny.vbpr_weights(tiny.T_DIM, v_dim), tiny.VBPR_NAMES)
    loss = model.calculate_loss(batch())
    loss.backward()
    with torch.no_grad():
        scores = model.full_sort_predict((torch.arange(tiny.N_USERS),))
    return record(model, loss.sum(), scores, tiny.VBPR_NAMES)


def freedom_config(data_dir: Path, dropout: float, image_weight: float) -> dict[str, Any]:
    return base_config(
        data_dir,
        feat_embed_dim=tiny.DIM,
        knn_k=tiny.KNN_K,
        lambda_coeff=0.9,
        cf_model="lightgcn",
        n_mm_layers=1,
        n_ui_layers=2,
        reg_weight=0.1,
        mm_image_weight=image_weight,
        dropout=dropout,
        degree_ratio=1.0,
    )


def run_freedom(
    freedom_cls: type, root: Path, name: str, same: bool, dropout: float, image_weight: float
) -> dict[str, Any]:
    data_dir = root / f"freedom-{name}"
    write_features(data_dir, same)
    model = freedom_cls(freedom_config(data_dir, dropout, image_weight), TinyDataset())
    v_dim = tiny.T_DIM if same else tiny.V_DIM
    load_weights(model, tiny.freedom_weights(tiny.T_DIM, v_dim), tiny.FREEDOM_NAMES)
    real_multinomial = torch.multinomial
    torch.multinomial = lambda probs, n, *a, **k: torch.as_tensor(tiny.KEPT_EDGES[:n])  # the same edges as ours
    try:
        model.pre_epoch_processing()
    finally:
        torch.multinomial = real_multinomial
    loss = model.calculate_loss(batch())
    loss.backward()
    with torch.no_grad():
        scores = model.full_sort_predict((torch.arange(tiny.N_USERS),))
    return record(model, loss, scores, tiny.FREEDOM_NAMES)


DRAW_SEEDS = (0, 1, 2, 3)


def freedom_draws(freedom_cls: type, root: Path) -> dict[str, list[list[int]]]:
    """The (user, item) training edges MMRec's own `pre_epoch_processing` keeps after
    torch.manual_seed(s), for each s: its sampler itself, on the random stream ours draws from."""
    data_dir = root / "freedom-draws"
    write_features(data_dir, same=False)
    model = freedom_cls(freedom_config(data_dir, tiny.DROPOUT, 0.3), TinyDataset())
    out = {}
    for seed in DRAW_SEEDS:
        torch.manual_seed(seed)
        model.pre_epoch_processing()
        u, i = model.masked_adj.coalesce().indices()
        user_rows = u < tiny.N_USERS
        out[str(seed)] = sorted([int(a), int(b) - tiny.N_USERS] for a, b in zip(u[user_rows], i[user_rows]))
    return out


def scipy_shim() -> None:
    """MMRec's FREEDOM fills a dok_matrix through `_update`, which SciPy ≥ 1.12 dropped: the same dict update."""
    if not hasattr(sp.dok_matrix, "_update"):
        sp.dok_matrix._update = lambda self, d: [self.__setitem__(k, v) for k, v in d.items()]


def use_mmrec_checkout(doc: str, model_file: str) -> None:
    """Parse --mmrec (or $MMREC_SRC), put MMRec's src/ first on sys.path, patch SciPy for it and
    keep its tensors on the CPU (the recorded reference values are CPU float32)."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--mmrec", default=os.environ.get("MMREC_SRC"), help="MMRec's src/ folder (or $MMREC_SRC)")
    args = ap.parse_args()
    if not args.mmrec or not (Path(args.mmrec) / "models" / model_file).is_file():
        sys.exit("give MMRec's src/ folder: --mmrec /path/to/MMRec/src (or MMREC_SRC=…)")
    sys.path.insert(0, str(Path(args.mmrec).resolve()))
    scipy_shim()
    torch.Tensor.cuda = lambda self, *a, **k: self  # reference values on the CPU: MMRec calls .cuda() on its graphs


def main() -> None:
    use_mmrec_checkout(__doc__, "freedom.py")
    from models.freedom import FREEDOM  # MMRec's, from the checkout  # noqa: E402
    from models.vbpr import VBPR  # noqa: E402

    torch.set_default_dtype(torch.float32)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        out["vbpr"] = run_vbpr(VBPR, root, same=False)
        out["vbpr_same"] = run_vbpr(VBPR, root, same=True)
        out["freedom_full"] = run_freedom(FREEDOM, root, "full", same=False, dropout=0.0, image_weight=0.3)
        out["freedom_pruned"] = run_freedom(FREEDOM, root, "pruned", same=False, dropout=tiny.DROPOUT, image_weight=0.3)
        out["freedom_same"] = run_freedom(FREEDOM, root, "same", same=True, dropout=tiny.DROPOUT, image_weight=0.3)
        out["freedom_draws"] = freedom_draws(FREEDOM, root)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
