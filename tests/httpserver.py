"""A real HTTP server on 127.0.0.1 that can also misbehave, for download and image tests.

Network failure handling cannot be tested with mocks that never open a socket: the bugs live in
how a client reacts to a short body, a stalled read or a server that ignores Range. This server
serves a directory with byte ranges and lets a test inject, per path and for the first k
requests, one of these faults:

  status      reply with `code` (e.g. 500, 404) and a short body
  stall       sleep `seconds` (longer than the client's read timeout) before sending anything,
              or after `after` bytes of the body, then drop the connection
  cut         send the headers with the full Content-Length, then only `after` bytes, then close
  no_length   serve the body without Content-Length (close-delimited)
  ignore_range  answer a Range request with 200 and the whole file

Everything is bounded: sleeps wait on an event that teardown sets, sockets have timeouts, and
the server thread is stopped and joined when the fixture ends.
"""

from __future__ import annotations

import mimetypes
import posixpath
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

FAULT_KINDS = ("status", "stall", "cut", "no_length", "ignore_range")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
MAX_STALL_S = 30.0
SOCKET_TIMEOUT_S = 10.0


@dataclass
class Fault:
    kind: str
    remaining: int
    options: dict[str, Any] = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT_S  # an idle keep-alive connection cannot hold a thread forever
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr
        pass

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def do_GET(self) -> None:
        self._handle(head=False)

    def _handle(self, head: bool) -> None:
        owner = self.server.owner
        rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        fault = owner._take_fault(rel)
        rng = self.headers.get("Range")
        owner._log(rel, self.command, rng, fault)
        if fault is not None and fault.kind == "status":
            self._send_status(int(fault.options.get("code", 500)), head)
            return
        if fault is not None and fault.kind == "stall" and int(fault.options.get("after", 0)) == 0:
            owner._stop.wait(min(float(fault.options.get("seconds", 5.0)), MAX_STALL_S))
            self.close_connection = True
            return
        path = owner._resolve(rel)
        if path is None:
            self._send_status(404, head)
            return
        data = path.read_bytes()
        total = len(data)
        start, end, status = 0, total - 1, 200
        if rng and not (fault is not None and fault.kind == "ignore_range"):
            m = _RANGE.match(rng.strip())
            if m is None or (m.group(1) == "" and m.group(2) == ""):
                self._send_status(416, head, extra={"Content-Range": f"bytes */{total}"})
                return
            if m.group(1) == "":  # suffix range: last N bytes
                start = max(0, total - int(m.group(2)))
            else:
                start = int(m.group(1))
                end = min(int(m.group(2)), total - 1) if m.group(2) else total - 1
            if start >= total or start > end:
                self._send_status(416, head, extra={"Content-Range": f"bytes */{total}"})
                return
            status = 206
        body = data[start : end + 1]
        self.send_response(status)
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self.send_header("Content-Type", ctype)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        if fault is not None and fault.kind == "no_length":
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        if fault is not None and fault.kind in ("cut", "stall"):
            after = int(fault.options.get("after", 0))
            self.wfile.write(body[:after])
            self.wfile.flush()
            if fault.kind == "stall":
                owner._stop.wait(min(float(fault.options.get("seconds", 5.0)), MAX_STALL_S))
            self.close_connection = True
            return
        self.wfile.write(body)

    def _send_status(self, code: int, head: bool, extra: dict[str, str] | None = None) -> None:
        body = f"status {code}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: "FaultyHTTPServer"

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001
        """A client that hangs up on an injected fault is the test's point, not an error: no
        traceback on stderr (under xdist it lands between the progress dots)."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class FaultyHTTPServer:
    """Serve a directory on 127.0.0.1:<free port>; inject faults; log every request."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.root = Path(directory).resolve() if directory is not None else None
        self.requests: list[dict[str, Any]] = []
        self._faults: dict[str, list[Fault]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    # --- test-facing API ---
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def serve(self, directory: str | Path) -> "FaultyHTTPServer":
        self.root = Path(directory).resolve()
        return self

    def url_for(self, relpath: str | Path) -> str:
        rel = str(relpath).replace("\\", "/").lstrip("/")
        return f"{self.base_url}/{urllib.parse.quote(rel)}"

    def fault(self, path: str | Path, kind: str, times: int = 1, **options: Any) -> None:
        """The next `times` requests of `path` get fault `kind` (see module docstring)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, got {kind!r}")
        if times < 1:
            raise ValueError("times must be >= 1")
        rel = str(path).replace("\\", "/").lstrip("/")
        with self._lock:
            self._faults.setdefault(rel, []).append(Fault(kind, int(times), dict(options)))

    def requests_for(self, path: str | Path) -> list[dict[str, Any]]:
        rel = str(path).replace("\\", "/").lstrip("/")
        with self._lock:
            return [r for r in self.requests if r["path"] == rel]

    def close(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "FaultyHTTPServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- handler-facing helpers ---
    def _take_fault(self, rel: str) -> Fault | None:
        with self._lock:
            queue = self._faults.get(rel)
            if not queue:
                return None
            fault = queue[0]
            fault.remaining -= 1
            if fault.remaining <= 0:
                queue.pop(0)
            return Fault(fault.kind, 0, fault.options)

    def _log(self, rel: str, method: str, rng: str | None, fault: Fault | None) -> None:
        with self._lock:
            self.requests.append({"path": rel, "method": method, "range": rng, "fault": fault.kind if fault else None})

    def _resolve(self, rel: str) -> Path | None:
        if self.root is None:
            return None
        clean = posixpath.normpath("/" + rel).lstrip("/")
        path = (self.root / clean).resolve()
        if self.root not in path.parents and path != self.root:
            return None
        return path if path.is_file() else None
