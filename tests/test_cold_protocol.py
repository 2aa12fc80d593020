"""The item-cold protocol (issue 33 part 1): the split, training on warm items only, three divisions."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run_cli, user_env

from models.evaluation.cold import (
    DIVISION_KEYS,
    division_items,
    division_summary,
    division_table,
    evaluate_divisions,
)
from models.training import trainer as T
from models.training.data import interactions_from_arrays, load_interactions
from pipelines import prepare as P
from pipelines.records import BadRecords, Product, Review
from store import schemas
from store.layout import DatasetPaths, dataset_paths
from store.tables import read_json, read_table
from store.vectors import read_vectors, write_features


# --- the draw ---------------------------------------------------------------------------------
def test_the_draw_is_a_seeded_fraction_split_half_and_half_with_the_odd_item_in_test() -> None:
    ids, code = P.draw_cold_items(100, 0.15, seed=3)
    assert len(ids) == 15 and (code == 1).sum() == 7 and (code == 2).sum() == 8
    assert np.array_equal(ids, np.sort(ids)) and len(np.unique(ids)) == 15 and ids.max() < 100
    again, again_code = P.draw_cold_items(100, 0.15, seed=3)
    assert np.array_equal(ids, again) and np.array_equal(code, again_code)
    other, _ = P.draw_cold_items(100, 0.15, seed=4)
    assert not np.array_equal(ids, other)
    assert len(P.draw_cold_items(100, 0.0, seed=3)[0]) == 0
    assert len(P.draw_cold_items(101, 0.2, seed=0)[0]) == 20  # round(20.2)
    with pytest.raises(ValueError, match="cold_items must be in"):
        P.PrepareConfig(cold_items=1.0)


# --- prepare ------------------------------------------------------------------------------------
def planted_reviews(n_users: int = 80, n_items: int = 60, groups: int = 4, per_user: int = 10) -> list[Review]:
    """Users like the items of their group: enough structure for two epochs to learn something."""
    rng = random.Random(0)
    out = []
    for u in range(n_users):
        pool = [j for j in range(n_items) if j % groups == u % groups]
        for t, j in enumerate(rng.sample(pool, per_user)):
            out.append(Review(f"u{u:03d}", f"i{j:03d}", 5.0, 1000 + t))
    return out


def products(n_items: int = 60) -> list[Product]:
    return [Product(f"i{j:03d}", f"Item {j}") for j in range(n_items)]


def test_prepare_holds_out_cold_items_with_all_their_interactions(home: Path) -> None:
    paths = dataset_paths("cold", home)
    reviews = planted_reviews()
    bad = BadRecords()
    bad.count_lines("reviews.json", len(reviews))  # as a reader of the file would
    report = P.prepare(paths, iter(reviews), iter(products()), bad=bad, config=P.PrepareConfig(kcore=1, cold_items=0.2))
    cold = read_table(paths.cold_items, schemas.COLD_ITEMS)
    ids = np.array(cold.column("item_id").to_pylist())
    halves = cold.column("split").to_pylist()
    want_ids, want_code = P.draw_cold_items(60, 0.2, seed=0)
    assert ids.tolist() == want_ids.tolist() and halves == [schemas.SPLITS[c] for c in want_code]
    asins = read_table(paths.items).column("asin").to_pylist()
    assert cold.column("asin").to_pylist() == [asins[i] for i in ids]

    inter = read_table(paths.interactions, schemas.INTERACTIONS)
    item = inter.column("item_id").to_numpy()
    split = np.array(inter.column("split").to_pylist())
    half = dict(zip(ids.tolist(), halves))
    on_cold = np.isin(item, ids)
    cold_asins = {asins[i] for i in ids}
    assert on_cold.sum() == sum(r.asin in cold_asins for r in reviews) > 0  # all their interactions kept
    assert [split[k] for k in np.flatnonzero(on_cold)] == [half[i] for i in item[on_cold].tolist()]
    assert not (on_cold & (split == "train")).any()
    # the warm interactions: the usual rule applied to the warm interactions alone
    user = inter.column("user_id").to_numpy()
    ts = inter.column("timestamp").to_numpy()
    warm = ~on_cold
    rule = P.assign_split(user[warm].astype(np.int64), ts[warm], item[warm].astype(np.int64), 0)
    assert split[warm].tolist() == [schemas.SPLITS[c] for c in rule]

    got = report["cold_items"]
    assert (got["fraction"], got["seed"], got["items"], got["valid_items"], got["test_items"]) == (0.2, 0, 12, 6, 6)
    counts = np.bincount(item, minlength=60)
    assert got["valid_interactions"] == counts[ids[np.array(halves) == "valid"]].sum()
    assert got["test_interactions"] == counts[ids[np.array(halves) == "test"]].sum()
    assert got["valid_interactions"] + got["test_interactions"] == on_cold.sum()
    assert report["rows"]["balanced"] and report["rows"]["kept"] == len(reviews) == inter.num_rows
    assert sum(report["split"]["sizes"].values()) == inter.num_rows
    assert read_json(paths.prepare_report)["cold_items"] == got
    assert "cold items (0.2): 6 valid / 6 test items" in P.format_summary(report)

    # loaded as the trainer sees it
    data = load_interactions(paths)
    assert data.cold_items.tolist() == ids.tolist()
    assert data.cold_split.tolist() == [1 if h == "valid" else 2 for h in halves]

    # ingest again without cold items: the file goes, the dataset is warm again
    P.prepare(paths, iter(reviews), iter(products()), bad=BadRecords(), config=P.PrepareConfig(kcore=1))
    assert not paths.cold_items.exists() and len(load_interactions(paths).cold_items) == 0


# --- the three divisions, by hand -------------------------------------------------------------
def tiny() -> tuple:
    """2 users, 5 items; items 3 (valid half) and 4 (test half) are cold.
    u0: train i0, valid i3, test i2 and i4; u1: train i1, test i0."""
    data = interactions_from_arrays(
        2, 5, np.array([[0, 0], [1, 1]]), np.array([[0, 3]]), np.array([[0, 2], [0, 4], [1, 0]])
    )
    data.cold_items, data.cold_split = np.array([3, 4]), np.array([1, 2], np.int8)
    user = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    items = np.array([[0.9, 0.1], [0.1, 0.9], [0.5, 0.2], [0.8, 0.0], [0.7, 0.5]], np.float32)
    return data, user, items


def test_three_divisions_equal_the_hand_computed_values() -> None:
    data, user, items = tiny()
    assert {k: v.tolist() for k, v in division_items(data).items()} == {
        "cold": [4],
        "warm": [0, 1, 2],
        "all": [0, 1, 2, 3, 4],
    }
    got, per_user = evaluate_divisions(user, items, items[[0, 1, 2]], data, ks=(1, 2), device="cpu")
    ln = 1 / np.log2(3)
    # cold: u0 alone has a cold test item (i4), the only candidate: a hit at rank 1
    assert got["cold"]["recall@1"] == 1.0 and got["cold"]["ndcg@2"] == 1.0
    assert per_user["users"].tolist() == [0] and per_user["recall@2"].tolist() == [1.0]
    # warm: u0 ranks i2 (.5) over i1 (.1): hit at 1; u1 ranks i2 (.2) over i0 (.1): hit at 2
    assert got["warm"]["recall@1"] == pytest.approx(0.5) and got["warm"]["recall@2"] == pytest.approx(1.0)
    assert got["warm"]["ndcg@2"] == pytest.approx((1 + ln) / 2)
    # all: u0 ranks i3 (.8, cold valid: a miss), i4 (.7) hit at 2 of 2 held out; u1 ranks i4, i2: no hit
    assert got["all"]["recall@1"] == 0.0 and got["all"]["recall@2"] == pytest.approx(0.25)
    assert got["all"]["ndcg@2"] == pytest.approx(ln / (1 + ln) / 2)


def test_a_model_without_a_cold_path_gets_null_cold_and_all_divisions() -> None:
    data, user, items = tiny()
    got, per_user = evaluate_divisions(user, None, items[[0, 1, 2]], data, ks=(1, 2), device="cpu")
    assert got["cold"] is None and got["all"] is None and per_user is None
    assert got["warm"]["recall@2"] == pytest.approx(1.0)


# --- the trainer: warm only, no leakage -------------------------------------------------------
DIM = 8


def feature_rows(n: int, seed: int) -> np.ndarray:
    """Group-informative features (item j's group is j % 4) plus noise."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((4, DIM))
    return (centers[np.arange(n) % 4] + 0.3 * rng.standard_normal((n, DIM))).astype(np.float32)


def write_feature_tables(paths: DatasetPaths, cold_noise: int | None = None) -> None:
    """Tables 'img' and 'txt'; `cold_noise` replaces the cold items' rows by noise of that seed."""
    items = read_table(paths.items)
    asins, ids = items.column("asin").to_pylist(), items.column("item_id").to_numpy()
    cold = load_interactions(paths).cold_items
    for name, modality, seed in (("img", "image", 1), ("txt", "text", 2)):
        rows = feature_rows(len(asins), seed)
        if cold_noise is not None:
            rows[cold] = np.random.default_rng(cold_noise).standard_normal((len(cold), DIM)).astype(np.float32) * 5
        valid = np.ones(len(asins), dtype=bool)
        valid[np.setdiff1d(np.arange(len(asins)), cold)[:3]] = False  # filled with the WARM mean, never the cold rows
        write_features(
            paths.feature(name),
            asins,
            ids,
            rows,
            encoder="t",
            model="t",
            weights="t",
            modality=modality,
            input_hash=name,
            valid=valid,
        )


@pytest.fixture()
def cold_dataset(home: Path) -> DatasetPaths:
    paths = dataset_paths("cold", home)
    P.prepare(
        paths,
        iter(planted_reviews()),
        iter(products()),
        bad=BadRecords(),
        config=P.PrepareConfig(kcore=1, cold_items=0.2),
    )
    write_feature_tables(paths)
    return paths


def freedom(run_id: str, **kw) -> T.TrainConfig:
    return T.TrainConfig(
        model="freedom", features={"v": "img", "t": "txt"}, epochs=2, knn_k=5, device="cpu", run_id=run_id, **kw
    )


def test_the_trainer_builds_the_model_on_warm_items_only(cold_dataset: DatasetPaths) -> None:
    full = load_interactions(cold_dataset)
    data, graph = T.prepare(cold_dataset, freedom("w"))
    warm_ids = np.setdiff1d(np.arange(60), full.cold_items)
    assert data.n_items == graph.n_items == 48 and data.holdout.warm_ids.tolist() == warm_ids.tolist()
    for m, name in (("v", "img"), ("t", "txt")):
        assert graph.features[m].shape == (48, DIM) and graph.knn[m].shape == (48, 48)
        rows = feature_rows(60, 1 if name == "img" else 2)[warm_ids]
        rows[:3] = rows[3:].mean(axis=0)  # the three warm items without a vector: the warm items' mean
        assert np.allclose(graph.features[m].numpy(), rows, atol=1e-6)
        assert data.holdout.cold_features[m].shape == (12, DIM)
    assert int(graph.item_pop.sum()) == full.train_csr.nnz == data.train_csr.nnz
    # validation is the warm items' only: the cold valid half is never looked at while training
    assert data.valid_csr.nnz == full.valid_csr[:, warm_ids].nnz < full.valid_csr.nnz
    coo = full.train_csr.tocoo()
    assert set(zip(data.train[:, 0].tolist(), warm_ids[data.train[:, 1]].tolist())) == set(
        zip(coo.row.tolist(), coo.col.tolist())
    )


def test_changing_cold_items_features_moves_no_trained_weight(
    cold_dataset: DatasetPaths, one_torch_thread: None
) -> None:
    """The LEAKAGE test (design §2): cold rows replaced by noise, every weight identical."""
    first = T.train(cold_dataset, freedom("clean"), progress=False)
    write_feature_tables(cold_dataset, cold_noise=7)
    second = T.train(cold_dataset, freedom("noisy"), progress=False)
    a = torch.load(cold_dataset.run("clean") / "checkpoint.pt", weights_only=False)
    b = torch.load(cold_dataset.run("noisy") / "checkpoint.pt", weights_only=False)
    assert a["model"].keys() == b["model"].keys() and len(a["model"]) > 0
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["best"]["state"]:
        assert torch.equal(a["best"]["state"][key], b["best"]["state"][key]), key
    assert first["test_divisions"]["warm"] == second["test_divisions"]["warm"] == first["test"]
    # the cold vectors come from the features: they move, the warm ones do not
    ids, va, _ = read_vectors(cold_dataset.item_vectors("clean"), "item_id")
    _, vb, _ = read_vectors(cold_dataset.item_vectors("noisy"), "item_id")
    cold = load_interactions(cold_dataset).cold_items
    warm = np.setdiff1d(ids, cold)
    assert len(ids) == 60 and np.array_equal(va[warm], vb[warm]) and not np.allclose(va[cold], vb[cold])
    assert first["cold_path"] and first["test_divisions"]["cold"] is not None
    per_user = np.load(cold_dataset.run("clean") / "per_user_cold.npz")
    assert per_user["recall@20"].mean() == pytest.approx(first["test_divisions"]["cold"]["recall@20"])


def test_a_fixed_model_runs_no_epoch(cold_dataset: DatasetPaths) -> None:
    """popularity (`fixed = True`): one validation evaluation, best_epoch 0, no checkpoint."""
    metrics = T.train(cold_dataset, T.TrainConfig(model="pop", device="cpu", run_id="pop"), progress=False)
    assert metrics["best_epoch"] == 0 and metrics["epochs_run"] == 0 and metrics["history"] == []
    data = load_interactions(cold_dataset)
    counts = np.log1p(np.asarray(data.train_csr.sum(axis=0)).ravel())
    ids, items, _ = read_vectors(cold_dataset.item_vectors("pop"), "item_id")
    assert np.allclose(items[:, 0], counts[ids]) and metrics["valid"]["recall@20"] > 0
    # a cold item has no training interaction: popularity places every one at count 0, and says so
    assert len(ids) == 60 and np.all(items[data.cold_items, 0] == 0.0)
    assert metrics["cold_path"] and metrics["test_divisions"]["cold"] is not None
    assert not (cold_dataset.run("pop") / "checkpoint.pt").exists()


# --- through the command line -----------------------------------------------------------------
@pytest.mark.slow
def test_cli_ingest_with_cold_items_then_train_prints_and_writes_the_divisions(tmp_path: Path) -> None:
    env = user_env(tmp_path / "home", tmp_path / "prefect")
    small = ["--dataset", "demo", "--demo-items", "100", "--demo-users", "140"]
    done = run_cli(env, "ingest", *small, "--cold-items", "0.2")
    assert done.returncode == 0, done.stderr[-2000:]
    paths = dataset_paths("demo", tmp_path / "home")
    assert read_table(paths.cold_items).num_rows == 20 and read_json(paths.prepare_report)["cold_items"]["items"] == 20
    assert (paths.root / "records" / "cold_items.parquet.json").exists()  # recorded like every ingest output

    common = ["--dataset", "demo", "--epochs", "2", "--pretrain-epochs", "1", "--image-workers", "4"]
    done = run_cli(env, "train", *common, "--model", "freedom")
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout + done.stderr
    line = next(x for x in out.splitlines() if "test recall@20 / ndcg@20: cold" in x)
    run = next(r for r in paths.run_ids() if r.startswith("freedom-"))
    metrics = read_json(paths.metrics(run))
    div = metrics["test_divisions"]
    assert f"cold {div['cold']['recall@20']:.4f}" in line and f"all {div['all']['recall@20']:.4f}" in line
    assert div["warm"] == metrics["test"] and metrics["cold_path"]
    ids, _, _ = read_vectors(paths.item_vectors(run), "item_id")
    assert ids.tolist() == list(range(100))

    done = run_cli(env, "train", *common, "--model", "lightgcn")
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout + done.stderr
    assert "cold and all: null (lightgcn has no cold path)" in out
    run = next(r for r in paths.run_ids() if r.startswith("lightgcn-"))
    metrics = read_json(paths.metrics(run))
    assert metrics["test_divisions"]["cold"] is None and metrics["test_divisions"]["all"] is None
    assert metrics["cold_path"] is None and metrics["test_divisions"]["warm"] == metrics["test"]
    ids, _, _ = read_vectors(paths.item_vectors(run), "item_id")
    assert len(ids) == 80 and not set(ids.tolist()) & set(read_table(paths.cold_items).column("item_id").to_pylist())


# --- report and leaderboard --------------------------------------------------------------------
def test_division_summary_and_table_average_seeds_and_keep_null_for_no_cold_path() -> None:
    def run(cold: float | None, warm: float) -> dict:
        m = {k: warm for k in DIVISION_KEYS}
        c = None if cold is None else {k: cold for k in DIVISION_KEYS}
        return {"test_divisions": {"cold": c, "warm": m, "all": c}}

    s = division_summary([run(0.2, 0.5), run(0.4, 0.7)])
    assert s["cold"]["recall@20"]["mean"] == pytest.approx(0.3)
    assert s["cold"]["recall@20"]["std"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert s["warm"]["ndcg@10"]["mean"] == pytest.approx(0.6)
    none = division_summary([run(None, 0.5)])
    assert none["cold"] is None and none["all"] is None and none["warm"]["recall@10"]["mean"] == 0.5
    assert division_summary([{"test": {}}]) is None
    table = division_table({"freedom": s, "lightgcn": none, "vbpr": None})
    assert "| freedom | cold | 0.3000 ± 0.1414 | 0.3000 ± 0.1414 |" in "\n".join(table)
    assert "| lightgcn | cold | null: no cold path |" in "\n".join(table) and not any("vbpr" in x for x in table)
    assert division_table({"vbpr": None}) == []
    # the seeds summary a leaderboard row is made of carries them (None-free: absent on a warm dataset)
    runs = [
        {"run_id": f"r{i}", "valid": {"recall@20": 0.1}, "test": {"recall@20": 0.2}, "best_epoch": 1, **r}
        for i, r in enumerate([run(0.2, 0.5), run(0.4, 0.7)])
    ]
    assert T.summarize_seeds(runs)["test_divisions"] == s
    assert "test_divisions" not in T.summarize_seeds([{k: v for k, v in runs[0].items() if k != "test_divisions"}])


def test_the_report_shows_the_divisions_of_runs_on_a_dataset_with_cold_items(
    cold_dataset: DatasetPaths, one_torch_thread: None
) -> None:
    from models.evaluation.report import compare_runs

    f = T.train(cold_dataset, freedom("f"), progress=False)
    lg = T.train(cold_dataset, T.TrainConfig(model="lightgcn", epochs=2, device="cpu", run_id="l"), progress=False)
    out = compare_runs(cold_dataset, ["f", "l"], baseline="lightgcn", features={}, projection_sample=20)
    text = out.read_text()
    cold = f["test_divisions"]["cold"]
    assert f"| freedom | cold | {cold['recall@10']:.4f} ± 0.0000 | {cold['recall@20']:.4f} ± 0.0000 |" in text
    assert "| lightgcn | cold | null: no cold path |" in text and "| lightgcn | all | null: no cold path |" in text
    warm = lg["test_divisions"]["warm"]
    assert f"| lightgcn | warm | {warm['recall@10']:.4f} ± 0.0000 |" in text
    saved = read_json(out.parent / "report.json")["test_divisions"]
    assert (
        saved["lightgcn"]["cold"] is None
        and saved["freedom"]["all"]["recall@20"]["mean"] == f["test_divisions"]["all"]["recall@20"]
    )
    # the per-user file of a report is the warm division: the run's `test` metrics, user by user
    per_user = np.load(cold_dataset.run("l") / "per_user.npz")
    assert per_user["recall@20"].mean() == pytest.approx(lg["test"]["recall@20"])


def test_a_cold_fraction_outside_0_1_is_one_error_line(tmp_path: Path) -> None:
    done = run_cli(
        user_env(tmp_path / "home", tmp_path / "prefect"), "ingest", "--dataset", "demo", "--cold-items", "1.5"
    )
    assert done.returncode == 2 and done.stderr.strip() == "error: --cold-items must be in [0, 1), got 1.5"
    assert not (tmp_path / "home" / "demo").exists()


def test_an_mmrec_import_keeps_the_published_split_of_warm_items_and_holds_out_the_cold(
    tmp_path: Path, home: Path
) -> None:
    from test_mmrec import ROWS, make_mmrec

    from pipelines.mmrec import import_mmrec

    src = make_mmrec(tmp_path / "src")
    report = import_mmrec(src, "toy", progress=False, cold_items=0.34, seed=1)
    paths = dataset_paths("toy")
    ids, code = P.draw_cold_items(6, 0.34, seed=1)
    assert read_table(paths.cold_items).column("item_id").to_pylist() == ids.tolist() and len(ids) == 2
    inter = read_table(paths.interactions)
    got = dict(
        zip(
            zip(inter.column("user_id").to_pylist(), inter.column("item_id").to_pylist()),
            inter.column("split").to_pylist(),
        )
    )
    half = dict(zip(ids.tolist(), code.tolist()))
    for u, i, _, x in ROWS:  # a cold item's rows move to its half; a warm item's keep the published label
        assert got[(u, i)] == schemas.SPLITS[half.get(i, x)]
    assert report["cold_items"]["items"] == 2 and report["cold_items"]["test_items"] == 1


def test_the_ica_run_depends_on_the_cold_hold_out(tmp_path: Path) -> None:
    """Another hold-out is another ICA run: a stale one would have trained on items now cold."""
    from flows import pretrain_inputs
    from stage_keys import stage_key
    from store.layout import dataset_paths

    paths = dataset_paths("d", tmp_path)
    paths.root.mkdir(parents=True)
    for f in (paths.feature("img"), paths.feature("txt"), paths.items):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(f.name.encode())

    def key() -> str:
        return stage_key("pretrain", {"epochs": 1}, pretrain_inputs(paths, "img", "txt", {}), ())

    warm = key()
    assert paths.cold_items not in pretrain_inputs(paths, "img", "txt", {})  # a warm dataset's runs keep their names
    paths.cold_items.write_bytes(b"items 3, 7")
    first = key()
    paths.cold_items.write_bytes(b"items 3, 8")  # re-ingested with another draw
    assert len({warm, first, key()}) == 3
