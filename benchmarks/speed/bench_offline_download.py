"""Offline `--category`: seconds until the one error line, before and after downloads failed fast.

A machine without network asks for Amazon 2018 All_Beauty; the catalog's hosts are replaced
(ANCHORREC_AMAZON_HOSTS) by what such a machine sees: a name that never resolves (`.invalid`,
RFC 6761), a closed port of 127.0.0.1 (connection refused) and a second unresolvable name, three
locations like the real catalog's three hosts.

Both download modules run in this process on the same URLs: `before` is pipelines/download.py as
of BEFORE_COMMIT (DNS failures and refusals retried per URL with exponential backoff, and a
DownloadError the ingest stage retried twice more, after 2 s and 10 s), `after` is the module in
the tree (unreachable hosts are not retried; the error is a user error, never retried as a stage).
The `before` stage total is 3 × its measured fetch + 12 s of stage retry delays (the stage retries
re-run the same fetch; running them would only triple the wait). `after` is also measured end
to end: the `anchorrec ingest` subprocess, start to exit, with its stderr lines counted (its
preflight finds no location reachable and refuses before Prefect starts).
Results: benchmarks/results/offline_download.md.

    .venv/bin/python benchmarks/speed/bench_offline_download.py [--backoff 1.0]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common

from benchmarks.common.offline import BEAUTY_CATEGORY, dead_hosts  # noqa: E402
from benchmarks.common.screen import WarningCount  # noqa: E402
from pipelines import catalog  # noqa: E402
from pipelines import download as after_module  # noqa: E402

BEFORE_COMMIT = "60a56f7d43cf19e24bc5bff6c83c62d81acd407c"
OLD_STAGE_ATTEMPTS, OLD_STAGE_DELAYS_S = 3, (2, 10)  # flows.ingest_task: retries=2, retry_delay_seconds=[2, 10]


Count = WarningCount  # what reached the screen


def before_module() -> object:
    """pipelines/download.py as of BEFORE_COMMIT, imported under another name."""
    source = subprocess.run(
        ["git", "show", f"{BEFORE_COMMIT}:pipelines/download.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="bench-offline-")) / "download_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("download_before", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def timed_fetch(module: object, hosts: str, backoff: float) -> tuple[float, int, str]:
    """Seconds until fetch gave up on the meta file, WARNING lines logged, and the error's first words."""
    os.environ[catalog.HOSTS_ENV] = hosts
    meta = catalog.resolve("2018", "All_Beauty")[0]
    counter = Count()
    logging.getLogger(module.__name__).addHandler(counter)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        try:
            module.fetch(
                meta.url,
                Path(tmp) / meta.filename,
                manifest=Path(tmp) / "manifest.json",
                mirrors=meta.mirrors,
                progress=False,
                backoff=backoff,
            )
        except Exception as exc:  # noqa: BLE001 - the failure is what is measured
            return time.perf_counter() - t0, counter.n, f"{type(exc).__name__}: {str(exc)[:60]}…"
    raise SystemExit("the fetch succeeded: these hosts are reachable, nothing to measure")


def cli_run(hosts: str) -> tuple[float, int, int, int]:
    """The user's command end to end: seconds, exit code, stderr lines, WARNING lines."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(ANCHORREC_HOME=f"{tmp}/home", PREFECT_HOME=f"{tmp}/prefect", **{catalog.HOSTS_ENV: hosts})
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "cli", "ingest", *BEAUTY_CATEGORY],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        took = time.perf_counter() - t0
    lines = proc.stderr.strip().splitlines()
    return took, proc.returncode, len(lines), sum("WARNING" in line for line in lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backoff", type=float, default=1.0, help="per-URL backoff multiplier (1.0: the default)")
    args = ap.parse_args()
    hosts, _ = dead_hosts("http://backup.invalid/v2")

    old_s, old_warn, old_err = timed_fetch(before_module(), hosts, args.backoff)
    new_s, new_warn, new_err = timed_fetch(after_module, hosts, args.backoff)
    old_total = OLD_STAGE_ATTEMPTS * old_s + sum(OLD_STAGE_DELAYS_S)
    cli_s, rc, lines, cli_warn = cli_run(hosts)

    print(f"offline 2018 All_Beauty, 3 dead locations, per-URL backoff {args.backoff:g}\n")
    print("| variant | fetch gives up (s) | WARNING lines per fetch | stage attempts | to the error (s) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(
        f"| before ({BEFORE_COMMIT[:8]}) | {old_s:.2f} | {old_warn} | {OLD_STAGE_ATTEMPTS} | "
        f"{old_total:.1f} (3 × fetch + 12 s delays) |"
    )
    print(f"| after (tree) | {new_s:.2f} | {new_warn} | 1 | {new_s:.2f} (fetch) |")
    print(
        f"| after, `anchorrec ingest` subprocess | | {cli_warn} | 1 | {cli_s:.2f} (exit {rc}, {lines} stderr line(s)) |"
    )
    print(
        f"\nfetch: {old_s / new_s:.0f}× faster; to the error: before {old_total:.0f} s vs the whole CLI run "
        f"{cli_s:.1f} s ({old_total / cli_s:.0f}×)"
    )
    print(f"before raised: {old_err}\nafter raised:  {new_err}")


if __name__ == "__main__":
    main()
