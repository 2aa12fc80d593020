"""Reference values for the LGMRec parity tests, computed by MMRec's own class.

Imports `LGMRec` from an MMRec checkout (github.com/enoche/MMRec, its `src/` folder), gives it
the tiny fixed input of `tiny.py` (through mmrec_parity.py's dataset stub and feature files) and
the initial weights of `lgmrec_weights`, runs one `calculate_loss` + backward and
`full_sort_predict`, and prints per case the loss and fingerprints (tiny.fingerprint) of every
parameter's gradient and of the score matrix, as JSON. tests/test_lgmrec.py holds these numbers.

Randomness is made deterministic for both sides: `torch.nn.functional.gumbel_softmax` is swapped
for `FixedGumbel`, which adds the same fixed Gumbel noise for the k-th draw of a forward pass
(v items, v users, t items, t users), and `torch.nn.functional.dropout` (what MMRec's nn.Dropout
calls) for `FixedDropout`, which keeps a fixed mask for the k-th training call — the tests swap
in the same functions for our model. Most cases keep_rate 1 (no dropout); "lgmrec_dropout" 0.5.
Scores are taken in eval mode, as MMRec's trainer evaluates (its dropout off, its noise on).

    MMREC_SRC=/path/to/MMRec/src .venv/bin/python benchmarks/parity/lgmrec_parity.py
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
from benchmarks.parity import mmrec_parity as kit  # noqa: E402  (the shared kit of the parity scripts)
from benchmarks.parity import tiny  # noqa: E402

# our parameter name → MMRec's attribute path
LGMREC_NAMES = {
    "user_emb.weight": "user_embedding.weight",
    "item_emb.weight": "item_id_embedding.weight",
    "trs.t": "item_text_trs",
    "hyper.t": "t_hyper",
    "trs.v": "item_image_trs",
    "hyper.v": "v_hyper",
}

# the cases: MMRec config values (keep_rate 1: dropout off, unless given); "deep" has hyper_num ≥ d
# (the plain contrastive form) and two hypergraph steps; "dropout" drops half the assignments
CASES: dict[str, dict[str, Any]] = {
    "lgmrec": {"same": False, "n_ui_layers": 2, "n_mm_layers": 2, "n_hyper_layer": 1, "hyper_num": 3, "alpha": 0.3},
    "lgmrec_same": {"same": True, "n_ui_layers": 2, "n_mm_layers": 2, "n_hyper_layer": 1, "hyper_num": 3, "alpha": 0.3},
    "lgmrec_deep": {
        "same": False,
        "n_ui_layers": 1,
        "n_mm_layers": 1,
        "n_hyper_layer": 2,
        "hyper_num": 5,
        "alpha": 0.6,
    },
    "lgmrec_dropout": {
        "same": False,
        "n_ui_layers": 2,
        "n_mm_layers": 2,
        "n_hyper_layer": 1,
        "hyper_num": 3,
        "alpha": 0.3,
        "keep_rate": 0.5,
    },
}
CL_WEIGHT, REG_WEIGHT = 0.05, 0.1  # BPR, contrastive and norm terms of similar size


def lgmrec_weights(same: bool, hyper_num: int) -> dict[str, np.ndarray]:
    """Initial LGMRec weights, keyed by our parameter names (projections are D_m × d, no bias)."""
    rng = np.random.default_rng(51)
    v_dim = tiny.T_DIM if same else tiny.V_DIM
    uniform = lambda shape: rng.uniform(-0.5, 0.5, shape).astype(np.float32)  # noqa: E731
    return {
        "user_emb.weight": uniform((tiny.N_USERS, tiny.DIM)),
        "item_emb.weight": uniform((tiny.N_ITEMS, tiny.DIM)),
        "trs.t": uniform((tiny.T_DIM, tiny.DIM)),
        "hyper.t": uniform((tiny.T_DIM, hyper_num)),
        "trs.v": uniform((v_dim, tiny.DIM)),
        "hyper.v": uniform((v_dim, hyper_num)),
    }


class FixedGumbel:
    """`F.gumbel_softmax` with fixed noise: the k-th call (mod 4) adds the Gumbel draw of seed 61 + k."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(
        self, logits: torch.Tensor, tau: float = 1.0, hard: bool = False, eps: float = 1e-10, dim: int = -1
    ) -> torch.Tensor:
        assert not hard, "LGMRec draws soft assignments"
        noise = -np.log(np.random.default_rng(61 + self.calls % 4).exponential(size=tuple(logits.shape)))
        self.calls += 1
        return torch.softmax((logits + torch.as_tensor(noise, dtype=logits.dtype)) / tau, dim=dim)


class FixedDropout:
    """`F.dropout` with fixed masks: the k-th training call (mod 4) keeps the entries whose uniform
    draw of seed 81 + k is ≥ p, scaled by 1 / (1 − p); outside training it is the identity."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
        if not training or p == 0:
            return x
        keep = np.random.default_rng(81 + self.calls % 4).random(tuple(x.shape)) >= p
        self.calls += 1
        return x * torch.as_tensor(keep, dtype=x.dtype) / (1 - p)


@contextlib.contextmanager
def swapped(name: str, fake: Any) -> Iterator[Any]:
    """torch.nn.functional.<name> replaced by `fake` for the block (both models call it through F)."""
    real = getattr(torch.nn.functional, name)
    setattr(torch.nn.functional, name, fake)
    try:
        yield fake
    finally:
        setattr(torch.nn.functional, name, real)


def fixed_dropout() -> contextlib.AbstractContextManager[FixedDropout]:
    return swapped("dropout", FixedDropout())


def fixed_gumbel() -> contextlib.AbstractContextManager[FixedGumbel]:
    return swapped("gumbel_softmax", FixedGumbel())


def run_lgmrec(lgmrec_cls: type, root: Path, name: str, case: dict[str, Any]) -> dict[str, Any]:
    data_dir = root / name
    kit.write_features(data_dir, case["same"])
    args = {"keep_rate": 1.0, **{k: v for k, v in case.items() if k != "same"}}
    cfg = kit.base_config(
        data_dir, feat_embed_dim=tiny.DIM, cf_model="lightgcn", cl_weight=CL_WEIGHT, reg_weight=REG_WEIGHT, **args
    )
    model = lgmrec_cls(cfg, kit.TinyDataset())
    kit.load_weights(model, lgmrec_weights(case["same"], case["hyper_num"]), LGMREC_NAMES)
    with fixed_gumbel(), fixed_dropout():
        loss = model.calculate_loss(kit.batch())
        loss.backward()
        model.eval()  # as MMRec's trainer evaluates: nn.Dropout off, the Gumbel noise still drawn
        with torch.no_grad():
            scores = model.full_sort_predict((torch.arange(tiny.N_USERS),))
    return kit.record(model, loss, scores, LGMREC_NAMES)


def main() -> None:
    kit.use_mmrec_checkout(__doc__, "lgmrec.py")
    from models.lgmrec import LGMRec  # MMRec's, from the checkout  # noqa: E402

    torch.set_default_dtype(torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        out = {name: run_lgmrec(LGMRec, Path(tmp), name, case) for name, case in CASES.items()}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
