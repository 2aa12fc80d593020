"""Reference values for the BM3 parity tests, computed by MMRec's own BM3 class.

Imports `BM3` from an MMRec checkout (github.com/enoche/MMRec, its `src/` folder), gives it the
tiny fixed input of `tiny.py` (features as the .npy files MMRec reads, the training pairs, the
initial weights of `bm3_weights` copied in), runs one `calculate_loss` + backward and
`full_sort_predict`, and prints per case the loss and fingerprints (tiny.fingerprint) of every
parameter's gradient and of the score matrix, as JSON. tests/test_bm3.py holds these numbers.

BM3's target dropout is random; for parity `torch.nn.functional.dropout` is replaced, in both
runs, by `column_dropout`: a fixed mask that zeroes every third column (a mask that depends on
the column only, so "drop on all rows, then gather the batch's" — MMRec — and "gather, then
drop" — ours — agree). BM3 samples no negatives: the batch's third row is ignored by both.

    MMREC_SRC=/path/to/MMRec/src .venv/bin/python benchmarks/parity/bm3_parity.py
    .venv/bin/python benchmarks/parity/bm3_parity.py --mmrec /path/to/MMRec/src
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common
from benchmarks.parity import tiny  # noqa: E402

DROPOUT = 0.5
# our parameter name → MMRec's attribute path: FREEDOM's names (the same attributes in MMRec) + the predictor
BM3_NAMES = {**tiny.FREEDOM_NAMES, "predictor.weight": "predictor.weight", "predictor.bias": "predictor.bias"}
# (case, modalities, t = v, n_layers, reg_weight): both modalities with the full-pass norm term;
# the text-only setup (one table as t and v); text alone with reg 0 (our batch-only path)
CASES = (
    ("bm3", ("t", "v"), False, 2, 0.1),
    ("bm3_same", ("t", "v"), True, 2, 0.1),
    ("bm3_text_noreg", ("t",), False, 1, 0.0),
)
CL_WEIGHT = 2.0


def bm3_weights(modalities: tuple[str, ...] = ("t", "v"), same: bool = False) -> dict[str, np.ndarray]:
    """Initial BM3 weights, keyed by our parameter names (feature tables start as the features)."""
    rng = np.random.default_rng(41)
    dims = {"t": tiny.T_DIM, "v": tiny.T_DIM if same else tiny.V_DIM}
    w = {
        "user_emb.weight": tiny._uniform(rng, (tiny.N_USERS, tiny.DIM)),
        "item_emb.weight": tiny._uniform(rng, (tiny.N_ITEMS, tiny.DIM)),
        "predictor.weight": tiny._uniform(rng, (tiny.DIM, tiny.DIM)),
        "predictor.bias": tiny._uniform(rng, (tiny.DIM,), 0.1),
    }
    for m in ("t", "v"):  # drawn for both whatever is used: a case's weights do not depend on the others
        weight, bias = tiny._uniform(rng, (tiny.DIM, dims[m])), tiny._uniform(rng, (tiny.DIM,), 0.1)
        if m in modalities:
            w[f"trs.{m}.weight"], w[f"trs.{m}.bias"] = weight, bias
    return w


def column_dropout(x: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """A fixed dropout mask: every third column (1, 4, …) zeroed, the rest scaled by 1/(1 − p)."""
    keep = (torch.arange(x.shape[-1], device=x.device) % 3 != 1).to(x.dtype)
    return x * keep / (1 - p) if training else x


@contextlib.contextmanager
def fixed_dropout() -> Iterator[None]:
    """Replace torch.nn.functional.dropout by `column_dropout` (both BM3s call it through the module)."""
    real = torch.nn.functional.dropout
    torch.nn.functional.dropout = column_dropout
    try:
        yield
    finally:
        torch.nn.functional.dropout = real


def run_bm3(
    bm3_cls: type, root: Path, name: str, modalities: tuple[str, ...], same: bool, n_layers: int, reg_weight: float
) -> dict[str, Any]:
    from benchmarks.parity.mmrec_parity import TinyDataset, base_config, load_weights, record  # noqa: E402

    data_dir = root / f"bm3-{name}"
    data_dir.mkdir(parents=True)
    f = tiny.features()
    np.save(data_dir / "text_feat.npy", f["t"])
    if "v" in modalities:
        np.save(data_dir / "image_feat.npy", f["t"] if same else f["v"])
    cfg = base_config(
        data_dir,
        feat_embed_dim=tiny.DIM,
        n_layers=n_layers,
        reg_weight=reg_weight,
        cl_weight=CL_WEIGHT,
        dropout=DROPOUT,
    )
    model = bm3_cls(cfg, TinyDataset())
    weights = bm3_weights(modalities, same)
    load_weights(model, weights, BM3_NAMES)
    with fixed_dropout():
        loss = model.calculate_loss(torch.as_tensor(np.stack([tiny.USERS, tiny.POS, tiny.NEG])))
    loss = loss.sum()  # MMRec's EmbLoss makes it a 1-element tensor
    loss.backward()
    with torch.no_grad():
        scores = model.full_sort_predict((torch.arange(tiny.N_USERS),))
    return record(model, loss, scores, BM3_NAMES)  # a modality MMRec has not loaded is left out


def main() -> None:
    from benchmarks.parity.mmrec_parity import use_mmrec_checkout  # noqa: E402

    use_mmrec_checkout(__doc__, "bm3.py")
    from models.bm3 import BM3  # MMRec's, from the checkout  # noqa: E402

    torch.set_default_dtype(torch.float32)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            out[case[0]] = run_bm3(BM3, Path(tmp), *case)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
