#!/usr/bin/env bash
# The GPU check in ONE call on a lent GPU machine (Python 3.12 with PyTorch/CUDA, no TensorRT, no network).
#
#   bash benchmarks/gpu_check.sh --prepare        # here, once: wheels for that machine into .whl/ (git-ignored)
#   device run: command "bash benchmarks/gpu_check.sh", carry [".whl"], timeout_s 540
#   bash benchmarks/gpu_check.sh --device cpu     # dry run here (the installed project, no wheels; add
#                                                 # --models fastinst-test-r50-d2 for a quick one)
#
# On the GPU machine it installs the carried wheels into /tmp/site, then runs benchmarks/gpu_check.py, which
# writes gpu_check.json, timings.json and gpu_tests.xml under $OUT. Extra arguments go to gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
    rm -rf .whl && mkdir -p .whl
    python -m pip wheel -q --no-deps --no-build-isolation -w .whl .
    # Not in that machine's image (its package list: device README, KINDS.md): pycocotools.
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "pycocotools==2.0.11"
    ls -la .whl
    exit 0
fi
out=${OUT:-/tmp/fastinst-gpu-check}
if [ "${1:-}" = "--device" ] && [ "${2:-}" = "cpu" ]; then
    shift 2
    exec python benchmarks/gpu_check.py --device cpu --out "$out" --warmup 1 --iters 2 "$@"
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv > "$out.smi.txt" 2>&1 || true
mkdir -p "$out" && mv "$out.smi.txt" "$out/nvidia-smi.csv" 2>/dev/null || true
python3 benchmarks/gpu_check.py --device cuda --out "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
