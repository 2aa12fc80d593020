"""One Prefect API server per PREFECT_HOME, shared by the anchorrec commands that use it.

Prefect's ephemeral mode starts a server per command (5–40 s before the first stage runs) and
leaves it listening when the command is killed with SIGKILL. Here the first command that needs
an API starts one in its own session, detached from the command, and records its URL in
`PREFECT_HOME/anchorrec-server.json`; later commands check that file and /health and reuse it.
Starters serialise on an fcntl lock, so concurrent commands start one server, not two on one
SQLite file. Every command holds a shared flock on a lease file for its whole life; the kernel
drops it however the command ends, and the server exits a grace period after no lease is held
(ANCHORREC_SERVER_GRACE_S, default 45 s). With PREFECT_API_URL set nothing is started: that
server is used. ANCHORREC_SERVER=per-command restores Prefect's own server per command.

Run as a script (`python prefect_server.py HOME NONCE`) it is the server.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

STATE = "anchorrec-server.json"
START_LOCK = "anchorrec-server.lock"
LEASE = "anchorrec-server.lease"
LOG = "anchorrec-server.log"
DEFAULT_GRACE_S = 45.0

_lease_fd: int | None = None  # held open for the life of the process: the kernel releases it at exit


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()


def grace_seconds() -> float:
    """How long the server outlives the last command (checked by the command, used by the server)."""
    raw = os.environ.get("ANCHORREC_SERVER_GRACE_S", str(DEFAULT_GRACE_S))
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(
            f"ANCHORREC_SERVER_GRACE_S={raw}: give the seconds the Prefect server outlives the last "
            f"command, e.g. {DEFAULT_GRACE_S:g}"
        )
    return value


def configured_api_url() -> str | None:
    """PREFECT_API_URL from the environment or the active Prefect profile, read without importing
    Prefect (2 s): a refusal must come in well under 3 s."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml")).expanduser()
    if not profiles.is_file():
        return None
    data = tomllib.loads(profiles.read_text())
    active = os.environ.get("PREFECT_PROFILE") or data.get("active", "ephemeral")
    return (data.get("profiles", {}).get(active) or {}).get("PREFECT_API_URL")


def shared_server_wanted() -> bool:
    """No API configured by the user (environment or profile) and the shared mode not turned off."""
    if os.environ.get("ANCHORREC_SERVER", "shared") == "per-command" or configured_api_url():
        return False
    if "prefect.settings" in sys.modules:  # Prefect already loaded (a test harness): its settings decide
        from prefect.settings import get_current_settings

        return not get_current_settings().api.url
    return True


# --------------------------------------------------------------------------- the command's side
def ensure_api() -> str | None:
    """Point this process (before Prefect is imported) at the home's shared server; start it if needed.

    Returns the URL, or None when the user's own configuration applies.
    """
    if not shared_server_wanted():
        return None
    grace_seconds()  # a bad value is the user's one-line error here, not a server that cannot stay up
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home / START_LOCK):
        hold_lease(home)  # before the check: a server never exits while a lease is held
        url = running_url(home) or _start(home)
    os.environ["PREFECT_API_URL"] = url
    return url


def hold_lease(home: Path) -> None:
    global _lease_fd
    if _lease_fd is None:
        fd = os.open(home / LEASE, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        _lease_fd = fd


@contextmanager
def _locked(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def read_state(home: Path) -> dict[str, Any]:
    try:
        return json.loads((home / STATE).read_text())
    except (OSError, ValueError):
        return {}


def running_url(home: Path) -> str | None:
    """The recorded server's API URL when its process lives and answers /health."""
    state = read_state(home)
    if not state.get("ready") or not _alive(int(state.get("pid", 0))):
        return None
    return state["url"] if healthy(state["url"]) else None


def healthy(url: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start(home: Path) -> str:
    """Start the server detached (it forks away, so it is nobody's child) and wait until it answers."""
    nonce = f"{os.getpid()}-{time.time_ns()}"
    (home / STATE).unlink(missing_ok=True)
    with open(home / LOG, "ab") as log:
        launcher = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), str(home), nonce],
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    launcher.wait()
    deadline = time.monotonic() + float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 120))
    while time.monotonic() < deadline:
        state = read_state(home)
        if state.get("nonce") == nonce:
            if state.get("ready") and healthy(state["url"]):
                return state["url"]
            if not _alive(int(state["pid"])):
                break
        time.sleep(0.1)
    raise RuntimeError(f"the Prefect API server did not start; its log is {home / LOG}")


# --------------------------------------------------------------------------- the server's side
def _write_state(home: Path, state: dict[str, Any]) -> None:
    tmp = home / f"{STATE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(state))
    tmp.replace(home / STATE)


def _no_lease(home: Path) -> bool:
    """No command holds a lease; also when the home is gone (a deleted test or temp home): then no
    command can find this server again, and one that holds a lease on the deleted file has its URL."""
    try:
        fd = os.open(home / LEASE, os.O_RDWR)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops the lock taken just to test
    return True


def _watchdog(server: Any, home: Path, state: dict[str, Any]) -> None:
    """Record the URL once serving; exit a grace period after the last lease is gone."""
    while not server.started:
        time.sleep(0.05)
    _write_state(home, {**state, "ready": True})
    grace, idle_since = grace_seconds(), None
    while True:
        time.sleep(min(1.0, grace / 4))
        if not _no_lease(home):
            idle_since = None
            continue
        idle_since = idle_since or time.monotonic()
        if time.monotonic() - idle_since < grace:
            continue
        try:
            lock = os.open(home / START_LOCK, os.O_RDWR)
        except OSError:  # the home is gone
            return _exit(server)
        fcntl.flock(lock, fcntl.LOCK_EX)  # kept until this process ends: no one starts or reuses meanwhile
        if _no_lease(home):
            if read_state(home).get("nonce") == state["nonce"]:
                (home / STATE).unlink(missing_ok=True)
            return _exit(server)
        os.close(lock)
        idle_since = None


def _guarded_watchdog(server: Any, home: Path, state: dict[str, Any]) -> None:
    """A server without its watchdog would never exit: any failure in it ends the server."""
    try:
        _watchdog(server, home, state)
    except BaseException as exc:  # noqa: BLE001 - logged to anchorrec-server.log, then exit
        print(f"watchdog failed ({type(exc).__name__}: {exc}); stopping the server", file=sys.stderr, flush=True)
        _exit(server)


def _exit(server: Any) -> None:
    server.should_exit = True
    timer = threading.Timer(15, os._exit, (0,))  # a stuck shutdown must not keep the lock
    timer.daemon = True  # nor a clean one wait for the timer
    timer.start()


def serve(home: Path, nonce: str) -> None:
    """The server process: uvicorn with Prefect's app on a port of its own choosing, plus the watchdog."""
    if os.fork():  # the launcher returns at once; the server is reparented, in its own session
        os._exit(0)
    import socket

    os.environ.pop("PREFECT_API_URL", None)
    os.environ.update(PREFECT_UI_ENABLED="0", PREFECT__SERVER_EPHEMERAL="1", PREFECT__SERVER_FINAL="1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    state = {"pid": os.getpid(), "port": port, "url": f"http://127.0.0.1:{port}/api", "nonce": nonce, "ready": False}
    _write_state(home, state)
    import uvicorn

    config = uvicorn.Config(
        "prefect.server.api.server:create_app",
        factory=True,
        lifespan="on",
        log_level="error",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    threading.Thread(target=_guarded_watchdog, args=(server, home, state), daemon=True).start()
    server.run(sockets=[sock])


if __name__ == "__main__":
    serve(Path(sys.argv[1]), sys.argv[2])
