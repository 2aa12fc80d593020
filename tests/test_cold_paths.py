"""Every model's cold path (issue 33): how an item it never saw gets a vector from its features.

Checked on values, per model, on tiny generated data: the kit survives its file; a warm item's
own feature row, fed to the cold path, gets exactly one step of the model's own item–item graph
(or, for the branch models, its own branch row; for VBPR / content kNN its own content vector);
the vector follows the features; LightGCN has none; the two baselines' scores by hand.
"""

from __future__ import annotations

import importlib
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from models_fixtures import planted

import pipeline_config
from models import cold
from models.registry import MODELS, READS, make_model
from models.training.data import build_graph_data, interactions_from_arrays

ARGS = {
    "lightgcn": {"dim": 8},
    "vbpr": {"embedding_dim": 8},
    "freedom": {"embedding_dim": 8, "feat_embed_dim": 8},
    "lattice": {"embedding_dim": 8, "feat_embed_dim": 8},
    "lgmrec": {"embedding_dim": 8, "feat_embed_dim": 8},
    "smore": {"embedding_dim": 8},
    "damrs": {"embedding_dim": 8, "knn_k": 4},
    "alignrec": {"embedding_dim": 8},
    "anchorrec": {"embedding_dim": 8, "proj_dim": 8},
    "bm3": {"embedding_dim": 8},
    "pop": {},
    "content_knn": {},
}
GRAPH_MODELS = ("freedom", "lattice", "lgmrec", "smore", "damrs")
WITH_PATH = sorted(set(MODELS) - {"lightgcn"})
N_ITEMS = 24
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world():
    """A planted 30 × 24 dataset with random t (8-d), v (6-d) and mm (5-d) features, kNN k = 4."""
    torch.manual_seed(0)
    rng = np.random.default_rng(7)
    data = planted(n_users=30, n_items=N_ITEMS, n_groups=3, per_user=6)
    feats = {
        "t": rng.normal(size=(N_ITEMS, 8)).astype(np.float32),
        "v": rng.normal(size=(N_ITEMS, 6)).astype(np.float32),
        "mm": rng.normal(size=(N_ITEMS, 5)).astype(np.float32),
    }
    graph = build_graph_data(data, feats, knn_k=4, device="cpu")
    models = {}
    for name in MODELS:
        torch.manual_seed(1)
        models[name] = make_model(name, graph, **ARGS[name])
    return graph, feats, models


def rows(feats: dict[str, np.ndarray], idx) -> dict[str, np.ndarray]:
    return {m: f[idx] for m, f in feats.items()}


def items_of(model) -> np.ndarray:
    return model.final_embeddings()[1].numpy()


# ------------------------------------------------------------------ the shared propagation, by hand


def test_knn_propagate_by_hand_on_five_items():
    warm = np.array([[1, 0], [0, 1], [3, 4], [-1, 0], [4, -3]], np.float32)  # cos with [1, 0]: 1, 0, .6, −1, .8
    vectors = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [2, 0, 2]], np.float32)
    degree = np.array([2.0, 1.0, 1.5, 1.0, 1.6], np.float32)
    new = np.array([[5, 0]], np.float32)
    # k = 2: items 0 (cos 1) and 4 (cos .8); d_n = 1.8
    got = cold.knn_propagate(new, warm, vectors, 2, warm_degree=degree)
    w0, w4 = 1 / math.sqrt(1.8 * 2.0), 0.8 / math.sqrt(1.8 * 1.6)
    assert got == pytest.approx(np.array([[w0 + 2 * w4, 0.0, 2 * w4]]), rel=1e-6)
    # unweighted (FREEDOM, DA-MRS): 1/sqrt(c_n d_j), c_n = 2 kept neighbours
    got = cold.knn_propagate(new, warm, vectors, 2, weighting="unweighted", warm_degree=degree)
    u0, u4 = 1 / math.sqrt(2 * 2.0), 1 / math.sqrt(2 * 1.6)
    assert got == pytest.approx(np.array([[u0 + 2 * u4, 0.0, 2 * u4]]), rel=1e-6)
    # a mask that refuses item 0 lets the next candidate in: items 4 (.8) and 2 (.6)
    got = cold.knn_propagate(new, warm, vectors, 2, warm_degree=degree, keep=lambda idx, sim: idx != 0, candidates=2)
    a4, a2 = 0.8 / math.sqrt(1.4 * 1.6), 0.6 / math.sqrt(1.4 * 1.5)
    assert got == pytest.approx(np.array([[2 * a4, 0.0, a2 + 2 * a4]]), rel=1e-6)


