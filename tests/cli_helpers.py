"""The shell a CLI test runs `anchorrec` in, as a user's would be: no Prefect server configured (the
command starts or reuses its own), a home and a PREFECT_HOME of the test's own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def user_env(home: Path | str, prefect: Path | str, **extra: str) -> dict[str, str]:
    """os.environ without PREFECT_* (the test harness's server), with this home; `extra` wins."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"ANCHORREC_HOME": str(home), "PREFECT_HOME": str(prefect), "COLUMNS": "200", **extra})
    return env


def anchorrec_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def run_cli(env: dict[str, str], *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`anchorrec ARGS` as a subprocess in the repository, its output captured as text."""
    return subprocess.run(anchorrec_argv(*args), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
