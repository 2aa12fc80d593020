"""Reference values for the DA-MRS parity tests, computed by MMRec's own class.

DA-MRS takes the top 10 pseudo-positives of each item twice over, so it needs more items than
tiny.py's 7: this script defines its own tiny fixed input (N_USERS × N_ITEMS below, drawn from
fixed NumPy seeds), which tests/test_damrs.py imports. It imports `DAMRS` from an MMRec checkout
(github.com/enoche/MMRec, its `src/` folder), writes the features as the .npy files MMRec reads,
builds the behaviour graph with the authors' own script (`build_iib_graph.py` of a DA-MRS
checkout, github.com/XMUDM/DA-MRS, run as it is on the tiny pairs written as its .inter file:
co-users ≥ 2, --topk 2, the `item_graph_dict_2.npy` MMRec's DAMRS.yaml names) and hands MMRec
that file, copies the initial weights in, runs one `calculate_loss` + backward and
`full_sort_predict`, and prints the authors' graph and per case the loss and fingerprints
(tiny.fingerprint) of every trained parameter's gradient and of the score matrix.

DA-MRS draws nothing at random in a training step (no dropout, no sampling), so no shim is needed
for determinism; MMRec's kNN code moves its indices with `.cuda()`, which is made a no-op here
(CPU run), and MMRec's `_random` helper is never called.

The authors' script imports pandas, yaml and networkx, which the project does not need: give them
on DAMRS_PYTHONPATH (e.g. `pip install --target /tmp/x --no-deps pandas pyyaml networkx
python-dateutil pytz tzdata six`). Its PageRank line (alpha 1, unused by the graph) is run as is.

    MMREC_SRC=/path/to/MMRec/src DAMRS_SRC=/path/to/DA-MRS DAMRS_PYTHONPATH=/tmp/x \
        .venv/bin/python benchmarks/parity/damrs_parity.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common
from benchmarks.parity import tiny  # noqa: E402

N_USERS, N_ITEMS = 8, 24
DIM, KNN_K = 4, 3
T_DIM, V_DIM = 6, 5
NAMES = {"user_emb.weight": "user_embedding.weight", "item_emb.weight": "item_id_embedding.weight"}

# the cases: MMRec config values; the term weights are raised from the defaults (kl 1,
# neighbour 0.001) so that every term moves the gradients visibly
CASES: dict[str, dict[str, Any]] = {
    "damrs": {"same": False, "n_mm_layers": 1, "n_ui_layers": 2, "kl_weight": 0.3, "neighbor_weight": 0.5},
    "damrs_same": {"same": True, "n_mm_layers": 1, "n_ui_layers": 2, "kl_weight": 0.3, "neighbor_weight": 0.5},
    "damrs_deep": {"same": False, "n_mm_layers": 2, "n_ui_layers": 1, "kl_weight": 1.0, "neighbor_weight": 0.2},
}


def train_pairs() -> np.ndarray:
    """Every user buys 6 distinct items (fixed seed), in the order the interaction matrix lists them."""
    rng = np.random.default_rng(71)
    pairs = [(u, i) for u in range(N_USERS) for i in sorted(rng.choice(N_ITEMS, 6, replace=False))]
    return np.array(pairs, dtype=np.int64)


def batch_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One BPR batch: (users, positives from the training pairs, negatives each user has not bought)."""
    train, rng = train_pairs(), np.random.default_rng(72)
    users = np.array([0, 1, 2, 3, 4, 5, 6, 7, 0, 3], dtype=np.int64)
    pos, neg = [], []
    for u in users:
        bought = train[train[:, 0] == u, 1]
        pos.append(rng.choice(bought))
        neg.append(rng.choice(np.setdiff1d(np.arange(N_ITEMS), bought)))
    return users, np.array(pos, dtype=np.int64), np.array(neg, dtype=np.int64)