# ------------------------------------------------------------------ (a) the kit survives its file


@pytest.mark.parametrize("name", WITH_PATH)
def test_the_kit_round_trips_through_its_file(world, tmp_path, name):
    _, feats, models = world
    new = {m: f[[3, 11]] + 0.5 for m, f in feats.items()}
    kit = models[name].cold_kit()
    path = cold.save_kit(tmp_path, models[name], kit)
    assert path == tmp_path / cold.KIT_FILE and path.exists()
    loaded = cold.load_kit(tmp_path)
    direct = cold.cold_vectors(name, kit, new, n_items=2)
    again = cold.cold_vectors(name, loaded, new, n_items=2)
    assert direct.shape[0] == 2 and np.array_equal(direct, again)
    dim = models[name].final_embeddings()[1].shape[1]
    assert direct.shape == (2, dim) and direct.dtype == np.float32
    if name != "lgmrec":  # without a kit given, save_kit takes the model's own (LGMRec's is noisy per call)
        cold.save_kit(tmp_path, models[name])
        assert np.array_equal(cold.cold_vectors(name, cold.load_kit(tmp_path), new, n_items=2), direct)


def test_a_broken_kit_file_is_one_clear_error(world, tmp_path):
    (tmp_path / cold.KIT_FILE).write_bytes(b"not a kit")
    with pytest.raises(ValueError, match="cold_kit.pt: not a readable cold kit.*retrain the run"):
        cold.load_kit(tmp_path)
    assert cold.load_kit(tmp_path / "none") is None


# ------------------------------------------------------------------ (b) one step of the model's own graph


def freedom_graph(graph, model) -> torch.Tensor:
    from models.freedom import unweighted_knn

    w = model.cfg.mm_image_weight
    return w * unweighted_knn(graph, "v").to_dense() + (1 - w) * unweighted_knn(graph, "t").to_dense()


def lattice_graph(graph, model) -> torch.Tensor:
    w = torch.softmax(model.modal_weight.detach(), 0)  # [v, t]
    return w[0] * graph.knn["v"].to_dense() + w[1] * graph.knn["t"].to_dense()


def half_graph(graph, model) -> torch.Tensor:
    return 0.5 * (graph.knn["t"].to_dense() + graph.knn["v"].to_dense())


def damrs_graph(graph, model) -> torch.Tensor:
    from models.damrs import row_normalized_graph

    return 0.5 * sum(row_normalized_graph(r, c, N_ITEMS).to_dense() for _, (r, c) in model.cold_source.values())


ITEM_GRAPHS = {
    "freedom": freedom_graph,
    "lattice": lattice_graph,
    "lgmrec": half_graph,
    "smore": half_graph,
    "damrs": damrs_graph,
}


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_a_warm_items_features_get_one_step_of_the_models_item_graph(world, name):
    graph, feats, models = world
    model = models[name]
    kit = model.cold_kit()
    vectors = torch.as_tensor(kit["graphs"][0]["vectors"].numpy())  # the final vectors at kit time
    expected = (ITEM_GRAPHS[name](graph, model) @ vectors).numpy()
    some = [0, 5, 17, 23]
    got = cold.cold_vectors(name, kit, rows(feats, some))
    assert np.allclose(got, expected[some], atol=1e-5)
    assert np.abs(got).max() > 1e-3  # not an empty propagation


def test_graph_models_propagate_the_final_vectors(world):
    _, _, models = world
    for name in GRAPH_MODELS:
        if name == "lgmrec":  # its final vectors carry fresh Gumbel noise per call
            continue
        kit = models[name].cold_kit()
        assert np.allclose(kit["graphs"][0]["vectors"].numpy(), items_of(models[name]), atol=1e-6), name


