#!/usr/bin/env bash
# FastInst-D1-R50 at 576 on the CPU, on the shipped photo: Segmenter.predict per stage on PyTorch and on
# ONNX Runtime (dynamic graph and static 576x576 graph), interleaved in one run. See README.md for the method.
#
#   bash benchmarks/cpu_r50d1.sh [RESULT_PREFIX]      (ITERS=30 WORK=/tmp/fastinst-bench by default)
set -euo pipefail
prefix=${1:-benchmarks/results/$(date +%F)_cpu_r50d1-576_torch-vs-ort}
work=${WORK:-/tmp/fastinst-bench}
mkdir -p "$(dirname "$prefix")" "$work"
ckpt="$work/fastinst_R50_ppm-fpn_x1_576_34.9.pth"
# Random weights tuned so that 10 instances pass conf 0.3 (post-processing cost depends on that count only).
[ -f "$ckpt" ] || python benchmarks/random_checkpoint.py fastinst-r50-d1 --instances 10 --output "$work"
# The 512x512 photo is resized to 576x576, so the static graph is exported at exactly that size.
[ -f "$work/r50d1-dynamic.onnx" ] || fastinst-rt export "$ckpt" -o "$work/r50d1-dynamic.onnx" --dynamic
[ -f "$work/r50d1-576x576.onnx" ] || fastinst-rt export "$ckpt" -o "$work/r50d1-576x576.onnx" --imgsz 576x576
fastinst-rt bench "$ckpt" "$work/r50d1-dynamic.onnx" "$work/r50d1-576x576.onnx" --device cpu \
    --warmup 3 --iters "${ITERS:-30}" --json "$prefix.json" --plot "$prefix.png"