def features(same: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(73)
    t = rng.standard_normal((N_ITEMS, T_DIM)).astype(np.float32)
    v = rng.standard_normal((N_ITEMS, V_DIM)).astype(np.float32)
    return {"t": t, "v": t.copy() if same else v}


def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(74)
    return {
        "user_emb.weight": rng.uniform(-0.5, 0.5, (N_USERS, DIM)).astype(np.float32),
        "item_emb.weight": rng.uniform(-0.5, 0.5, (N_ITEMS, DIM)).astype(np.float32),
    }


BEHAVIOUR_K = 2  # the authors' item_graph_dict_2.npy (MMRec's DAMRS.yaml)


def authors_behaviour_dict(damrs_src: Path, work: Path) -> dict[int, list[list]]:
    """The authors' build_iib_graph.py run on the tiny pairs, in the layout it expects.

    It reads configs from ./src_tiktok and the .inter file (user, item, x_label) from data_path;
    its item count comes from the whole file, so the one item no training pair has is listed
    with x_label 2 (test), as a real dataset lists every item.
    """
    train = train_pairs()
    conf = work / "src_tiktok" / "configs"
    (conf / "dataset").mkdir(parents=True)
    data = work / "data" / "tiny"
    data.mkdir(parents=True)
    (conf / "overall.yaml").write_text(f"data_path: '{work / 'data'}/'\n")
    (conf / "dataset" / "tiny.yaml").write_text(
        "USER_ID_FIELD: userID\nITEM_ID_FIELD: itemID\ninter_file_name: tiny.inter\n"
    )
    rows = [f"{u}\t{i}\t0" for u, i in train.tolist()]
    rows += [f"0\t{i}\t2" for i in sorted(set(range(N_ITEMS)) - set(train[:, 1].tolist()))]
    (data / "tiny.inter").write_text("userID\titemID\tx_label\n" + "\n".join(rows) + "\n")
    env = {**os.environ, "PYTHONPATH": os.environ.get("DAMRS_PYTHONPATH", "")}
    subprocess.run(
        [sys.executable, str(damrs_src / "build_iib_graph.py"), "-d", "tiny", "--topk", str(BEHAVIOUR_K)],
        cwd=work,
        env=env,
        check=True,
        capture_output=True,
    )
    return np.load(data / f"item_graph_dict_{BEHAVIOUR_K}.npy", allow_pickle=True).item()


class Dataset:
    """What MMRec's DAMRS reads from its dataset argument."""

    def __init__(self) -> None:
        self.dataset = self

    def get_user_num(self) -> int:
        return N_USERS

    def get_item_num(self) -> int:
        return N_ITEMS

    def inter_matrix(self, form: str = "coo") -> sp.coo_matrix:
        t = train_pairs()
        return sp.coo_matrix((np.ones(len(t), np.float32), (t[:, 0], t[:, 1])), shape=(N_USERS, N_ITEMS))


def run_case(damrs_cls: type, root: Path, name: str, case: dict[str, Any], behaviour: dict) -> dict[str, Any]:
    from benchmarks.parity.mmrec_parity import base_config, load_weights

    data_dir = root / name
    data_dir.mkdir(parents=True)
    f = features(case["same"])
    np.save(data_dir / "text_feat.npy", f["t"])
    np.save(data_dir / "image_feat.npy", f["v"])
    np.save(data_dir / "item_graph_dict.npy", behaviour, allow_pickle=True)
    args = {k: v for k, v in case.items() if k != "same"}
    cfg = base_config(
        data_dir,
        knn_k=KNN_K,
        lambda_coeff=0.9,
        cf_model="lightgcn",
        reg_weight=0.0,
        item_graph_dict_file="item_graph_dict.npy",
        **args,
    )
    cfg["embedding_size"], cfg["train_batch_size"] = DIM, len(batch_arrays()[0])
    model = damrs_cls(cfg, Dataset())  # on the CPU: use_mmrec_checkout made .cuda() the identity
    load_weights(model, weights(), NAMES)
    loss = model.calculate_loss(torch.as_tensor(np.stack(batch_arrays())))
    loss.backward()
    with torch.no_grad():
        scores = model.full_sort_predict((torch.arange(N_USERS),))
    params = dict(model.named_parameters())
    grads = {ours: tiny.fingerprint(params[theirs].grad.numpy()) for ours, theirs in NAMES.items()}
    return {"loss": float(loss), "grads": grads, "scores": tiny.fingerprint(scores.numpy())}


def main() -> None:
    from benchmarks.parity.mmrec_parity import use_mmrec_checkout

    use_mmrec_checkout(__doc__, "damrs.py")
    from models.damrs import DAMRS  # MMRec's, from the checkout  # noqa: E402

    damrs_src = os.environ.get("DAMRS_SRC")
    if not damrs_src or not (Path(damrs_src) / "build_iib_graph.py").is_file():
        sys.exit(
            "give the DA-MRS checkout (github.com/XMUDM/DA-MRS) with build_iib_graph.py: DAMRS_SRC=/path/to/DA-MRS"
        )
    torch.set_default_dtype(torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        behaviour = authors_behaviour_dict(Path(damrs_src), Path(tmp) / "authors")
        out: dict[str, Any] = {name: run_case(DAMRS, Path(tmp), name, case, behaviour) for name, case in CASES.items()}
    out["behaviour_graph"] = {int(i): [int(j) for j in nb] for i, (nb, _) in sorted(behaviour.items())}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
