"""Image fetching when the hosts cannot answer: wall time and console lines, hosts marked down vs not.

300 items on two dead hosts: 150 under a name that never resolves (`.invalid`, RFC 6761) and 150 on
a closed port of 127.0.0.1 (connection refused), what a machine without access to Amazon's image
hosts sees. Both runs in this process: `host_down_after=3` (the default) against
`host_down_after=0` (every URL tried), and the WARNING-or-louder log records each run printed.

    .venv/bin/python benchmarks/speed/bench_image_hosts.py [--items 300]
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common

import pyarrow as pa  # noqa: E402

from benchmarks.common.screen import WarningCount  # noqa: E402
from pipelines.images import fetch_images  # noqa: E402
from store import schemas  # noqa: E402
from store.layout import dataset_paths  # noqa: E402
from store.tables import write_table  # noqa: E402

Count = WarningCount  # what reached the screen


def catalog(home: Path, name: str, n: int) -> object:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    urls = [
        f"http://images-na.anchorrec-bench.invalid/I/{i}.jpg" if i % 2 else f"http://127.0.0.1:{port}/{i}.jpg"
        for i in range(n)
    ]
    paths = dataset_paths(name, home)
    table = pa.table(
        {
            "item_id": pa.array(range(n), pa.int32()),
            "asin": [f"B{i:09d}" for i in range(n)],
            "title": ["t"] * n,
            "description": [None] * n,
            "brand": [None] * n,
            "categories": pa.array([[]] * n, pa.list_(pa.string())),
            "image_url": urls,
            "text": ["t"] * n,
        }
    )
    write_table(table, paths.items, schemas.ITEMS)
    return paths


def run(home: Path, name: str, n: int, host_down_after: int) -> tuple[float, int, str]:
    paths = catalog(home, name, n)
    counter = Count()
    logging.getLogger().addHandler(counter)
    t0 = time.perf_counter()
    summary = fetch_images(paths, progress=False, host_down_after=host_down_after)
    seconds = time.perf_counter() - t0
    logging.getLogger().removeHandler(counter)
    return seconds, counter.n, summary["line"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=300)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-hosts-"))
    logging.basicConfig(level=logging.WARNING)
    marked = run(home, "marked", args.items, 3)
    unmarked = run(home, "unmarked", args.items, 0)
    print(f"load average {os.getloadavg()[0]:.2f} (2 cores)")
    print("| hosts | wall s | WARNING+ log lines | summary line |\n|---|---|---|---|")
    print(f"| marked down after 3 failures (default) | {marked[0]:.2f} | {marked[1]} | {marked[2]} |")
    print(f"| never marked down | {unmarked[0]:.2f} | {unmarked[1]} | {unmarked[2]} |")
    print(f"speed-up {unmarked[0] / marked[0]:.1f}x")


if __name__ == "__main__":
    main()
