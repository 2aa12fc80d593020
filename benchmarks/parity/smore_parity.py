"""Reference values for the SMORE parity tests, computed by MMRec's own class.

Imports `SMORE` from an MMRec checkout (github.com/enoche/MMRec, its `src/` folder), gives it the
tiny fixed input of `tiny.py` (features as the .npy files MMRec reads, mmrec_parity's dataset
stub, the initial weights of `smore_weights` copied in), runs one `calculate_loss` + backward
and, in eval mode, `full_sort_predict`, and prints per case the loss and fingerprints
(tiny.fingerprint) of every parameter's gradient and of the score matrix, as JSON.
tests/test_smore.py holds these numbers.

SMORE's preference dropout is random; for parity `torch.nn.functional.dropout` is replaced in
both runs by bm3_parity's `column_dropout` (a fixed mask that depends on the column only, so
"drop on all rows, then gather" — MMRec — and "gather, then drop" — ours — agree). That mask
cannot tell one row from another, so the case "smore_row_dropout" gives every user and item row
a mask of its own (`RowMasks`): MMRec drops its whole [users; items] table with it, ours the
batch's rows by their ids (the test swaps models.smore.row_dropout, whose one-mask-per-distinct-
id rule is tests/test_bm3.py's). Scores are computed without dropout (eval mode), as the
trainer's evaluation does.

Shims for a CPU machine without torch_scatter: MMRec's `.cuda()` on its item graphs is the
identity, and `torch_scatter.scatter_add` (which MMRec's kNN normalization imports) is the same
sum by `Tensor.index_add`.

    MMREC_SRC=/path/to/MMRec/src .venv/bin/python benchmarks/parity/smore_parity.py
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common
from benchmarks.parity import tiny  # noqa: E402

DIM = 6  # even: the spectrum has DIM // 2 + 1 = 4 frequencies (tiny.DIM = 4 would give 3)
CL_WEIGHT = 0.5  # larger than MMRec's 0.01, so the InfoNCE terms show in every gradient
DROPOUT = 0.5
# (case, t = v, n_ui_layers, n_layers, reg_weight, dropout)
CASES = (
    ("smore", False, 3, 1, 0.1, 0.0),
    ("smore_dropout", False, 2, 2, 0.1, DROPOUT),
    ("smore_same", True, 3, 1, 0.1, 0.0),
)
ROW_CASE = ("smore_row_dropout", False, 2, 2, 0.1, DROPOUT)  # per-row masks (RowMasks)
VIEWS = ("v", "t", "f")
_THEIR_VIEW = {"v": "image", "t": "text", "f": "fusion"}

# our parameter name → MMRec's attribute path
SMORE_NAMES = {
    "user_emb.weight": "user_embedding.weight",
    "item_emb.weight": "item_id_embedding.weight",
    "feat.t": "text_embedding.weight",
    "feat.v": "image_embedding.weight",
    "trs.t.weight": "text_trs.weight",
    "trs.t.bias": "text_trs.bias",
    "trs.v.weight": "image_trs.weight",
    "trs.v.bias": "image_trs.bias",
}
for _m in ("v", "t"):
    SMORE_NAMES[f"query.{_m}.0.weight"] = f"query_{_m}.0.weight"
    SMORE_NAMES[f"query.{_m}.0.bias"] = f"query_{_m}.0.bias"
    SMORE_NAMES[f"query.{_m}.2.weight"] = f"query_{_m}.2.weight"
for _m in VIEWS:
    for _p in ("weight", "bias"):
        SMORE_NAMES[f"gate.{_m}.0.{_p}"] = f"gate_{_m}.0.{_p}"
        SMORE_NAMES[f"prefer.{_m}.0.{_p}"] = f"gate_{_THEIR_VIEW[_m]}_prefer.0.{_p}"
    SMORE_NAMES[f"spectrum.{_m}"] = f"{_THEIR_VIEW[_m]}_complex_weight"


def smore_weights(same: bool = False) -> dict[str, np.ndarray]:
    """Initial SMORE weights, keyed by our parameter names (feature tables start as the features)."""
    rng = np.random.default_rng(51)
    u = tiny._uniform
    d = DIM
    w = {
        "user_emb.weight": u(rng, (tiny.N_USERS, d)),
        "item_emb.weight": u(rng, (tiny.N_ITEMS, d)),
        "trs.t.weight": u(rng, (d, tiny.T_DIM)),
        "trs.t.bias": u(rng, (d,), 0.1),
        "trs.v.weight": u(rng, (d, tiny.T_DIM if same else tiny.V_DIM)),
        "trs.v.bias": u(rng, (d,), 0.1),
    }
    for m in ("v", "t"):
        w[f"query.{m}.0.weight"] = u(rng, (d, d))
        w[f"query.{m}.0.bias"] = u(rng, (d,), 0.1)
        w[f"query.{m}.2.weight"] = u(rng, (d, d))
    for m in VIEWS:
        for kind in ("gate", "prefer"):
            w[f"{kind}.{m}.0.weight"] = u(rng, (d, d))
            w[f"{kind}.{m}.0.bias"] = u(rng, (d,), 0.1)
        w[f"spectrum.{m}"] = u(rng, (1, d // 2 + 1, 2), 1.0)
    return w


def scatter_shim() -> None:
    """A `torch_scatter` with the one function MMRec's kNN normalization uses, when it is missing."""
    try:
        import torch_scatter  # noqa: F401
    except ImportError:
        mod = types.ModuleType("torch_scatter")

        def scatter_add(
            src: torch.Tensor, index: torch.Tensor, dim: int = 0, dim_size: int | None = None
        ) -> torch.Tensor:
            assert dim == 0
            return src.new_zeros(dim_size).index_add(0, index, src)

        mod.scatter_add = scatter_add
        sys.modules["torch_scatter"] = mod