def test_alignrec_cold_vector_is_its_own_mm_branch_row_without_id_and_lightgcn(world):
    _, feats, models = world
    model = models["alignrec"]
    z = model.branch().detach().numpy()  # K (item_id ⊙ σ(G(W f))), n_layers = 1
    lg_items = model.lightgcn()[model.n_users :].detach().numpy()
    assert np.allclose(items_of(model), lg_items + z, atol=1e-6)
    some = [1, 9, 20]
    got = cold.cold_vectors("alignrec", model.cold_kit(), rows(feats, some))
    assert np.allclose(got, z[some], atol=1e-5)


def test_anchorrec_cold_vector_is_its_final_vector_without_the_lightgcn_part(world):
    _, feats, models = world
    model = models["anchorrec"]
    assert model.cfg.recover_lambda > 0 and model.scored == ("mm", "t")
    lg_items = model.lightgcn()[model.n_users :].detach().numpy()
    some = [2, 8, 19]
    got = cold.cold_vectors("anchorrec", model.cold_kit(), rows(feats, some))
    # z_mm + z_t + λ D(P_mm(z_mm)) of those items, by the model's own forward
    assert np.allclose(got, (items_of(model) - lg_items)[some], atol=1e-5)


def test_anchorrec_and_alignrec_have_no_cold_path_without_propagation(world):
    graph, _, _ = world
    for name in ("anchorrec", "alignrec"):
        model = make_model(name, graph, **ARGS[name], n_layers=0)
        assert model.cold_kit() is None and cold.cold_vectors(name, None, {}) is None


def test_bm3_cold_vector_is_the_predictor_on_its_feature_encoders(world):
    _, feats, models = world
    model = models["bm3"]
    some = [4, 13]
    with torch.no_grad():
        _, i = model.online()
        units = [F.normalize(model.predictor(model.trs[m](torch.as_tensor(feats[m][some]))), dim=1) for m in ("t", "v")]
        expected = model.predictor(i.norm(dim=1).mean() * (units[0] + units[1]) / 2).numpy()
    got = cold.cold_vectors("bm3", model.cold_kit(), rows(feats, some))
    assert np.allclose(got, expected, atol=1e-5)


# ------------------------------------------------------------------ (c) a warm item's features, its vector


def test_vbpr_gets_a_warm_items_content_half_and_a_zero_id_half(world):
    _, feats, models = world
    items = items_of(models["vbpr"])
    some = [0, 7, 22]
    got = cold.cold_vectors("vbpr", models["vbpr"].cold_kit(), rows(feats, some))
    d = ARGS["vbpr"]["embedding_dim"]
    assert np.allclose(got[:, d:], items[some, d:], atol=1e-5)
    assert np.array_equal(got[:, :d], np.zeros((3, d), np.float32))
    assert not np.allclose(items[some, :d], 0)  # the warm item's ID half is not zero: the cold one is


def test_content_knn_gets_exactly_a_warm_items_vector(world):
    _, feats, models = world
    items = items_of(models["content_knn"])
    assert models["content_knn"].modality == "mm"  # 'auto' reads mm when the dataset has it
    got = cold.cold_vectors("content_knn", models["content_knn"].cold_kit(), rows(feats, [3, 6]))
    assert np.allclose(got, items[[3, 6]], atol=1e-6)


def test_content_knn_falls_back_to_t_then_v(world):
    _, feats, _ = world
    data = planted(n_users=30, n_items=N_ITEMS, n_groups=3, per_user=6)
    for given, read in (({"t": feats["t"], "v": feats["v"]}, "t"), ({"v": feats["v"]}, "v")):
        graph = build_graph_data(data, given, knn_k=4, device="cpu")
        assert make_model("content_knn", graph).modality == read
    with pytest.raises(ValueError, match="modality 'mm' is not among the dataset's tables"):
        make_model("content_knn", graph, modality="mm")


# ------------------------------------------------------------------ (d) the vector follows the features


