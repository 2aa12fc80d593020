"""Where an input lives: a local path or file:// URL, or something to download.

One rule for the downloader, the image fetcher and the command line's checks, so that a path
the CLI accepted is the path the pipeline reads. Standard library only: the CLI imports it
before any heavy module, to refuse a bad path in well under a second.
"""

from __future__ import annotations

import os
import urllib.parse
import urllib.request
from pathlib import Path


def is_local(source: str) -> bool:
    """A plain path or a file:// URL (a one-letter scheme is a Windows drive)."""
    scheme = urllib.parse.urlsplit(source).scheme.lower()
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def local_path(source: str) -> Path:
    """The file a local source names (file:// URLs percent-decoded, ~ expanded)."""
    parts = urllib.parse.urlsplit(source)
    if parts.scheme.lower() == "file":
        return Path(urllib.request.url2pathname(parts.path)).expanduser()
    return Path(source).expanduser()
