"""The tiny fixed input of the parity checks, shared by the reference script and the tests.

Everything is drawn from fixed NumPy seeds (no torch RNG), so the script that runs MMRec's
classes and the tests that run ours build bit-identical inputs and initial weights without
either importing the other's code.
"""

from __future__ import annotations

import numpy as np

N_USERS, N_ITEMS = 5, 7
DIM = 4  # embedding_size = feat_embed_dim
KNN_K = 3
T_DIM, V_DIM = 6, 5

# training pairs (user, item), in the order the reference's interaction matrix lists them
TRAIN = np.array(
    [[0, 0], [0, 1], [0, 3], [1, 1], [1, 2], [1, 5], [2, 0], [2, 4], [2, 6],
     [3, 2], [3, 3], [3, 4], [3, 6], [4, 1], [4, 5], [4, 6]],
    dtype=np.int64,
)  # fmt: skip
# one BPR batch: users, positives (training pairs), negatives (items the user has not seen)
USERS = np.array([0, 1, 2, 3, 4, 0], dtype=np.int64)
POS = np.array([1, 5, 4, 2, 6, 3], dtype=np.int64)
NEG = np.array([2, 0, 3, 5, 0, 6], dtype=np.int64)
# FREEDOM's pruned graph for the batch: positions in TRAIN of the kept edges (what the
# reference's torch.multinomial would return), so that both sides use the same sampled edges
KEPT_EDGES = np.array([0, 2, 4, 5, 7, 9, 12, 13, 15], dtype=np.int64)
DROPOUT = 1 - len(KEPT_EDGES) / len(TRAIN)  # int(16 · (1 − dropout)) = 9 edges kept


def features() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    return {
        "t": rng.standard_normal((N_ITEMS, T_DIM)).astype(np.float32),
        "v": rng.standard_normal((N_ITEMS, V_DIM)).astype(np.float32),
    }


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], scale: float = 0.5) -> np.ndarray:
    return rng.uniform(-scale, scale, shape).astype(np.float32)


def vbpr_weights(t_dim: int = T_DIM, v_dim: int = V_DIM) -> dict[str, np.ndarray]:
    """Initial VBPR weights, keyed by our parameter names (the script maps them to MMRec's)."""
    rng = np.random.default_rng(21)
    return {
        "user_emb": _uniform(rng, (N_USERS, 2 * DIM)),
        "item_emb": _uniform(rng, (N_ITEMS, DIM)),
        "item_linear.weight": _uniform(rng, (DIM, t_dim + v_dim)),
        "item_linear.bias": _uniform(rng, (DIM,), 0.1),
    }


def freedom_weights(t_dim: int = T_DIM, v_dim: int = V_DIM) -> dict[str, np.ndarray]:
    """Initial FREEDOM weights (the feature tables start as the features themselves)."""
    rng = np.random.default_rng(31)
    return {
        "user_emb.weight": _uniform(rng, (N_USERS, DIM)),
        "item_emb.weight": _uniform(rng, (N_ITEMS, DIM)),
        "trs.t.weight": _uniform(rng, (DIM, t_dim)),
        "trs.t.bias": _uniform(rng, (DIM,), 0.1),
        "trs.v.weight": _uniform(rng, (DIM, v_dim)),
        "trs.v.bias": _uniform(rng, (DIM,), 0.1),
    }


# our parameter name → MMRec's attribute path
VBPR_NAMES = {
    "user_emb": "u_embedding",
    "item_emb": "i_embedding",
    "item_linear.weight": "item_linear.weight",
    "item_linear.bias": "item_linear.bias",
}
FREEDOM_NAMES = {
    "user_emb.weight": "user_embedding.weight",
    "item_emb.weight": "item_id_embedding.weight",
    "trs.t.weight": "text_trs.weight",
    "trs.t.bias": "text_trs.bias",
    "trs.v.weight": "image_trs.weight",
    "trs.v.bias": "image_trs.bias",
    "feat.t": "text_embedding.weight",
    "feat.v": "image_embedding.weight",
}


def fingerprint(x: np.ndarray) -> tuple[float, float]:
    """(‖x‖, Σ x·probe) with a fixed random probe of x's shape: two numbers that pin down x.

    Any change of a single entry moves the probe sum, so recording these instead of every
    entry keeps the tests short without letting a wrong value through.
    """
    x = np.asarray(x, dtype=np.float64)
    probe = np.random.default_rng(99).standard_normal(x.size).reshape(x.shape)
    return float(np.linalg.norm(x)), float((x * probe).sum())


def graph(same: bool = False):
    """Our GraphData of the tiny input (t = v when `same`); imported lazily: the reference script
    has MMRec's `models` package on its path, not ours."""
    from models.training.data import build_graph_data, interactions_from_arrays

    f = features()
    if same:
        f["v"] = f["t"].copy()
    none = TRAIN[:0]
    data = interactions_from_arrays(N_USERS, N_ITEMS, TRAIN, none, none)
    return build_graph_data(data, f, knn_k=KNN_K, device="cpu")


def compare(model, weights: dict[str, np.ndarray], expected: dict) -> None:
    """Load `weights`, run the tiny batch, and assert loss, gradient and score fingerprints equal
    the reference's `expected` (one case of mmrec_parity.py's output) to float32 tolerance."""
    import torch

    params = dict(model.named_parameters())
    assert set(params) == set(expected["grads"]), "every parameter has a reference gradient"
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(torch.as_tensor(value))
    loss = model.batch_loss(*(torch.as_tensor(x) for x in (USERS, POS, NEG)))["loss"]
    loss.backward()
    np.testing.assert_allclose(float(loss.detach()), expected["loss"], rtol=1e-5)
    for name, ref in expected["grads"].items():
        g = params[name].grad
        got = fingerprint(np.zeros(params[name].shape) if g is None else g.numpy())
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-7, err_msg=name)
    u, i = model.final_embeddings()
    np.testing.assert_allclose(fingerprint((u @ i.T).numpy()), expected["scores"], rtol=1e-5, atol=1e-6)
