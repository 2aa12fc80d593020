#!/usr/bin/env bash
# Run HERE (not on the device) before `benchmarks/gpu/gpu_check.sh`: puts what the device machine lacks
# into .gpu/ (git-ignored through .git/info/exclude; name it in the device call's `carry`):
#   .gpu/mmrec-sports/   the Sports interaction files (../shared does not travel to the device)
#   .gpu/sports_minilm.npy  MiniLM keyword vectors of the Sports items (float16; computed once here)
#   .gpu/whl/            wheels for Python 3.12 of what its image lacks (faiss-cpu, open_clip_torch, ftfy)
# Then, with the device tool:  run(command="bash benchmarks/gpu/gpu_check.sh", carry=[".gpu"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
mkdir -p .gpu/whl
cp -r ../shared/data/mmrec-sports .gpu/
.venv/bin/python - <<'PY'
import sys
import numpy as np
sys.path.insert(0, ".")
from benchmarks.common.sports_data import minilm_keywords
np.save(".gpu/sports_minilm.npy", minilm_keywords().astype(np.float16))
PY
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .gpu/whl "faiss-cpu==1.15.1" "open_clip_torch==3.3.0" ftfy wcwidth
du -sh .gpu .gpu/*