@pytest.mark.parametrize("name", sorted(set(WITH_PATH) - {"pop"}))
def test_the_cold_vector_depends_on_the_features(world, name):
    _, feats, models = world
    kit = models[name].cold_kit()
    a = cold.cold_vectors(name, kit, rows(feats, [2]))
    b = cold.cold_vectors(name, kit, rows(feats, [14]))
    assert np.abs(a - b).max() > 1e-4
    again = cold.cold_vectors(name, kit, rows(feats, [2]))
    assert np.array_equal(a, again)  # and on nothing else


def test_popularity_places_every_new_item_at_count_zero(world):
    _, feats, models = world
    got = cold.cold_vectors("pop", models["pop"].cold_kit(), {}, n_items=3)
    assert np.array_equal(got, np.zeros((3, 1), np.float32))
    assert items_of(models["pop"]).min() > 0  # every warm item of the planted data has a training count
    with pytest.raises(ValueError, match="give n_items"):
        cold.cold_vectors("pop", models["pop"].cold_kit(), {})


# ------------------------------------------------------------------ (e) LightGCN has none


def test_lightgcn_has_no_cold_path(world, tmp_path):
    _, feats, models = world
    assert cold.cold_path("lightgcn") is None
    assert models["lightgcn"].cold_kit() is None
    assert cold.save_kit(tmp_path, models["lightgcn"]) is None and not (tmp_path / cold.KIT_FILE).exists()
    assert cold.cold_vectors("lightgcn", None, rows(feats, [0])) is None
    from models.lightgcn import cold_item_vectors

    with pytest.raises(ValueError, match="lightgcn has no cold path"):
        cold_item_vectors(None, rows(feats, [0]))


def test_every_model_states_its_cold_path():
    for name, (module_name, cls_name, _) in MODELS.items():
        module = importlib.import_module(module_name)
        assert "Cold items:" in module.__doc__, name
        assert hasattr(getattr(module, cls_name), "COLD_PATH"), name
        assert callable(module.cold_item_vectors), name
        assert (cold.cold_path(name) is None) == (name == "lightgcn"), name


def test_a_wrong_feature_width_is_a_clear_error(world):
    _, feats, models = world
    bad = {**rows(feats, [0]), "t": np.zeros((1, 3), np.float32)}
    with pytest.raises(ValueError, match="'t' features have shape \\(1, 3\\)"):
        cold.cold_vectors("freedom", models["freedom"].cold_kit(), bad)


# ------------------------------------------------------------------ (f) the baselines by hand


@pytest.fixture
def three_by_four():
    """u0: items 0, 1; u1: items 1, 2; u2: item 1. Item 3 has no interaction."""
    train = np.array([[0, 0], [0, 1], [1, 1], [1, 2], [2, 1]])
    empty = np.zeros((0, 2), np.int64)
    data = interactions_from_arrays(3, 4, train, empty, empty)
    f = np.array([[1, 0], [0, 2], [3, 4], [1, 1]], np.float32)  # unit: (1,0) (0,1) (.6,.8) (r,r)
    return build_graph_data(data, {"t": f}, knn_k=2, device="cpu")


def scores(model) -> np.ndarray:
    u, i = model.final_embeddings()
    return (u @ i.T).numpy()


def test_popularity_scores_by_hand(three_by_four):
    model = make_model("pop", three_by_four)
    row = [math.log(2), math.log(4), math.log(2), 0.0]  # counts 1, 3, 1, 0
    assert np.allclose(scores(model), np.array([row] * 3), atol=1e-6)
    assert model.fixed is True and list(model.parameters()) == []


def test_content_knn_scores_by_hand(three_by_four):
    model = make_model("content_knn", three_by_four)
    r = 1 / math.sqrt(2)
    n1 = math.sqrt(0.3**2 + 0.9**2)  # u1 = mean((0,1), (.6,.8)) = (.3, .9)
    expected = np.array(
        [
            [r, r, 0.6 * r + 0.8 * r, 1.0],  # u0 = unit((.5, .5)) = (r, r)
            [0.3 / n1, 0.9 / n1, (0.6 * 0.3 + 0.8 * 0.9) / n1, (0.3 + 0.9) * r / n1],
            [0.0, 1.0, 0.8, r],  # u2 = (0, 1)
        ]
    )
    assert np.allclose(scores(model), expected, atol=1e-6)
    assert model.fixed is True and list(model.parameters()) == []


