"""One writer per dataset: a second writer waits (or with --no-wait refuses in one line), a killed
writer's lock is gone at once, and readers never wait."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cli_helpers import user_env
from store_testdata import make_dataset

from store import StoreError, dataset_paths
from store.lock import dataset_lock, holder, lock_path

REPO = Path(__file__).resolve().parents[1]

HOLD = """
import sys
from store.layout import DatasetPaths
from store.lock import dataset_lock
with dataset_lock(DatasetPaths(__import__("pathlib").Path(sys.argv[1])), "anchorrec pipeline"):
    print("held", flush=True)
    sys.stdin.readline()
"""


def start_holder(root: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(root)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_refuses_or_waits_naming_the_holder(home):
    paths = dataset_paths("toys")
    first = start_holder(paths.root)
    try:
        info = holder(lock_path(paths))
        assert (info["pid"], info["command"]) == (first.pid, "anchorrec pipeline") and info["since"] <= time.time()
        with pytest.raises(StoreError) as refused:
            with dataset_lock(paths, "anchorrec train", wait=False):
                pass
        message = str(refused.value)
        assert "\n" not in message and f"is being written by pid {first.pid} (anchorrec pipeline, since " in message
        assert "without --no-wait" in message

        said, took, named = [], threading.Event(), []

        def second() -> None:
            with dataset_lock(paths, "anchorrec train", say=said.append):
                took.set()
                named.append(holder(lock_path(paths))["command"])

        waiter = threading.Thread(target=second)
        waiter.start()
        assert not took.wait(1.5)  # still waiting for the first
        assert len(said) == 1 and said[0].startswith(f"waiting: dataset 'toys' is being written by pid {first.pid} ")
        first.stdin.write("\n")
        first.stdin.flush()
        assert took.wait(30)  # the first ended: the second goes on
        waiter.join()
        assert named == ["anchorrec train"]
        assert lock_path(paths).read_text() == ""  # released: no stale holder named
    finally:
        first.kill()
        first.wait()


def test_a_killed_writer_releases_the_lock_at_once(home):
    paths = dataset_paths("toys")
    first = start_holder(paths.root)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert json.loads(lock_path(paths).read_text())["pid"] == first.pid  # its description is left behind…
    with dataset_lock(paths, "anchorrec ingest", wait=False):  # …but not its lock
        assert holder(lock_path(paths))["pid"] == os.getpid()


def test_the_command_takes_it_once_nested_takes_and_its_threads_pass(home):
    """A flow inside a command, or a tuning thread, must not wait for its own command's lock."""
    paths = dataset_paths("new-dataset")
    assert not paths.root.exists()
    with dataset_lock(paths, "anchorrec leaderboard", wait=False):
        assert paths.root.is_dir()  # made before the lock: an ingest starts from nothing
        with dataset_lock(paths, "anchorrec train", wait=False):
            done = []

            def tuning_thread() -> None:
                with dataset_lock(paths, "anchorrec tune", wait=False):
                    done.append(True)

            t = threading.Thread(target=tuning_thread)
            t.start()
            t.join(10)
            assert done == [True]
        assert holder(lock_path(paths))["command"] == "anchorrec leaderboard"  # the outer take is the holder
    assert lock_path(paths).read_text() == ""


# ---------------------------------------------------------------- as a user meets it: the CLI
def test_writers_refuse_with_no_wait_and_readers_answer_while_the_lock_is_held(tmp_path):
    """Refused before Prefect or torch start: one `error:` line naming the holder, exit 2."""
    paths = make_dataset(tmp_path).paths
    first = start_holder(paths.root)
    env = {**os.environ, "COLUMNS": "160"}
    try:
        for command in (["train"], ["leaderboard"], ["ingest", "--release", "demo"]):
            t0 = time.monotonic()
            proc = run(anchorrec(*command, "--dataset", "toys", "--home", str(tmp_path), "--no-wait"), env, timeout=120)
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            assert proc.returncode == 2 and len(lines) == 1, (command, proc.stderr)
            assert lines[0].startswith("error: ") and f"pid {first.pid} (anchorrec pipeline, since" in lines[0]
            assert time.monotonic() - t0 < 60
        readers = (
            ["runs", "--dataset", "toys"],
            ["ls"],
            ["sql", "--dataset", "toys", "SELECT count(*) AS n FROM items"],
        )
        for reader in readers:
            proc = run(anchorrec(*reader, "--home", str(tmp_path)), env, timeout=120)
            assert proc.returncode == 0 and "error" not in proc.stderr, (reader, proc.stderr)
        assert "120" in proc.stdout  # the count of items, answered while the writer holds the dataset
    finally:
        first.kill()
        first.wait()


