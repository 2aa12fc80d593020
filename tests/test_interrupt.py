"""Ctrl-C / SIGTERM during feature extraction: out in seconds, the encoded rows kept, the rerun
encodes only the rest and writes the same bytes as a run that was never interrupted."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cli_helpers import user_env

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

N_ITEMS = 160
FEATURES = ["features", "--image-encoder", "none", "--batch-size", "8"]
TABLE = Path("demo") / "features" / "text-minilm.parquet"
BAR = re.compile(r"extract text-minilm:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)")


def anchorrec(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> tuple[Path, dict]:
    """A demo catalog of N_ITEMS items, ingested once; each test works on its own copy of the home."""
    root = tmp_path_factory.mktemp("interrupt")
    env = user_env(root / "home", root / "prefect", TQDM_MININTERVAL="0")
    proc = subprocess.run(
        anchorrec("ingest", "--demo-items", str(N_ITEMS), "--demo-users", "60"),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "home", env


def copy_home(ingested: tuple[Path, dict], name: str) -> dict:
    home, env = ingested
    shutil.copytree(home, home.parent / name)
    return {**env, "ANCHORREC_HOME": str(home.parent / name)}


@pytest.fixture(scope="module")
def uninterrupted(ingested) -> bytes:
    env = copy_home(ingested, "whole")
    proc = subprocess.run(anchorrec(*FEATURES), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"({N_ITEMS} encoded, 0 resumed)" in proc.stderr
    return (Path(env["ANCHORREC_HOME"]) / TABLE).read_bytes()


def interrupt_at_three_quarters(env: dict, sig: int) -> tuple[int, int, float, str]:
    """Start `features`, signal its whole process group (as a terminal's Ctrl-C does, the Prefect
    server included) once the bar shows 75 %; → (exit code, items shown done, seconds to exit, stderr)."""
    proc = subprocess.Popen(
        anchorrec(*FEATURES),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    err = bytearray()
    reader = threading.Thread(
        target=lambda: [err.extend(chunk) for chunk in iter(lambda: os.read(proc.stderr.fileno(), 4096), b"")]
    )
    reader.start()
    deadline = time.monotonic() + 600
    seen = 0
    while seen < 0.75 * N_ITEMS:
        assert proc.poll() is None, err.decode()[-3000:]
        assert time.monotonic() < deadline, "extraction did not reach 75 %"
        shown = BAR.findall(err.decode(errors="replace"))
        seen = int(shown[-1][0]) if shown else 0
        time.sleep(0.02)
    t0 = time.monotonic()
    os.killpg(proc.pid, sig)
    code = proc.wait(timeout=60)
    took = time.monotonic() - t0
    reader.join(10)
    return code, seen, took, err.decode(errors="replace")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stopped_extraction_keeps_its_rows_and_the_rerun_encodes_only_the_rest(ingested, uninterrupted, sig, code):
    env = copy_home(ingested, f"stopped-{sig.name}")
    got, seen, took, err = interrupt_at_three_quarters(env, sig)
    assert got == code, err[-3000:]
    assert took < 10, f"took {took:.1f} s to stop"
    lines = [line for line in err.split("\n") if "stopped" in line]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    kept = int(
        re.fullmatch(
            rf"stopped \({sig.name}\): (\d+) encoded items kept; run the same command again to resume "
            r"\(it encodes only the rest\)",
            lines[0],
        ).group(1)
    )
    assert seen <= kept < N_ITEMS  # everything the bar showed done, and not a row more than there is
    print(f"{sig.name}: bar at {seen}/{N_ITEMS}, {kept} kept, exit {got} after {took:.2f} s")  # shown with -s
    home = Path(env["ANCHORREC_HOME"])
    assert not (home / TABLE).exists()

    again = subprocess.run(anchorrec(*FEATURES), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"({N_ITEMS - kept} encoded, {kept} resumed)" in again.stderr, again.stderr[-3000:]
    assert (home / TABLE).read_bytes() == uninterrupted
    assert not (home / "demo" / "features" / ".text-minilm.partial").exists()


def test_features_with_tokens_pass_each_photo_through_the_backbone_once(ingested):
    """The `features image` stage fills the image tokens as it goes: `tokens image` encodes nothing."""
    env = copy_home(ingested, "tokens")
    proc = subprocess.run(
        anchorrec("features", "--tokens", "--batch-size", "32"),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = {line.split(":")[0]: line for line in proc.stderr.replace("\r", "\n").split("\n") if ": " in line}
    photos = int(
        re.search(r"vectors for (\d+) of 160 items \((\d+) encoded, 0 resumed\)", lines["features image"]).group(2)
    )
    assert photos > 100, lines["features image"]
    assert re.search(rf"tokens for {photos} of 160 items, .* \(0 encoded\)", lines["tokens image"]), lines
    assert re.search(r"tokens for 160 of 160 items, .* \(160 encoded\)", lines["tokens text"]), (
        lines
    )  # text: its own pass
