#!/usr/bin/env bash
# The six Sports baselines (and DA-MRS) at MMRec's protocol on a GPU, in slices of at most 8 minutes
# that resume from the last one (issue 34): each call trains until ~7 minutes are spent, stops at an
# epoch's checkpoint and copies the results table to $OUT; the next call goes on from the
# checkpoints in .gpu/work (kept on a warm device machine; carry .gpu to a fresh one).
# Prepare here first with benchmarks/gpu/gpu_prepare.sh, then, with the device tool:
#   run(command="bash benchmarks/gpu/gpu_baselines.sh", carry=[".gpu"], timeout_s=540)   # again and again
# Locally (a CPU try of one short slice): bash benchmarks/gpu/gpu_baselines.sh --models vbpr --time-budget 30
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench-out/gpu-baselines}"
mkdir -p "$out" .gpu/work
if compgen -G ".gpu/whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export ANCHORREC_BENCH_WORK="$PWD/.gpu/work"
[ -d .gpu/mmrec-sports ] && export ANCHORREC_SPORTS_DIR="$PWD/.gpu/mmrec-sports"
[ -f .gpu/sports_minilm.npy ] && [ ! -f .gpu/work/sports_minilm.npy ] && cp .gpu/sports_minilm.npy .gpu/work/
python=python3; [ -x .venv/bin/python ] && python=.venv/bin/python
results=.gpu/work/baselines_sports_gpu.json
PYTHONUNBUFFERED=1 timeout 480 "$python" benchmarks/accuracy/sports_baselines.py --models vbpr freedom bm3 lattice lgmrec smore damrs \
    --time-budget 420 --results "$results" "$@" 2>&1 | tee "$out/log.txt"
for f in "$results" "${results%.json}.md"; do [ -f "$f" ] && cp "$f" "$out/"; done
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$out/nvidia-smi.txt" 2>/dev/null || true
