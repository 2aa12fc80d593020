#!/usr/bin/env bash
# Every GPU figure we owe, in one run of under 8 minutes on one H200 (prepare with
# benchmarks/gpu/gpu_prepare.sh here first; carry .gpu): AnchorRec training epoch and full evaluation on
# MMRec Sports, CLIP ViT-B-32 extraction img/s at random weights, ICA pretraining items/s (pooled
# inputs, and the token encoder on 16 image + 24 text tokens).
# Writes gpu_check.md / gpu_check.json to $OUT (the device tool's folder) or bench-out/gpu.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench-out/gpu}"
mkdir -p "$out"
if compgen -G ".gpu/whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$out/nvidia-smi.txt" || true
sports=.gpu/mmrec-sports; [ -d "$sports" ] || sports=../shared/data/mmrec-sports
features=(); [ -f .gpu/sports_minilm.npy ] && features=(--features .gpu/sports_minilm.npy)
PYTHONUNBUFFERED=1 timeout 470 python3 benchmarks/gpu/gpu_check.py --sports "$sports" "${features[@]}" --out "$out" "$@" \
    2>&1 | tee "$out/log.txt"
