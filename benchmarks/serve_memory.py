"""Peak memory of one serving request: a 4000 x 4000 image at conf 0 (every one of the top 100 pairs kept).

Runs what a replica runs for one request (``wire.decode_image``, ``Segmenter.predict``, ``wire.results_to_json``)
in a fresh process per image, and reports the growth of the process's high-water mark (VmHWM) over the request,
after the model is loaded and warmed up on a small image.

    python benchmarks/serve_memory.py --json benchmarks/results/DATE_cpu_serve-memory.json
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

KINDS = ("black", "shapes", "noise")


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _image(kind: str, side: int) -> bytes:
    """PNG bytes of a ``side`` x ``side`` image: black (the issue's 21 KB PNG), upscaled shapes, or noise."""
    if kind == "black":
        rgb = np.zeros((side, side, 3), np.uint8)
    elif kind == "noise":
        rgb = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    else:
        import tempfile

        from fastinst_rt.training.synth import make_synthetic_dataset

        with tempfile.TemporaryDirectory() as tmp:
            ann = make_synthetic_dataset(tmp, 1, seed=7)
            small = Image.open(next((ann.parent / "images").iterdir())).convert("RGB")
            rgb = np.asarray(small.resize((side, side), Image.BILINEAR))
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def one_request(kind: str, side: int) -> dict:
    """Measured in this process: load, warm up, then one request's peak growth."""
    from fastinst_rt import Segmenter
    from fastinst_rt.serving.wire import decode_image, results_to_json

    seg = Segmenter("fastinst-demo", device="cpu", conf=0.0, max_det=100)
    body = _image(kind, side)
    seg.predict(np.zeros((256, 320, 3), np.uint8))
    before = _hwm_mb()
    t = time.perf_counter()
    res = seg.predict(decode_image(body, max_pixels=side * side))
    answer = json.dumps(results_to_json(res))
    return {"kind": kind, "side": side, "png_kb": round(len(body) / 1024, 1), "instances": len(res),
            "hwm_before_mb": round(before, 1), "peak_growth_mb": round(_hwm_mb() - before, 1),
            "seconds": round(time.perf_counter() - t, 2), "answer_kb": round(len(answer) / 1024, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=4000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", choices=KINDS, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_request(args.one, args.side)))
        return
    rows = []
    for kind in KINDS:
        out = subprocess.run([sys.executable, __file__, "--one", kind, "--side", str(args.side)], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(["lscpu"], capture_output=True, text=True)
                .stdout.splitlines() if ln.startswith("Model name")), "?")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"machine": cpu, "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
