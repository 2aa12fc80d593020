"""`anchorrec update` (issue 33, item 4): a newer dump merged with stable ids, only changed items
re-encoded, new items served through the run's cold path as a new index version, and the retrain
threshold. The catalog is the generated demo written as Amazon 2018 files: the first ingest
lacks three items (and their reviews), the newer dump has them."""

from __future__ import annotations

import gzip
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)
import pytest

from pipeline_config import PipelineConfig
from pipelines.update import merge_items, merge_users
from store import dataset_paths
from store.tables import read_json, read_table
from store.vectors import read_vectors
from tests.cli_helpers import run_cli, user_env

HELD_OUT = ("D000000012", "D000000022", "D000000023")  # the demo's most reviewed items: they pass the 5-core
CHANGED = "D000000005"
DATASET = "cat"
FAST = ["--image-encoder", "none", "--pretrain-epochs", "0"]


def write_dump(src: Path, out: Path, hold: tuple[str, ...] = (), edit: dict[str, dict] | None = None) -> list[str]:
    """The demo's Amazon 2018 files without the `hold` items and with `edit` applied per asin."""
    out.mkdir(parents=True)
    meta = [json.loads(line) for line in gzip.open(src / "meta_Demo.json.gz", "rt")]
    reviews = [json.loads(line) for line in gzip.open(src / "Demo_5.json.gz", "rt")]
    with gzip.open(out / "meta.json.gz", "wt") as fh:
        for m in meta:
            if m["asin"] not in hold:
                fh.write(json.dumps({**m, **(edit or {}).get(m["asin"], {})}) + "\n")
    with gzip.open(out / "reviews.json.gz", "wt") as fh:
        for r in reviews:
            if r["asin"] not in hold:
                fh.write(json.dumps(r) + "\n")
    return ["--release", "2018", "--meta", str(out / "meta.json.gz"), "--reviews", str(out / "reviews.json.gz")]


@pytest.fixture(scope="module")
def dumps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    from pipelines.demo import generate_demo

    root = tmp_path_factory.mktemp("dumps")
    generate_demo(root / "raw", n_items=60, n_users=80, seed=0, progress=False)
    meta = [json.loads(line) for line in gzip.open(root / "raw" / "meta_Demo.json.gz", "rt")]
    title = next(m["title"] for m in meta if m["asin"] == CHANGED)
    return {
        "first": write_dump(root / "raw", root / "first", HELD_OUT),
        "full": write_dump(root / "raw", root / "full"),
        "new_photo_url": write_dump(
            root / "raw", root / "photo", HELD_OUT, {CHANGED: {"imageURLHighRes": ["http://example.invalid/new.jpg"]}}
        ),
        "retitled": write_dump(root / "raw", root / "retitled", HELD_OUT, {CHANGED: {"title": f"Giant {title}"}}),
        "photos": ["--images", str(root / "raw" / "images")],  # the demo's photos, <asin>.jpg
    }


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, dumps: dict[str, list[str]]) -> Path:
    """A home whose dataset holds the first dump, with content_knn trained and published (version 0001)."""
    root = tmp_path_factory.mktemp("published")
    env = user_env(root / "home", root / "prefect")
    ingest = run_cli(env, "ingest", "--dataset", DATASET, *dumps["first"])
    assert ingest.returncode == 0, ingest.stderr[-3000:]
    out = run_cli(env, "publish", "--dataset", DATASET, "--model", "content_knn", *FAST)
    assert out.returncode == 0, out.stderr[-3000:]
    return root / "home"


@pytest.fixture()
def shell(tmp_path: Path, published: Path) -> dict[str, str]:
    """A copy of the published home (a home copies as it is), with a Prefect home of its own."""
    shutil.copytree(published, tmp_path / "home")
    return user_env(tmp_path / "home", tmp_path / "prefect")


def paths_of(env: dict[str, str]):
    return dataset_paths(DATASET, env["ANCHORREC_HOME"])


def feature_rows(env: dict[str, str]) -> dict[str, bytes | None]:
    """asin → the bytes of its text feature row (None: no vector)."""
    table = read_table(paths_of(env).feature("text-minilm"))
    rows = {}
    for asin, vec in zip(table.column("asin").to_pylist(), table.column("vector").to_pylist()):
        rows[asin] = None if vec is None else np.asarray(vec, np.float32).tobytes()
    return rows