SMALL_INGEST = ["--demo-items", "100", "--demo-users", "140"]
SMALL = SMALL_INGEST + ["--pretrain-epochs", "2", "--image-workers", "4", "--epochs", "4", "--patience", "4"]


def anchorrec(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def run(args: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.2)


def holder_pid(paths) -> int | None:
    try:
        return json.loads(lock_path(paths).read_text() or "{}").get("pid")
    except (OSError, ValueError):
        return None


def stage_lines(stderr: str) -> dict[str, str]:
    shown = [line.split("\r")[-1] for line in stderr.split("\n")]
    names = ("ingest", "images", "features text", "features image", "pretrain", "train", "publish")
    return {line.split(":")[0]: line.split(":", 1)[1].strip() for line in shown if line.split(":")[0] in names}


@pytest.mark.slow
def test_two_pipelines_do_the_work_once_readers_never_wait_and_a_kill_releases(tmp_path):
    env = user_env(tmp_path / "home", tmp_path / "prefect", COLUMNS="160")
    paths = dataset_paths("demo", env["ANCHORREC_HOME"])
    assert run(anchorrec("ingest", *SMALL_INGEST), env).returncode == 0

    first = subprocess.Popen(
        anchorrec("pipeline", *SMALL), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    second_err = tmp_path / "second.err"
    second = None
    try:
        wait_for(lambda: holder_pid(paths) == first.pid, first, "lock taken by the first pipeline")
        first.send_signal(signal.SIGSTOP)  # it holds the lock for as long as the checks below take
        refused = run(anchorrec("ingest", *SMALL_INGEST, "--no-wait"), env)
        assert refused.returncode == 2
        err = [line for line in refused.stderr.splitlines() if line.strip()]
        assert (
            len(err) == 1 and err[0].startswith("error: ") and f"pid {first.pid} (anchorrec pipeline, since" in err[0]
        )

        t0 = time.monotonic()
        reader = run(anchorrec("sql", "SELECT count(*) AS n FROM items"), env, timeout=120)
        assert reader.returncode == 0 and "100" in reader.stdout, reader.stderr
        assert time.monotonic() - t0 < 60

        with second_err.open("w") as fh:
            second = subprocess.Popen(
                anchorrec("pipeline", *SMALL), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=fh, text=True
            )
        wait_for(lambda: "waiting: dataset 'demo'" in second_err.read_text(), second, "waiting line")
        waiting = [line for line in second_err.read_text().splitlines() if line.startswith("waiting:")]
        assert len(waiting) == 1 and f"pid {first.pid} (anchorrec pipeline, since" in waiting[0]
        first.send_signal(signal.SIGCONT)
        out, err1 = first.communicate(timeout=600)
        assert first.returncode == 0, err1[-3000:]
        second.communicate(timeout=600)
        assert second.returncode == 0, second_err.read_text()[-3000:]
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()
    did, found = stage_lines(err1), stage_lines(second_err.read_text())
    assert set(did) == set(found) >= {"ingest", "features text", "pretrain", "train", "publish"}
    assert did["ingest"] == "cached" and all(
        did[s] != "cached" for s in ("features text", "pretrain", "train", "publish")
    )
    assert set(found.values()) == {"cached"}  # the second found every stage done: the work was done once
    assert len([d for d in paths.runs_dir.iterdir() if d.name.startswith("anchorrec-")]) == 1

    before = set(paths.runs_dir.iterdir())
    killed = subprocess.Popen(
        anchorrec("train", *SMALL[4:], "--seed", "1"),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: holder_pid(paths) == killed.pid, killed, "lock taken by the train command")
        wait_for(lambda: set(paths.runs_dir.iterdir()) - before, killed, "a new run (seed 1) under way")
        os.kill(killed.pid, signal.SIGKILL)  # the holder only: a child still holding the lock would show here
        killed.wait(timeout=30)
        after = run(anchorrec("ingest", *SMALL_INGEST, "--no-wait"), env)
        assert after.returncode == 0, after.stderr[-2000:]
        assert stage_lines(after.stderr)["ingest"] == "cached"
    finally:
        try:
            os.killpg(killed.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
