"""Fixed cost of a stage command: a Prefect server per command (before) vs one shared per home (after).

Runs `anchorrec ingest` on a small generated dataset as a user would (a subprocess, no
PREFECT_API_URL), interleaving the two modes so that load on the machine hits both alike:

- cached: the same ingest again, the stage is a cache hit (work ≈ 0);
- trivial stage: an ingest into a new dataset name, so the stage runs (work = the stage's own seconds).

Overhead = wall time − the stage's own seconds. `before` is ANCHORREC_SERVER=per-command (Prefect's
ephemeral server started by each command); `after` is the shared server (prefect_server.py), warm.
Each mode has its own ANCHORREC_HOME and PREFECT_HOME.

    .venv/bin/python benchmarks/speed/bench_command_overhead.py [--reps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO = ["--demo-items", "60", "--demo-users", "80"]
MODES = {"before": "per-command", "after": "shared"}


def env_for(root: Path, mode: str) -> dict:
    out = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    out.update(
        ANCHORREC_HOME=str(root / mode / "home"),
        PREFECT_HOME=str(root / mode / "prefect"),
        ANCHORREC_SERVER=MODES[mode],
        ANCHORREC_SERVER_GRACE_S="900",
    )  # stopped at the end
    return out


def run(env: dict, *args: str) -> tuple[float, float]:
    """(wall seconds, the stage's own seconds from the printed summary; 0 when cached)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "ingest", *DEMO, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"error: anchorrec ingest {' '.join(args)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    cached = "ingest: cached" in proc.stderr
    work = 0.0 if cached else float(json.loads(proc.stdout.strip().splitlines()[-1]).get("seconds", 0.0))
    return wall, work


def stop_shared_server(env: dict) -> None:
    state = Path(env["PREFECT_HOME"]) / "anchorrec-server.json"
    if state.exists():
        try:
            os.kill(json.loads(state.read_text())["pid"], signal.SIGTERM)
        except (ProcessLookupError, KeyError, ValueError):
            pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2, help="timed runs per mode and case")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        envs = {mode: env_for(Path(tmp), mode) for mode in MODES}
        first = {mode: run(env) for mode, env in envs.items()}  # the first command (after: starts the server)
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for rep in range(args.reps):
            for mode, env in envs.items():
                times.setdefault((mode, "cached"), []).append(run(env))
                times.setdefault((mode, "trivial stage"), []).append(run(env, "--dataset", f"fresh{rep}"))
        stop_shared_server(envs["after"])
    print(
        f"anchorrec ingest {' '.join(DEMO)}: median of {args.reps} runs, seconds (os.cpu_count()={os.cpu_count()}, "
        f"load {os.getloadavg()[0]:.1f})"
    )
    print(
        f"{'case':<34}{'before wall':>12}{'after wall':>12}{'work':>8}{'before ovh':>12}{'after ovh':>11}"
        f"{'ovh ratio':>11}"
    )
    rows = [("first command (cold)", [first["before"]], [first["after"]])]
    rows += [(case, times[("before", case)], times[("after", case)]) for case in ("cached", "trivial stage")]
    for case, before, after in rows:
        wall_b, wall_a = (statistics.median(w for w, _ in xs) for xs in (before, after))
        work = statistics.median(k for _, k in before + after)
        ovh_b, ovh_a = (statistics.median(w - k for w, k in xs) for xs in (before, after))
        print(
            f"{case:<34}{wall_b:>12.1f}{wall_a:>12.1f}{work:>8.2f}{ovh_b:>12.1f}{ovh_a:>11.1f}{ovh_b / ovh_a:>10.1f}×"
        )


if __name__ == "__main__":
    main()