def only_run(env: dict[str, str]) -> str:
    (run,) = [p.name for p in (paths_of(env).root / "index").iterdir()]
    return run


def served_vectors(env: dict[str, str], run: str, version: str, key: str = "item_id") -> dict[int, np.ndarray]:
    directory = paths_of(env).index_dir(run) / "versions" / version
    ids, vectors, _ = read_vectors(directory / f"{key.split('_')[0]}_vectors.parquet", key)
    return dict(zip(ids.tolist(), vectors))


def item_ids(env: dict[str, str]) -> dict[str, int]:
    items = read_table(paths_of(env).items, columns=["item_id", "asin"])
    return dict(zip(items.column("asin").to_pylist(), items.column("item_id").to_pylist()))


# --------------------------------------------------------------------------- the merge, pure
def test_merge_keeps_ids_appends_new_and_keeps_items_missing_from_the_dump() -> None:
    schema = pa.schema(
        [("item_id", pa.int32()), ("asin", pa.string()), ("text", pa.string()), ("image_url", pa.string())]
    )
    old = pa.table(
        {"item_id": [0, 1, 2], "asin": ["a", "b", "c"], "text": ["A", "B", "C"], "image_url": [None] * 3}, schema
    )
    staged = pa.table(
        {"item_id": [0, 1, 2], "asin": ["d", "c", "a"], "text": ["D", "C2", "A"], "image_url": [None, None, "u"]},
        schema,
    )
    merged, s = merge_items(old, staged)
    assert merged.column("asin").to_pylist() == ["a", "b", "c", "d"]  # ids kept, d appended, b kept
    assert merged.column("item_id").to_pylist() == [0, 1, 2, 3]
    assert merged.column("text").to_pylist() == ["A", "B", "C2", "D"]  # known items take the newer metadata
    assert s["new_items"] == [3] and s["changed_items"] == [0, 2] and s["items_missing_from_dump"] == 1

    users, remap, new = merge_users(
        pa.table({"user_id": pa.array([0, 1], pa.int32()), "reviewer_id": ["x", "y"]}),
        pa.table({"user_id": pa.array([0, 1], pa.int32()), "reviewer_id": ["z", "x"]}),
    )
    assert users.column("reviewer_id").to_pylist() == ["x", "y", "z"] and remap.tolist() == [2, 0] and new == 1


# --------------------------------------------------------------------------- through the CLI
def test_new_items_served_through_the_cold_path_as_a_new_version(
    shell: dict[str, str], dumps: dict[str, list[str]]
) -> None:
    before = feature_rows(shell)
    run = only_run(shell)
    refused = run_cli(shell, "similar", "--dataset", DATASET, "--asin", HELD_OUT[0])
    assert refused.returncode == 2, refused.stderr  # not in the catalog yet

    out = run_cli(shell, "update", "--dataset", DATASET, *dumps["full"], *FAST, "--retrain-after", "0.5")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "3 new items, 0 changed" in out.stdout
    assert "(3 encoded, 0 resumed, 57 reused)" in out.stderr  # only the new items were encoded
    assert f"{run} version 0002: 3 new items from the cold path" in out.stdout
    assert "full retrain" not in out.stderr

    after = feature_rows(shell)
    assert {a: after[a] for a in before} == before  # unchanged items' rows byte for byte
    ids = item_ids(shell)
    assert sorted(ids[a] for a in HELD_OUT) == [57, 58, 59]  # appended; the 57 known ids unchanged
    # content_knn's cold path: the new item's vector is its own unit text vector
    vectors = served_vectors(shell, run, "0002")
    for asin in HELD_OUT:
        f = np.frombuffer(after[asin], np.float32)
        np.testing.assert_allclose(vectors[ids[asin]], f / np.linalg.norm(f), rtol=1e-6)
    old = served_vectors(shell, run, "0001")
    assert all(np.array_equal(old[i], vectors[i]) for i in old)  # warm vectors untouched

    similar = run_cli(shell, "similar", "--dataset", DATASET, "--asin", HELD_OUT[0], "-k", "3")
    assert similar.returncode == 0, similar.stderr
    # the user for whom a new item ranks highest (from the served vectors) is recommended it
    users = served_vectors(shell, run, "0002", "user_id")
    new_id = ids[HELD_OUT[0]]
    user, rank = best_rank(shell, users, vectors, new_id)
    assert rank < 5
    ranked = run_cli(shell, "recommend", "--dataset", DATASET, "--user", str(user), "-k", "5")
    assert ranked.returncode == 0, ranked.stderr
    assert HELD_OUT[0] in ranked.stdout
    listing = run_cli(shell, "versions", "--dataset", DATASET)
    assert listing.returncode == 0 and "0002" in listing.stdout and "update" in listing.stdout, listing.stdout


