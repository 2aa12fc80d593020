"""Shared fixtures. Keep this file small: room-specific fixtures live beside their tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Tests never touch a hub or a user's Prefect profile.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # `make test` runs a worker per core: share the cores, no spinning
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))
    os.environ.setdefault("MKL_NUM_THREADS", str(_share))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout (real Amazon/MMRec files); skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not found: integration data lives in ../shared/data")
    return SHARED_DATA


@pytest.fixture()
def one_torch_thread():
    """Tiny tensors: thread start-up and OpenMP spinning cost more than the math (10–100× on a busy
    2-core box). Test modules of small models opt in with `pytestmark`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh $ANCHORREC_HOME per test."""
    root = tmp_path / "home"
    root.mkdir()
    monkeypatch.setenv("ANCHORREC_HOME", str(root))
    return root


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory):
    """One ephemeral Prefect API for the whole session, with a throwaway PREFECT_HOME.

    Starting it costs 10–20 s, so only tests that run flows request it.
    """
    prefect_home = tmp_path_factory.mktemp("prefect_home")
    os.environ["PREFECT_HOME"] = str(prefect_home)
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(prefect_home / "storage")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield prefect_home


# --- network fixtures (tests/httpserver.py): a real local HTTP server that can fail on purpose ---
import sys  # noqa: E402

if str(Path(__file__).parent) not in sys.path:  # importable whatever pytest's import mode
    sys.path.insert(0, str(Path(__file__).parent))
from httpserver import FaultyHTTPServer  # noqa: E402


@pytest.fixture()
def http_server():
    """A threaded HTTP server on 127.0.0.1 with Range support and injectable faults.

    `.serve(dir)`, `.url_for(relpath)`, `.fault(path, kind, times, **kw)`, `.requests`; it stops
    by itself at teardown.
    """
    server = FaultyHTTPServer()
    try:
        yield server
    finally:
        server.close()
