"""Why a request failed, in one word, and which hosts are dead for the rest of a run.

Real Amazon dumps point at image hosts that a given machine often cannot reach at all (no DNS,
a firewall that refuses). Retrying such a host for every one of its thousands of URLs costs
minutes and floods the console, and the answer never changes within a run: a name that does not
resolve now will not resolve in a second. So failures are classified (`classify`), and a host
whose name fails to resolve or that refuses connections `down_after` times in a row is marked
down; its remaining URLs fail at once, without touching the network (`HostBoard.attempt`).
"""

from __future__ import annotations

import errno
import socket
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import requests
import urllib3

T = TypeVar("T")

DEAD_HOST_KINDS = frozenset({"dns", "refused"})
"""Failures that say the host cannot be reached at all: never retried, counted towards 'down'."""


def classify(exc: BaseException) -> str:
    """'dns', 'refused', 'timeout' or 'error' for an exception raised by requests/urllib3/socket.

    requests wraps urllib3's errors, which wrap socket's, so the whole chain is inspected; name
    resolution is checked first because urllib3's NameResolutionError is also a connection error.
    """
    chain = _chain(exc)
    if any(isinstance(e, (urllib3.exceptions.NameResolutionError, socket.gaierror)) for e in chain):
        return "dns"
    if any(isinstance(e, ConnectionRefusedError) or getattr(e, "errno", None) == errno.ECONNREFUSED for e in chain):
        return "refused"
    if any(
        isinstance(e, (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError, socket.timeout))
        and not isinstance(e, urllib3.exceptions.NewConnectionError)
        for e in chain
    ):
        return "timeout"
    return "error"


def _chain(exc: BaseException) -> list[BaseException]:
    """exc and everything it wraps (cause, context, urllib3's `reason`, requests' first arg)."""
    seen: list[BaseException] = []
    todo: list[object] = [exc]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None), *(e.args[:1] if e.args else ())]
    return seen


def host_of(url: str) -> str:
    """The part of a URL whose reachability is shared: host[:port], lower-cased."""
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    return f"{host}:{parts.port}" if parts.port else host


class HostDown(Exception):
    """The host was marked down earlier in this run; nothing was sent."""

    def __init__(self, host: str, failures: int, first_error: str) -> None:
        self.host = host
        super().__init__(f"host {host} marked down after {failures} failures in a row (first: {first_error})")


@dataclass
class _Host:
    probe: threading.Lock = field(default_factory=threading.Lock)
    proven: bool = False  # some request got past connecting (or failed in a way that is not 'dead')
    streak: int = 0
    first_error: str | None = None
    down: bool = False


class HostBoard:
    """Per-host health shared by the fetching threads of one run.

    Until a host has answered once, its requests go one at a time: otherwise `workers` threads
    would all hit a dead host together and the number of real attempts (and of rows saying 'dns'
    rather than 'host_down') would depend on thread timing. Once it has answered, requests run
    in parallel. `down_after=0` never marks a host down.
    """

    def __init__(self, down_after: int = 3) -> None:
        if down_after < 0:
            raise ValueError(f"host_down_after must be >= 0, got {down_after}")
        self.down_after = down_after
        self._hosts: dict[str, _Host] = {}
        self._lock = threading.Lock()

    def attempt(self, host: str, call: Callable[[], T]) -> T:
        """call() unless `host` is down (HostDown); its failure is recorded, then re-raised."""
        with self._lock:
            state = self._hosts.setdefault(host, _Host())
        self._raise_if_down(host, state)
        if state.proven:
            return self._run(state, call)
        with state.probe:
            self._raise_if_down(host, state)
            return self._run(state, call)

    def down_hosts(self) -> list[str]:
        with self._lock:
            return sorted(h for h, s in self._hosts.items() if s.down)

    def _raise_if_down(self, host: str, state: _Host) -> None:
        with self._lock:
            if state.down:
                raise HostDown(host, state.streak, state.first_error or "?")

    def _run(self, state: _Host, call: Callable[[], T]) -> T:
        try:
            result = call()
        except Exception as exc:
            kind = classify(exc)
            with self._lock:
                if kind in DEAD_HOST_KINDS:
                    state.streak += 1
                    if state.first_error is None:
                        state.first_error = f"{kind}: {short_error(exc)}"
                    state.down = state.down or (0 < self.down_after <= state.streak)
                else:
                    state.proven = True
            raise
        with self._lock:
            state.proven, state.streak, state.first_error = True, 0, None
        return result


def short_error(exc: BaseException) -> str:
    """The innermost useful message of a wrapped network error, without urllib3's pool details."""
    chain = _chain(exc)
    for e in chain:
        if isinstance(e, urllib3.exceptions.NameResolutionError):
            return f"cannot resolve {getattr(e, '_host', '?')!r} ({getattr(e, '_reason', None) or e})"[:300]
    for e in reversed(chain):
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
    return f"{type(exc).__name__}: {exc}"[:300]