def best_rank(
    env: dict[str, str], users: dict[int, np.ndarray], items: dict[int, np.ndarray], item: int
) -> tuple[int, int]:
    """(user, rank of `item` among the items the user has not trained on) for the user ranking it highest."""
    inter = read_table(paths_of(env).interactions)
    train = inter.filter(pa.compute.equal(inter.column("split"), "train"))
    seen: dict[int, set[int]] = {}
    for u, i in zip(train.column("user_id").to_pylist(), train.column("item_id").to_pylist()):
        seen.setdefault(u, set()).add(i)
    best = (-1, len(items))
    for u, vec in users.items():
        if item in seen.get(u, set()):
            continue
        score = float(vec @ items[item])
        rank = sum(1 for i, v in items.items() if i not in seen.get(u, set()) and float(vec @ v) > score)
        best = min(best, (u, rank), key=lambda ur: ur[1])
    return best


def test_changed_inputs_reencode_only_that_item_and_versions_grow_by_one(
    shell: dict[str, str], dumps: dict[str, list[str]]
) -> None:
    before = feature_rows(shell)
    run = only_run(shell)
    photo = run_cli(shell, "update", "--dataset", DATASET, *dumps["new_photo_url"], *FAST)
    assert photo.returncode == 0, photo.stderr[-3000:]
    assert "0 new items, 1 changed" in photo.stdout
    assert "(0 encoded, 0 resumed, 57 reused)" in photo.stderr  # the text encoder read nothing new
    assert feature_rows(shell) == before
    assert f"{run} version 0002" in photo.stdout

    retitled = run_cli(shell, "update", "--dataset", DATASET, *dumps["retitled"], *FAST)
    assert retitled.returncode == 0, retitled.stderr[-3000:]
    assert "(1 encoded, 0 resumed, 56 reused)" in retitled.stderr
    after = feature_rows(shell)
    assert after[CHANGED] != before[CHANGED]
    assert {a: r for a, r in after.items() if a != CHANGED} == {a: r for a, r in before.items() if a != CHANGED}
    assert f"{run} version 0003" in retitled.stdout
    change = read_json(paths_of(shell).index_dir(run) / "versions" / "0003" / "change.json")
    assert change["kind"] == "update" and change["items_changed"] == 1 and change["from_version"] == "0002"
    # content_knn has no trained weight: the changed item's vector follows its new text
    f = np.frombuffer(after[CHANGED], np.float32)
    vec = served_vectors(shell, run, "0003")[item_ids(shell)[CHANGED]]
    np.testing.assert_allclose(vec, f / np.linalg.norm(f), rtol=1e-6)


def test_retrain_threshold_triggers_a_full_retrain_and_resets_the_counter(
    shell: dict[str, str], dumps: dict[str, list[str]]
) -> None:
    run = only_run(shell)
    # 90 new interactions on 888 at training: 10.1 % > 0.1
    out = run_cli(shell, "update", "--dataset", DATASET, *dumps["full"], *FAST)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "full retrain of content_knn (10.1% new since training > --retrain-after 0.1)" in out.stderr
    runs = sorted(p.name for p in (paths_of(shell).root / "index").iterdir())
    (new_run,) = set(runs) - {run}
    assert "retrained (10.1% new" in out.stdout and f"published {new_run}" in out.stdout
    ledger = read_json(paths_of(shell).root / "updates.json")
    assert ledger["run"] == new_run and ledger["at_training"] == {"items": 60, "interactions": 978}
    served = served_vectors(shell, new_run, "0001")
    assert len(served) == 60  # the retrained run saw every item

    again = run_cli(shell, "update", "--dataset", DATASET, *dumps["full"], *FAST)  # nothing new: no retrain
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 new items, 0 changed" in again.stdout and "full retrain" not in again.stderr
    assert "0.0% new since" in again.stderr and f"{new_run} version 0002" in again.stdout


