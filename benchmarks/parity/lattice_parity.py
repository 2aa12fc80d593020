"""Reference values for the LATTICE parity tests, computed by MMRec's own class.

Imports `LATTICE` from an MMRec checkout (github.com/enoche/MMRec, its `src/` folder), gives it
the tiny fixed input of `tiny.py` through mmrec_parity's dataset stub and helpers, copies in the
initial weights of `lattice_weights()` (FREEDOM's tiny weights plus an uneven modal_weight, so
that the softmax mix is exercised), and prints per case the loss, the fingerprints of every
parameter's gradient and of the score matrix, as JSON; tests/test_lattice.py holds the numbers.

LATTICE has no randomness at training time (cf_model 'lightgcn' uses no dropout), so nothing
needs to be fixed beyond the weights. Cases: the first batch of an epoch (the learned item graph
is built with gradients), a later batch of the same epoch ("cached": after one gradient step
of size STEP, the graph built before the step is used detached, the projections get no gradient), and t = v (one table as both modalities).

MMRec moves its fixed graphs to the GPU with `.cuda()`; on a CPU-only machine the script maps
that call to the identity.

    MMREC_SRC=/path/to/MMRec/src .venv/bin/python benchmarks/parity/lattice_parity.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common
from benchmarks.parity import mmrec_parity as kit  # noqa: E402  (the shared kit of the parity scripts)
from benchmarks.parity import tiny  # noqa: E402

LAMBDA = 0.5  # lambda_coeff of the parity cases: both graphs weigh in the gradients
REG_WEIGHT = 0.1
STEP = 5.0  # plain gradient step between the "cached" case's two batches: large, so a stale graph shows
NAMES = {**tiny.FREEDOM_NAMES, "modal_weight": "modal_weight"}


def lattice_weights(t_dim: int = tiny.T_DIM, v_dim: int = tiny.V_DIM) -> dict[str, np.ndarray]:
    """Initial weights, keyed by our parameter names: FREEDOM's tiny ones and modal_weight [v, t]."""
    return {**tiny.freedom_weights(t_dim, v_dim), "modal_weight": np.array([0.3, -0.2], dtype=np.float32)}


def sgd_step(model: torch.nn.Module) -> None:
    """p ← p − STEP · ∇p, gradients then cleared: the tests take the same step on ours."""
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= STEP * p.grad
            p.grad = None


def run_lattice(lattice_cls: type, root: Path, name: str, same: bool, cached: bool) -> dict[str, Any]:
    data_dir = root / f"lattice-{name}"
    kit.write_features(data_dir, same)
    cfg = kit.base_config(
        data_dir,
        feat_embed_dim=tiny.DIM,
        weight_size=[tiny.DIM, tiny.DIM],
        knn_k=tiny.KNN_K,
        lambda_coeff=LAMBDA,
        cf_model="lightgcn",
        mess_dropout=[0.1, 0.1],
        n_layers=1,
        reg_weight=REG_WEIGHT,
    )
    model = lattice_cls(cfg, kit.TinyDataset())
    v_dim = tiny.T_DIM if same else tiny.V_DIM
    kit.load_weights(model, lattice_weights(tiny.T_DIM, v_dim), NAMES)
    model.pre_epoch_processing()
    if cached:  # the epoch's first batch builds the graph and takes a step; the recorded one is the second
        model.calculate_loss(kit.batch()).backward()
        sgd_step(model)
    loss = model.calculate_loss(kit.batch())
    loss.backward()
    with torch.no_grad():
        scores = model.full_sort_predict((torch.arange(tiny.N_USERS),))
    return kit.record(model, loss, scores, NAMES)


def main() -> None:
    kit.use_mmrec_checkout(__doc__, "lattice.py")
    from models.lattice import LATTICE  # MMRec's, from the checkout  # noqa: E402

    torch.set_default_dtype(torch.float32)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        out["lattice"] = run_lattice(LATTICE, root, "first", same=False, cached=False)
        out["lattice_cached"] = run_lattice(LATTICE, root, "cached", same=False, cached=True)
        out["lattice_same"] = run_lattice(LATTICE, root, "same", same=True, cached=False)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
