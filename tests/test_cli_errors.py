"""Errors raised inside a stage reach the user as one `error:` line: no traceback, no Prefect ERROR line.

Each case runs the real command as a subprocess on a real failure (a file, a dataset, a bug
injected through a sitecustomize on PYTHONPATH) and counts the lines on stderr.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_helpers import run_cli, user_env

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

DEMO = ["--demo-items", "60", "--demo-users", "80"]

# Replaces MODULE.NAME (from $ANCHORREC_TEST_BREAK="module:name") with a function that raises, once
# the module has finished importing: a bug deep in a stage, without editing the code.
BREAK = """
import builtins, os, sys
_module, _name = os.environ["ANCHORREC_TEST_BREAK"].split(":")
_real = builtins.__import__
def _import(name, *args, **kwargs):
    mod = _real(name, *args, **kwargs)
    m = sys.modules.get(_module)
    if m is not None and not getattr(m.__spec__, "_initializing", False) and not getattr(m, "_broken", False):
        def broken(*a, **k):
            raise ZeroDivisionError("injected bug")
        setattr(m, _name, broken)
        m._broken = True
    return mod
builtins.__import__ = _import
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """A user's shell with no Prefect server configured: the commands share one in PREFECT_HOME."""
    root = tmp_path_factory.mktemp("errors")
    return user_env(root / "home", root / "prefect", ANCHORREC_SERVER_GRACE_S="20")


def anchorrec(env: dict, *args: str) -> subprocess.CompletedProcess:
    return run_cli(env, *args)


def assert_one_error_line(proc: subprocess.CompletedProcess, expected: str, code: int = 2) -> str:
    """Exactly one `error:` line, containing `expected`, and nothing Prefect or Python would add."""
    lines = [line.split("\r")[-1] for line in proc.stderr.splitlines()]  # a progress bar's last redraw
    errors = [line for line in lines if "error:" in line]
    assert proc.returncode == code, proc.stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith("error: "), proc.stderr[-3000:]
    assert expected in errors[0], errors[0]
    noisy = [line for line in (proc.stdout + proc.stderr).splitlines() if "Traceback" in line or "ERROR" in line]
    assert noisy == [], noisy
    return errors[0]


@pytest.fixture(scope="module")
def demo(env) -> Path:
    """A small generated dataset, ingested once by the CLI."""
    proc = anchorrec(env, "ingest", *DEMO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(env["ANCHORREC_HOME"]) / "demo"


def copy_home(demo: Path, tmp_path: Path, keep: tuple[str, ...]) -> Path:
    """A home with a copy of the demo dataset's `keep` files: each test breaks its own copy."""
    home = tmp_path / "home"
    (home / "demo").mkdir(parents=True)
    for name in keep:
        src = demo / name
        if not src.exists():
            continue
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, home / "demo" / name)
    return home


def write_jsonl_gz(path: Path, rows: list[dict]) -> Path:
    with gzip.open(path, "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def test_metadata_that_matches_no_item_is_one_line(env, tmp_path, shared_data) -> None:
    reviews = shared_data / "amazon2018-giftcards" / "Gift_Cards_5.json.gz"
    meta = write_jsonl_gz(tmp_path / "meta_Other.json.gz", [{"asin": f"Z{i:09d}", "title": "x"} for i in range(50)])
    proc = anchorrec(
        env, "ingest", "--release", "2018", "--meta", str(meta), "--reviews", str(reviews), "--dataset", "nometa"
    )
    line = assert_one_error_line(proc, "meta_Other.json.gz matched metadata for 0 of")
    assert "--allow-missing-meta" in line


def test_malformed_review_file_is_one_line(env, tmp_path) -> None:
    meta = write_jsonl_gz(tmp_path / "meta.json.gz", [{"asin": "A1", "title": "x"}])
    reviews = tmp_path / "reviews.json"
    reviews.write_text('this is not json\n{"broken": \n')
    proc = anchorrec(
        env, "ingest", "--release", "2018", "--meta", str(meta), "--reviews", str(reviews), "--dataset", "malformed"
    )
    line = assert_one_error_line(proc, "no usable reviews were read")
    assert re.search(r"2 line\(s\) rejected: \{'malformed line \(not JSON\)': 2\}", line), line


def test_training_stage_refusing_a_changed_input_is_one_line(env, demo, tmp_path) -> None:
    home = copy_home(
        demo, tmp_path, ("items.parquet", "users.parquet", "interactions.parquet", "prepare.json", "records")
    )
    cut = home / "demo" / "interactions.parquet"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    proc = anchorrec(
        {**env, "ANCHORREC_HOME": str(home)},
        "train",
        "--model",
        "lightgcn",
        "--image-encoder",
        "none",
        "--pretrain-epochs",
        "0",
        "--epochs",
        "2",
    )
    line = assert_one_error_line(proc, f"{cut}:")
    assert line.endswith("rerun: anchorrec ingest --dataset demo"), line
    assert "features text:" in proc.stderr  # the error came from the train stage, after the stages before it


def test_a_bug_inside_a_stage_is_one_line_and_a_log_with_the_traceback(env, demo, tmp_path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BREAK)
    home = copy_home(demo, tmp_path, ("items.parquet", "users.parquet", "interactions.parquet", "records"))
    bug_env = {
        **env,
        "ANCHORREC_HOME": str(home),
        "PYTHONPATH": str(site),
        "ANCHORREC_TEST_BREAK": "features.extract:extract",
    }
    proc = anchorrec(bug_env, "features", "--image-encoder", "none")
    line = assert_one_error_line(proc, "internal error (ZeroDivisionError: injected bug)", code=1)
    log = Path(line.rsplit(" ", 1)[-1])
    assert log.parent == home / "logs" and log.is_file(), line
    text = log.read_text()
    assert text.startswith("anchorrec features --image-encoder none\n")
    assert "Traceback (most recent call last)" in text and 'raise ZeroDivisionError("injected bug")' in text
    assert "in extract_task" in text  # the stage's frame: the log holds the whole traceback, not just ours


def test_features_ends_with_one_line_per_feature_table(env, demo) -> None:
    proc = anchorrec(env, "features")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert "{}" not in proc.stdout
    assert lines == [
        f"text feature text-minilm: vectors for 60 of 60 items ({demo / 'features' / 'text-minilm.parquet'})",
        *[line for line in lines if line.startswith("image feature image-effnet: vectors for ")],
    ], proc.stdout
    assert len(lines) == 2 and re.fullmatch(r"image feature image-effnet: vectors for \d+ of 60 items \(.*\)", lines[1])


def test_pretrain_prints_the_held_out_retrieval_it_measured(env, demo) -> None:
    proc = anchorrec(env, "pretrain", "--pretrain-epochs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next(iter((demo / "runs").glob("ica-*")))
    metrics = json.loads((run / "metrics.json").read_text())
    final, chance = metrics["final"], metrics["baselines"]["chance"]["retrieval/mean_recall@10"]
    expected = (
        f"held-out retrieval on {metrics['n_holdout_items']} items (epoch {metrics['best_epoch']} of "
        f"{metrics['epochs_run']}): image→text R@10 {final['retrieval/i2t_recall@10']:.3f}, "
        f"text→image R@10 {final['retrieval/t2i_recall@10']:.3f} (chance {chance:.3f})"
    )
    assert expected in proc.stdout.splitlines(), proc.stdout
    assert f"mm={run.name}" in proc.stdout and f"all metrics: {run / 'metrics.json'}" in proc.stdout
