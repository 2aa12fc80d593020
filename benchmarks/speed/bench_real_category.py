"""A real Amazon category end to end through the CLI, as a user runs it, and the demo's output size.

1. `anchorrec pipeline --release 2018 --meta … --reviews …` on the real Gift Cards files in
   ../shared/data with their real image URLs (on machines without access to Amazon's image
   hosts they fail DNS: the run must finish text-only), then `anchorrec recommend`;
2. the same with `--images DIR` (the real photos in ../shared/data): image + text + ICA;
3. `anchorrec pipeline` on the demo catalog (what `make demo` runs): lines printed, ERROR lines;
4. each rerun, all cache hits: the baseline each first run is compared with.

    .venv/bin/python benchmarks/speed/bench_real_category.py [--out bench-out/real_category.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: the package, benchmarks.common

from benchmarks.common.gift_cards import GIFT, GIFT_INGEST  # noqa: E402


def anchorrec(env: dict, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cli", *args], cwd=REPO, env=env, capture_output=True)
    seconds = time.perf_counter() - t0
    # decoded without newline translation: text mode would turn a progress bar's \r redraws into lines
    proc.stdout, proc.stderr = proc.stdout.decode(), proc.stderr.decode()
    if proc.returncode != 0:
        raise SystemExit(f"anchorrec {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc


def stage_lines(stderr: str) -> list[str]:
    return [
        line.split("\r")[-1]
        for line in stderr.split("\n")
        if line.split("\r")[-1].split(":")[0]
        in ("ingest", "images", "features text", "features image", "pretrain", "train", "publish", "modalities")
    ]


def case(env: dict, name: str, args: list[str]) -> dict:
    first, proc = anchorrec(env, "pipeline", *args)
    again, _ = anchorrec(env, "pipeline", *args)
    out = proc.stdout + proc.stderr
    row = {
        "case": name,
        "first_s": round(first, 1),
        "rerun_s": round(again, 1),
        "ratio": round(first / again, 1),
        "lines": out.count("\n"),  # terminal lines: progress bars redraw theirs with \r
        "error_lines": sum("ERROR" in line or "Traceback" in line for line in out.split("\n")),
        "stages": stage_lines(proc.stderr),
    }
    dataset = args[args.index("--dataset") + 1]
    t, rec = anchorrec(env, "recommend", "--dataset", dataset, "--user", "0", "-k", "5")
    row["recommend_s"] = round(t, 2)
    row["answered_by"] = rec.stdout.splitlines()[0]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "bench-out" / "real_category.json")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-real-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(ANCHORREC_HOME=str(root / "home"), PREFECT_HOME=str(root / "prefect"), COLUMNS="120")
    gift = GIFT_INGEST
    rows = [
        case(env, "Gift Cards 2018, image URLs unreachable", ["--dataset", "gift", *gift]),
        case(env, "Gift Cards 2018, --images DIR", ["--dataset", "gift-img", *gift, "--images", str(GIFT / "images")]),
        case(env, "demo (make demo)", ["--dataset", "demo"]),
    ]
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (2 cores)")
    print("| case | first run s | rerun s (cached) | ratio | lines | ERROR lines | recommend s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['first_s']} | {r['rerun_s']} | {r['ratio']}x | {r['lines']} | {r['error_lines']} | {r['recommend_s']} |"
        )
    for r in rows:
        print(f"\n{r['case']}:\n  " + "\n  ".join(r["stages"]) + f"\n  {r['answered_by']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
