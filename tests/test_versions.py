"""Index versions (issue 33, item 4): publish, readers of one version only, rollback, prune, CLI."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
from cli_helpers import run_cli, user_env
from store_testdata import items_table, make_dataset

from store import StoreError, schemas
from store.index import INDEX_FILE, MANIFEST_FILE, latest_run, load_index, publish, publish_version, rollback
from store.sql import answered_by, answered_version, recommend_for, run_query, similar_to
from store.versions import (
    current_version,
    list_versions,
    prune,
    serving,
    version_dir,
    version_names,
)


@pytest.fixture()
def data(tmp_path):
    return make_dataset(tmp_path, n_users=30, n_items=80, d=6)


def other_vectors(data, seed: int, extra_items: int = 0):
    """A second model state: other user and item vectors (and `extra_items` new items)."""
    rng = np.random.default_rng(seed)
    item_ids = np.arange(len(data.item_ids) + extra_items)
    items = rng.standard_normal((len(item_ids), data.items.shape[1])).astype(np.float32)
    users = rng.standard_normal(data.users.shape).astype(np.float32)
    return item_ids, items, users


def publish_update(data, seed: int, extra_items: int = 0, **kw):
    item_ids, items, users = other_vectors(data, seed, extra_items)
    if extra_items:  # new items join the catalog, as `anchorrec update` appends them
        from store.tables import write_table

        write_table(items_table(item_ids), data.paths.items, schemas.ITEMS)
    change = {"kind": "update", "items_added": extra_items, "users_updated": len(users), "note": f"state {seed}"}
    name = publish_version(data.paths, data.run_id, item_ids, items, data.user_ids, users, change, **kw)
    return name, item_ids, items, users


def top(users, items, item_ids, user: int, k: int, exclude: set[int]):
    """Exact ranking by numpy (the ground truth), training items excluded."""
    scores = users[user].astype(np.float64) @ items.T.astype(np.float64)
    order = [int(item_ids[i]) for i in np.argsort(-scores, kind="stable") if int(item_ids[i]) not in exclude]
    return order[:k]


def test_readers_see_the_new_version(data):
    publish(data.paths, data.run_id)
    assert current_version(data.paths, data.run_id) == "0001"
    name, item_ids, items, users = publish_update(data, seed=5, extra_items=7)
    assert name == "0002" and current_version(data.paths, data.run_id) == "0002"
    got = recommend_for(data.paths, 4, 6)
    assert got.column("item_id").to_pylist() == top(users, items, item_ids, 4, 6, data.train[4])
    assert (answered_by(got), answered_version(got)) == ("run-a", "0002")
    # a new item (id 80..86, only in version 2) answers similar() and is found by it
    sim = similar_to(data.paths, 83, 5).column("item_id").to_pylist()
    want = top(items, items, item_ids, 83, 5, {83})
    assert sim == want
    # SQL: functions and the vector views come from the same version
    row = run_query(data.paths, "SELECT published_version() AS v, count(*) AS n FROM item_vectors").to_pylist()
    assert row == [{"v": "0002", "n": 87}]
    # an open reader keeps its version; the run's own files were never read by it
    assert load_index(data.paths, data.run_id).count == 87


def test_versions_list_counts_and_change_note(data):
    publish(data.paths, data.run_id)
    publish_update(data, seed=5, extra_items=7)
    rows = list_versions(data.paths, data.run_id)
    assert [(r["version"], r["current"], r["kind"], r["items"], r["users"]) for r in rows] == [
        ("0001", False, "train", 80, 30),
        ("0002", True, "update", 87, 30),
    ]
    assert (rows[1]["items_added"], rows[1]["users_updated"], rows[1]["from_version"], rows[1]["note"]) == (
        7,
        30,
        "0001",
        "state 5",
    )
    assert rows[0]["note"] == "published from runs/run-a" and rows[0]["from_version"] is None


def test_rollback_walks_back_then_refuses_at_the_first_version(data):
    publish(data.paths, data.run_id)
    publish_update(data, seed=5)
    publish_update(data, seed=6)
    assert rollback(data.paths, data.run_id) == "0002"
    assert rollback(data.paths, data.run_id) == "0001"  # a second rollback: one more step back
    want = top(data.users, data.items, data.item_ids, 2, 5, data.train[2])
    assert recommend_for(data.paths, 2, 5).column("item_id").to_pylist() == want
    with pytest.raises(ValueError, match="version 0001 is its first version, nothing to roll back to"):
        rollback(data.paths, data.run_id)
    assert current_version(data.paths, data.run_id) == "0001"  # a refused rollback changes nothing
    # a version published after a rollback replaces the one then served: rolling it back returns there
    name, *_ = publish_update(data, seed=7)
    assert name == "0004" and list_versions(data.paths, data.run_id)[-1]["from_version"] == "0001"
    assert rollback(data.paths, data.run_id) == "0001"


def test_rollback_does_not_make_another_run_the_default(data):
    from store_testdata import write_run

    publish(data.paths, data.run_id)
    write_run(data.paths, "run-b", data.user_ids, data.users, data.item_ids, data.items)
    publish(data.paths, "run-b")
    publish_update(data, seed=5)  # run-a is published last
    assert latest_run(data.paths) == "run-a"
    rollback(data.paths, data.run_id)
    assert latest_run(data.paths) == "run-a" and current_version(data.paths, "run-a") == "0001"


def test_prune_keeps_the_newest_and_never_the_current(data):
    publish(data.paths, data.run_id)
    for seed in (5, 6, 7):
        publish_update(data, seed=seed, keep=10)
    rollback(data.paths, data.run_id)
    rollback(data.paths, data.run_id)
    assert current_version(data.paths, data.run_id) == "0002"
    crashed = data.paths.index_dir(data.run_id) / "versions" / ".new-crashed"  # a publisher killed mid-write
    crashed.mkdir()
    assert prune(data.paths, data.run_id, keep=1) == ["0001", "0003"]
    assert version_names(data.paths, data.run_id) == ["0002", "0004"] and not crashed.exists()
    assert recommend_for(data.paths, 1, 3).num_rows == 3  # the current one still serves
    # publishing prunes with its own keep; the version it replaced goes when it is old enough
    publish_update(data, seed=8, keep=2)
    assert version_names(data.paths, data.run_id) == ["0004", "0005"]
    with pytest.raises(ValueError, match="which was pruned"):
        rollback(data.paths, data.run_id)  # 0005 replaced 0002, now gone
    with pytest.raises(ValueError, match="--keep must be an integer ≥ 1"):
        prune(data.paths, data.run_id, keep=0)
    # `anchorrec publish --keep N` (store.index.publish): the same rule
    assert publish(data.paths, data.run_id, keep=1)["version"] == "0006"
    assert version_names(data.paths, data.run_id) == ["0006"]


def test_concurrent_readers_never_see_a_mix(data):
    """Readers query while versions are published and rolled back: each answer is the whole answer of
    one version — never user vectors of one with the index or item views of another."""
    states = {}
    for seed in (11, 12):
        item_ids, items, users = other_vectors(data, seed)
        states[seed] = (item_ids, items, users)
    user, k = 3, 8
    answers = {seed: top(s[2], s[1], s[0], user, k, data.train[user]) for seed, s in states.items()}
    mixed = [top(states[a][2], states[b][1], states[b][0], user, k, data.train[user]) for a, b in ((11, 12), (12, 11))]
    assert answers[11] != answers[12] and not set(map(tuple, mixed)) & {tuple(a) for a in answers.values()}
    user_vectors = {seed: [round(float(x), 5) for x in s[2][user]] for seed, s in states.items()}

    def publish_state(seed):
        item_ids, items, users = states[seed]
        change = {"kind": "update", "note": f"state {seed}"}
        publish_version(data.paths, data.run_id, item_ids, items, data.user_ids, users, change, keep=100)

    publish_state(11)
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: list[tuple[str, str]] = []

    def writer():
        try:
            for turn in range(10):
                publish_state(12 if turn % 2 == 0 else 11)
                if turn % 3 == 2:
                    rollback(data.paths, data.run_id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            stop.set()

    def reader(kind: str):
        sql = (
            f"SELECT [x.item_id FOR x IN recommend({user}, {k})] AS r, "
            f"(SELECT vector FROM user_vectors WHERE user_id = {user}) AS u"
        )
        try:
            while not stop.is_set() or len([s for s in seen if s[0] == kind]) < 3:
                if kind == "sql":
                    row = run_query(data.paths, sql).to_pylist()[0]
                    got, vector = row["r"], [round(float(x), 5) for x in row["u"]]
                    seed = next((s for s, a in answers.items() if a == got), None)
                    assert seed is not None, f"answer of no version: {got}"
                    assert vector == user_vectors[seed], "user_vectors view of another version than recommend()"
                else:
                    table = recommend_for(data.paths, user, k)
                    got = table.column("item_id").to_pylist()
                    assert got in answers.values(), f"answer of no version: {got}"
                seen.append((kind, str(got)))
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(k,)) for k in ("sql", "fn")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[0]
    assert len(seen) >= 6 and len(version_names(data.paths, data.run_id)) == 11


READER = """
import json, sys, time
from pathlib import Path
from store import DatasetPaths
from store.sql import answered_version, recommend_for
paths, user, k, stop = DatasetPaths(Path(sys.argv[1])), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
print("ready", flush=True)
until = time.time() + 60
while not stop.exists() and time.time() < until:
    table = recommend_for(paths, user, k)
    print(json.dumps([answered_version(table), table.column("item_id").to_pylist()]), flush=True)