# ------------------------------------------------------------------ registry and CLI


def test_the_baselines_are_registered_everywhere():
    assert {"pop", "content_knn"} <= set(MODELS) == set(pipeline_config.MODELS) == set(READS)
    assert READS["pop"] == () and READS["content_knn"] == ("mm", "t", "v")


def test_the_cli_offers_the_baselines():
    cli = Path(sys.executable).with_name("anchorrec")
    out = subprocess.run([str(cli), "train", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pop" in out.stdout and "content_knn" in out.stdout


def test_the_fixed_baselines_are_not_tuned():
    from models.training.tune import search_space

    for name in ("pop", "content_knn"):
        with pytest.raises(ValueError, match=f"'{name}' has no trainable weight.*anchorrec train --model {name}"):
            search_space(name)


# ------------------------------------------------------------------ trained: new items land with their kind


@pytest.fixture(scope="module")
def held_out_world():
    """Planted 5-group data whose features carry the group; 40 of 200 items never seen in training."""
    rng = np.random.default_rng(0)
    full = planted(n_users=300, n_items=200, n_groups=5, per_user=12, seed=0)
    group = np.arange(200) % 5

    def table(d: int, noise: float) -> np.ndarray:
        return (rng.normal(size=(5, d))[group] + noise * rng.normal(size=(200, d))).astype(np.float32)

    feats = {"t": table(16, 1.0), "v": table(12, 1.5), "mm": table(10, 1.0)}
    cold_ids = np.sort(rng.choice(200, 40, replace=False))
    warm_ids = np.setdiff1d(np.arange(200), cold_ids)
    remap = np.full(200, -1)
    remap[warm_ids] = np.arange(len(warm_ids))
    coo = full.train_csr.tocoo()
    keep = ~np.isin(coo.col, cold_ids)
    train = np.stack([coo.row[keep], remap[coo.col[keep]]], 1)
    empty = np.zeros((0, 2), np.int64)
    warm = interactions_from_arrays(300, len(warm_ids), train, empty, empty)
    graph = build_graph_data(warm, {m: f[warm_ids] for m, f in feats.items()}, knn_k=5, device="cpu")
    everything = (full.train_csr + full.valid_csr + full.test_csr).tocsc()[:, cold_ids].tocsr()
    return graph, train, {m: f[cold_ids] for m, f in feats.items()}, everything


def cold_recall_at_10(users: np.ndarray, cold_items: np.ndarray, truth) -> float:
    """Mean over users with cold items of hits@10 / min(10, their cold items), ranked among cold items."""
    top = np.argsort(-(users @ cold_items.T), axis=1)[:, :10]
    out = []
    for u in np.flatnonzero(np.diff(truth.indptr)):
        mine = set(truth.indices[truth.indptr[u] : truth.indptr[u + 1]].tolist())
        out.append(len(mine & set(top[u].tolist())) / min(10, len(mine)))
    return float(np.mean(out))


@pytest.mark.parametrize("name", sorted(set(WITH_PATH) - {"pop"}))
def test_trained_models_place_new_items_with_their_kind(held_out_world, name):
    """Chance is 10/40 = 0.25 (8 cold items per group); every cold path must do far better."""
    graph, train, cold_feats, truth = held_out_world
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    args = {k: (16 if "dim" in k else v) for k, v in ARGS[name].items()}
    model = make_model(name, graph, **{**args, **({"knn_k": 5} if name == "damrs" else {})})
    if not getattr(type(model), "fixed", False):
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for epoch in range(15):
            for batch in np.array_split(rng.permutation(len(train)), 4):
                users, pos = (torch.as_tensor(train[batch, c]) for c in (0, 1))
                neg = torch.as_tensor(rng.integers(0, graph.n_items, len(batch)))
                opt.zero_grad()
                model.batch_loss(users, pos, neg)["loss"].backward()
                opt.step()
            if hasattr(model, "on_epoch_end"):
                model.on_epoch_end(epoch)
    users = model.final_embeddings()[0].numpy()
    vectors = cold.cold_vectors(name, model.cold_kit(), cold_feats)
    assert cold_recall_at_10(users, vectors, truth) > 0.6
