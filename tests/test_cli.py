"""The command line explains itself: help on every option, bad input refused at once in one line."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import cli
import pipeline_config
from models.registry import MODELS

REPO = Path(__file__).resolve().parents[1]
GIFT = REPO.parent / "shared" / "data" / "amazon2018-giftcards"


def run_cli(*args: str, env: dict | None = None, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "cli", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )
    return proc, time.perf_counter() - t0


def test_every_option_of_every_command_has_help() -> None:
    import typer

    group = typer.main.get_command(cli.app)
    assert set(group.commands) >= {
        "ingest",
        "features",
        "pretrain",
        "train",
        "publish",
        "pipeline",
        "serve",
        "sql",
        "recommend",
        "similar",
        "report",
        "ls",
        "runs",
    }
    missing = [
        f"{name} {param.name}"
        for name, command in group.commands.items()
        for param in command.params
        if param.name != "help" and not (getattr(param, "help", None) or "").strip()
    ]
    assert not missing, f"options without help: {missing}"
    assert all((c.help or "").strip() for c in group.commands.values())


def test_each_command_shows_only_the_options_it_uses() -> None:
    import typer

    group = typer.main.get_command(cli.app)
    options = {name: {p.name for p in c.params} for name, c in group.commands.items()}
    assert "epochs" not in options["ingest"] and "text_encoder" not in options["ingest"]
    assert "release" not in options["train"] and "meta" not in options["features"]
    assert {"epochs", "model", "text_encoder", "release"} <= options["pipeline"]
    assert {"cron", "name", "epochs"} <= options["serve"]


def test_model_choices_are_the_registry() -> None:
    assert set(pipeline_config.MODELS) == set(MODELS)


BAD = [
    (["pipeline", "--model", "foo"], "'foo' is not one of"),
    (["pipeline", "--text-encoder", "foo"], "--text-encoder: unknown encoder spec 'foo'"),
    (["pipeline", "--image-encoder", "minilm"], "--image-encoder minilm: that is a text encoder"),
    (["pipeline", "--demo-items", "0"], "--demo-items must be ≥ 1"),
    (["pipeline", "--lr", "3"], "--lr must be in (0, 1)"),
    (["pipeline", "--device", "foo"], "--device foo: use cpu, cuda, cuda:N or mps"),
    (["pipeline", "--device", "cuda:7"], "--device cuda:7: this machine has"),
    (["pipeline", "--release", "2018"], "--release 2018 needs --category"),
    (["pipeline", "--release", "2018", "--category", "Nope"], "Nope"),
    (
        ["pipeline", "--release", "2018", "--meta", "/no/such/meta.json.gz", "--reviews", "/no/such.json.gz"],
        "--meta /no/such/meta.json.gz: does not exist",
    ),
    (
        ["ingest", "--release", "2018", "--meta", "/dev/zero", "--reviews", "/dev/null"],
        "--meta /dev/zero: is a character device, not a regular file",
    ),
    (["ingest", "--release", "2018", "--meta", "/tmp", "--reviews", "/dev/null"], "--meta /tmp: is a directory"),
    (["nosuchcmd"], "no such command 'nosuchcmd'; commands: features, ingest, "),
    (["ingest", "--bogus"], "(see: anchorrec ingest --help)"),
    (["pipeline", "--release", "mmrec"], "--release mmrec needs --source"),
    (["pipeline", "--release", "csv"], "--release csv needs --reviews"),
    (["pipeline", "--images", "/no/such/folder"], "--images /no/such/folder: no such file or directory"),
    (["pipeline", "--dataset", "../up"], "invalid dataset name"),
    (["ingest", "--epochs", "3"], "No such option: --epochs"),
    (["train", "--dataset", "nosuch"], "create it first: anchorrec ingest --dataset nosuch"),
    (["similar", "--item", "3", "--asin", "B0001"], "exactly one of --item ITEM_ID or --asin ASIN"),
    (["sql", "SELECT 1", "--dataset", "nosuch"], "nosuch"),
    (["serve"], "PREFECT_API_URL is not set"),
    (["serve", "--cron", "every day"], "is not a cron expression"),
]


HEAVY = ("torch", "prefect", "faiss", "transformers", "open_clip")
# Runs the CLI as `python -m cli` does and, at exit, writes which heavy libraries got imported: a
# refusal must come before them (wall time is no test of that on a loaded machine).
WATCH = (
    "import atexit, runpy, sys\n"
    "out, sys.argv = sys.argv[1], ['cli'] + sys.argv[2:]\n"
    f"atexit.register(lambda: open(out, 'w').write(' '.join(m for m in {HEAVY!r} if m in sys.modules)))\n"
    "runpy.run_module('cli', run_name='__main__', alter_sys=True)\n"
)


@pytest.mark.parametrize("args,expected", BAD, ids=[" ".join(a)[:40] for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_before_heavy_imports(args, expected, tmp_path, monkeypatch) -> None:
    env = {**__import__("os").environ, "ANCHORREC_HOME": str(tmp_path)}
    env.pop("PREFECT_API_URL", None)
    imported = tmp_path / "imported.txt"
    proc = subprocess.run(
        [sys.executable, "-c", WATCH, str(imported), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert expected in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert imported.read_text() == "", f"{args} imported {imported.read_text()} before refusing"


def test_wrong_files_are_refused_before_any_work(tmp_path) -> None:
    random_bytes = tmp_path / "reviews.json"
    random_bytes.write_bytes(bytes(range(256)) * 40)
    broken_gzip = tmp_path / "reviews.json.gz"
    broken_gzip.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 8)
    meta = GIFT / "meta_Gift_Cards.json.gz"
    if not meta.exists():
        pytest.skip("../shared/data is absent")
    for bad, expected in ((random_bytes, "binary data"), (broken_gzip, "does not decompress")):
        proc, seconds = run_cli(
            "ingest", "--release", "2018", "--meta", str(meta), "--reviews", str(bad), "--home", str(tmp_path / "home")
        )
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert expected in proc.stderr and seconds < 3
    assert not (tmp_path / "home").exists()  # nothing was started


def test_show_says_how_many_rows_there_are() -> None:
    import pyarrow as pa

    text = cli.show(pa.table({"a": list(range(300))}), 45)
    assert "│    44 │" in text and "│    45 │" not in text
    assert text.splitlines()[-1] == "300 rows in all, first 45 shown: use --max-rows 300 or --output FILE.csv"
    assert "rows in all" not in cli.show(pa.table({"a": [1, 2]}), 45)