def test_anchorrec_new_items_get_mm_from_the_pretrained_encoder_and_their_photos_encoded(
    tmp_path: Path, dumps: dict[str, list[str]]
) -> None:
    """AnchorRec reads `mm`, written by ICA pretraining for the items it saw: a new item's mm row
    comes from the same pretrained encoder, its photo and text are encoded, nothing else is."""
    env = user_env(tmp_path / "home", tmp_path / "prefect")
    small = ["--pretrain-epochs", "1", "--epochs", "2", "--patience", "2", *dumps["photos"]]
    assert run_cli(env, "ingest", "--dataset", DATASET, *dumps["first"]).returncode == 0
    first = run_cli(env, "publish", "--dataset", DATASET, "--model", "anchorrec", *small)
    assert first.returncode == 0, first.stderr[-3000:]
    run = only_run(env)
    out = run_cli(env, "update", "--dataset", DATASET, *dumps["full"], *small, "--retrain-after", "0.5")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("features ")]
    assert len(lines) == 2 and all("(3 encoded, 0 resumed, 57 reused)" in ln for ln in lines), lines  # text, image
    assert "image-effnet: vectors for 59 of 60 items" in lines[1]  # one demo item has no photo
    assert f"{run} version 0002: 3 new items from the cold path" in out.stdout
    old, new = served_vectors(env, run, "0001"), served_vectors(env, run, "0002")
    ids = item_ids(env)
    fresh = np.stack([new[ids[a]] for a in HELD_OUT])
    assert np.isfinite(fresh).all() and len({row.tobytes() for row in fresh}) == 3  # three distinct vectors
    assert all(np.array_equal(old[i], new[i]) for i in old)


# --------------------------------------------------------------------------- serve's schedules
def test_serve_schedules_a_frequent_update_and_a_rarer_retrain() -> None:
    import cli
    import flows

    cfg = PipelineConfig(dataset="shop", retrain_after=0.2)
    plan = cli.serve_plan(cfg, "0 3 * * *", "shop", "0 * * * *", "0 4 * * 0")
    assert [(f, n, c, p["retrain"]) for f, n, c, p in plan] == [
        ("update", "shop-update", "0 * * * *", False),
        ("update", "shop-retrain", "0 4 * * 0", True),
    ]
    for flow_name, _, _, params in plan:
        assert flows.FLOWS[flow_name].name == "update"
        assert PipelineConfig(**params) == replace(cfg, retrain=params["retrain"])  # the runs' parameters
        assert params["retrain_after"] == 0.2
    assert cli.serve_plan(cfg, "0 3 * * *", "nightly", None, "0 4 * * 0") == [
        ("pipeline", "nightly", "0 3 * * *", cli.asdict(cfg))
    ]


def test_serve_refuses_a_bad_update_cron_in_one_line(tmp_path: Path) -> None:
    env = user_env(tmp_path / "home", tmp_path / "prefect")
    out = run_cli(env, "serve", "--dataset", "demo", "--update-cron", "every day")
    assert out.returncode == 2
    assert out.stderr.startswith("error: --update-cron 'every day' is not a cron expression")
    assert len(out.stderr.strip().splitlines()) == 1


def test_update_of_a_dataset_that_does_not_exist_is_one_line(tmp_path: Path, dumps: dict[str, list[str]]) -> None:
    env = user_env(tmp_path / "home", tmp_path / "prefect")
    out = run_cli(env, "update", "--dataset", "nowhere", *dumps["full"])
    assert out.returncode == 2
    assert out.stderr.startswith("error: dataset 'nowhere' has no items.parquet")
    assert "anchorrec ingest --dataset nowhere" in out.stderr and len(out.stderr.strip().splitlines()) == 1
