#!/usr/bin/env bash
# Streams on the CPU: pipelined vs sequential full job (demo and r50-d1 on ONNX Runtime), the 10,000-frame soak,
# and track quality on unseen seeds. Writes benchmarks/results/<date>_streams_*. Needs the dev extra.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
day=$(date -u +%F)
out=benchmarks/results
fastinst-rt synth --video --frames 120 --seed 77 -o "$work/v120"      # 256x320, 25 fps
fastinst-rt synth --video --frames 20 --seed 78 -o "$work/v20"
fastinst-rt export fastinst-demo -o "$work/demo.onnx" --imgsz 256x320   # the video's padded size
python benchmarks/random_checkpoint.py fastinst-r50-d1 --instances 10 --output "$work/r50"
fastinst-rt export "$work/r50/fastinst_R50_ppm-fpn_x1_576_34.9.pth" -o "$work/r50d1.onnx" --imgsz 576x736
python benchmarks/track_quality.py --seeds 1001 1002 1003 --frames 300 --out "$out/${day}_streams_track-quality" \
    --sheet docs/tracking-contact-sheet.jpg
python benchmarks/stream_soak.py --video "$work/v120/video.mp4" --model "$work/demo.onnx" --frames 10000 \
    --out "$out/${day}_streams_soak"
python benchmarks/stream_pipeline.py --rounds 3 --out "$out/${day}_streams_pipeline" \
    --model "$work/demo.onnx" --video "$work/v120/video.mp4" --label fastinst-demo \
    --model "$work/r50d1.onnx" --video "$work/v20/video.mp4" --label fastinst-r50-d1
