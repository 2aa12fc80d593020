"""A machine without network, made on purpose: Amazon hosts that cannot answer, and a category to ask them for.

The offline benchmark and the offline CLI tests ask the same dead hosts for the same category, so
the two measure and check one situation.
"""

from __future__ import annotations

import socket

# `anchorrec ingest|pipeline` options that need the Amazon 2018 hosts (set by ANCHORREC_AMAZON_HOSTS)
BEAUTY_CATEGORY = ["--dataset", "beauty", "--release", "2018", "--category", "All_Beauty"]


def closed_port() -> int:
    """A local port nobody listens on (bound, then released): connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dead_hosts(*more: str) -> tuple[str, int]:
    """ANCHORREC_AMAZON_HOSTS of two dead locations, one whose name never resolves (`.invalid`,
    RFC 6761) and one that refuses (a closed port), then `more`; and that port, which errors name."""
    port = closed_port()
    return ",".join(["http://amazon-mirror.invalid/v2", f"http://127.0.0.1:{port}/v2", *more]), port