class RowMasks:
    """Fixed dropout masks with one row per user and item: view k's is the uniform draw of seed
    91 + k over the (users + items) × DIM table, kept where ≥ p, scaled by 1 / (1 − p).

    `full_table` stands in for F.dropout in MMRec's run (three calls on [users; items]: image,
    text, fusion); `rows` for models.smore.row_dropout in ours (six calls: the batch users' v, t,
    f, then the batch items' v, t, f, each row taking its own id's mask)."""

    def __init__(self, p: float) -> None:
        self.p, self.calls = p, 0

    def mask(self, k: int) -> torch.Tensor:
        draw = np.random.default_rng(91 + k).random((tiny.N_USERS + tiny.N_ITEMS, DIM))
        return torch.as_tensor(draw >= self.p, dtype=torch.float32) / (1 - self.p)

    def full_table(self, x: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
        if not training:
            return x
        assert x.shape == (tiny.N_USERS + tiny.N_ITEMS, DIM), x.shape
        self.calls += 1
        return x * self.mask((self.calls - 1) % 3)

    def rows(self, x: torch.Tensor, ids: torch.Tensor, p: float) -> torch.Tensor:
        k, items = self.calls % 3, (self.calls // 3) % 2 == 1
        self.calls += 1
        return x * self.mask(k)[ids + (tiny.N_USERS if items else 0)]


def run_smore(
    smore_cls: type,
    root: Path,
    name: str,
    same: bool,
    n_ui_layers: int,
    n_layers: int,
    reg_weight: float,
    dropout: float,
    row_masks: bool = False,
) -> dict[str, Any]:
    from bm3_parity import fixed_dropout  # noqa: E402

    from benchmarks.parity.mmrec_parity import (  # noqa: E402
        TinyDataset,
        base_config,
        batch,
        load_weights,
        record,
        write_features,
    )

    data_dir = root / f"smore-{name}"
    write_features(data_dir, same)
    cfg = base_config(
        data_dir,
        embedding_size=DIM,
        cl_loss=CL_WEIGHT,
        n_ui_layers=n_ui_layers,
        n_layers=n_layers,
        reg_weight=reg_weight,
        image_knn_k=tiny.KNN_K,
        text_knn_k=tiny.KNN_K,
        dropout_rate=dropout,
    )
    model = smore_cls(cfg, TinyDataset())
    load_weights(model, smore_weights(same), SMORE_NAMES)
    model.train()
    if row_masks:
        masks, real = RowMasks(dropout), torch.nn.functional.dropout
        torch.nn.functional.dropout = masks.full_table
        try:
            loss = model.calculate_loss(batch())
        finally:
            torch.nn.functional.dropout = real
        assert masks.calls == 3
    else:
        with fixed_dropout() if dropout > 0 else contextlib.nullcontext():  # column_dropout ignores p: not at p = 0
            loss = model.calculate_loss(batch())
    loss.backward()
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict((torch.arange(tiny.N_USERS),))
    return record(model, loss, scores, SMORE_NAMES)


def main() -> None:
    from benchmarks.parity.mmrec_parity import use_mmrec_checkout  # noqa: E402

    use_mmrec_checkout(__doc__, "smore.py")
    scatter_shim()
    from models.smore import SMORE  # MMRec's, from the checkout  # noqa: E402

    torch.set_default_dtype(torch.float32)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            out[case[0]] = run_smore(SMORE, Path(tmp), *case)
        out[ROW_CASE[0]] = run_smore(SMORE, Path(tmp), *ROW_CASE, row_masks=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