"""


def test_a_reader_process_never_sees_a_mix(data):
    """The same from another process (a server reading while `anchorrec update` publishes)."""
    import json
    import subprocess
    import sys
    import time

    from cli_helpers import REPO

    states = {seed: other_vectors(data, seed) for seed in (21, 22)}
    user, k = 5, 6
    answers = {seed: top(s[2], s[1], s[0], user, k, data.train[user]) for seed, s in states.items()}
    assert answers[21] != answers[22]

    def publish_state(seed):
        item_ids, items, users = states[seed]
        change = {"kind": "update", "note": f"state {seed}"}
        return publish_version(data.paths, data.run_id, item_ids, items, data.user_ids, users, change, keep=100)

    published = {publish_state(21): 21}
    stop = data.paths.root.parent / "stop"
    argv = [sys.executable, "-c", READER, str(data.paths.root), str(user), str(k), str(stop)]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    turn = 0
    while proc.poll() is None and turn < 12:
        seed = 22 if turn % 2 == 0 else 21
        published[publish_state(seed)] = seed
        if turn % 4 == 3:
            rollback(data.paths, data.run_id)
        turn += 1
        time.sleep(0.2)
    stop.touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    seen = [json.loads(line) for line in out.splitlines()]
    assert len(seen) >= 3 and len({v for v, _ in seen}) >= 2  # it read more than one version
    for version, got in seen:
        assert got == answers[published[version]], (version, got)


def test_damaged_file_in_the_current_version_is_refused_with_its_path(data, tmp_path):
    publish(data.paths, data.run_id)
    publish_update(data, seed=5)
    users_file = serving(data.paths, data.run_id).user_vectors
    raw = bytearray(users_file.read_bytes())
    raw[len(raw) // 3 : len(raw) // 3 + 16] = b"\x00" * 16  # flipped bytes inside a data page
    users_file.write_bytes(bytes(raw))
    with pytest.raises(StoreError) as info:
        recommend_for(data.paths, 2, 3)
    assert str(users_file) in str(info.value) and "\n" not in str(info.value)
    assert similar_to(data.paths, 2, 3).num_rows == 3  # similar() needs no user vectors
    env = user_env(tmp_path, tmp_path / "prefect")
    proc = run_cli(env, "recommend", "--dataset", "toys", "--user", "2")
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.startswith("error: ") and str(users_file) in err and "\n" not in err
    # the index file of the current version, cut short
    index_file = serving(data.paths, data.run_id).directory / INDEX_FILE
    index_file.write_bytes(index_file.read_bytes()[:100])
    proc = run_cli(env, "similar", "--dataset", "toys", "--item", "2")
    err = proc.stderr.strip()
    assert proc.returncode == 2 and str(index_file) in err and "sha256 differs" in err and "anchorrec rollback" in err
    # rolling back serves the intact version again
    proc = run_cli(env, "rollback", "--dataset", "toys")
    assert proc.returncode == 0, proc.stderr
    want = top(data.users, data.items, data.item_ids, 2, 3, data.train[2])
    assert recommend_for(data.paths, 2, 3).column("item_id").to_pylist() == want


def test_unversioned_index_of_an_older_home_still_reads(data, tmp_path):
    publish(data.paths, data.run_id)
    directory = data.paths.index_dir(data.run_id)
    for name in (INDEX_FILE, MANIFEST_FILE):  # the layout before versions
        shutil.copyfile(version_dir(data.paths, data.run_id, "0001") / name, directory / name)
    (directory / "CURRENT").unlink()
    shutil.rmtree(directory / "versions")
    want = top(data.users, data.items, data.item_ids, 5, 4, data.train[5])
    got = recommend_for(data.paths, 5, 4)
    assert got.column("item_id").to_pylist() == want and answered_version(got) is None
    env = user_env(tmp_path, tmp_path / "prefect")
    proc = run_cli(env, "versions", "--dataset", "toys")
    assert proc.returncode == 0 and "an index from before versions" in proc.stdout
    proc = run_cli(env, "rollback", "--dataset", "toys")
    assert proc.returncode == 2 and "has no index versions: nothing to roll back to" in proc.stderr
    # the next publish makes it version 0001 and removes the unversioned files
    assert publish(data.paths, data.run_id)["version"] == "0001"
    assert not (directory / INDEX_FILE).exists() and not (directory / MANIFEST_FILE).exists()
    assert recommend_for(data.paths, 5, 4).column("item_id").to_pylist() == want


def test_cli_versions_rollback_and_errors(data, tmp_path):
    publish(data.paths, data.run_id)
    _, item_ids, items, users = publish_update(data, seed=5, extra_items=4)
    env = user_env(tmp_path, tmp_path / "prefect")
    proc = run_cli(env, "versions", "--dataset", "toys")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "run run-a of toys:"
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if line.startswith("│ 0")]
    columns = ("version", "current", "kind", "items", "users", "items_added", "from_version", "note")
    header = [c.strip() for c in lines[2].split("│")[1:-1]]
    rows = [[row[header.index(c)] for c in columns] for row in cells]
    assert rows == [
        ["0001", "false", "train", "80", "30", "0", "NULL", "published from runs/run-a"],
        ["0002", "true", "update", "84", "30", "4", "0001", "state 5"],
    ]
    proc = run_cli(env, "recommend", "--dataset", "toys", "--user", "1", "-k", "3")
    assert proc.stdout.startswith("answered by run run-a version 0002 (")
    proc = run_cli(env, "runs", "--dataset", "toys")
    assert "0002" in next(line for line in proc.stdout.splitlines() if "run-a" in line)

    proc = run_cli(env, "rollback", "--dataset", "toys", "--run", "run-a")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("run run-a of toys: now serving version 0001 (was 0002): 80 items, 30 users")
    proc = run_cli(env, "recommend", "--dataset", "toys", "--user", "1", "-k", "3")
    assert proc.stdout.startswith("answered by run run-a version 0001 (")
    want = top(data.users, data.items, data.item_ids, 1, 3, data.train[1])
    assert recommend_for(data.paths, 1, 3).column("item_id").to_pylist() == want

    for args, message in (
        (("rollback", "--dataset", "toys"), "version 0001 is its first version, nothing to roll back to"),
        (("rollback", "--dataset", "toys", "--run", "nope"), "--run nope: dataset toys has no published run nope"),
        (("versions", "--dataset", "toys", "--run", "nope"), "published runs: run-a"),
        (("versions", "--dataset", "nosuch"), "dataset 'nosuch' not found"),
        (("publish", "--dataset", "toys", "--keep", "0"), "--keep must be ≥ 1, got 0"),
    ):
        proc = run_cli(env, *args)
        err = proc.stderr.strip()
        assert proc.returncode == 2 and err.startswith("error: ") and message in err and "\n" not in err, err
        assert "Traceback" not in proc.stderr
    assert current_version(data.paths, data.run_id) == "0001"
