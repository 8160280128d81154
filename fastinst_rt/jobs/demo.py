"""``fastinst-rt demo``: the whole product on the embedded default, with nothing to download.

The bundled ``fastinst-demo`` model (trained here on synthetic shapes, see ``fastinst_rt/assets/README.md``)
segments freshly generated sample images on the PyTorch backend, is exported to ONNX, segments the same
images on ONNX Runtime, and both are timed side by side. Everything lands in one folder: annotated pictures
per backend, a mosaic, the ONNX file, and a latency table as markdown, JSON and a chart.
"""

from __future__ import annotations

import json
import os
import time

import cv2
import numpy as np

from ..io.outputs import check_writable, write_image
from ..log import progress_logger

__all__ = ["run_demo", "DEMO_MODEL"]

DEMO_MODEL = "fastinst-demo"
_SAMPLE_SEED = 20261124  # fixed: the demo shows the same images every time; training used seeds 0 and 1, the test 7
# (H, W) of the samples. They need no resize at the test size 256/341, and the static graph is exported at this
# size: a larger canvas would add padding, which the network sees (as in the official model), and change scores.
_SAMPLE_SIZE = (256, 320)


_log = progress_logger(__name__)


def _mosaic(rows: list[list[np.ndarray]], labels: list[str]) -> np.ndarray:
    """Images of one size in a grid, one row per backend, its name written on the left."""
    pad = 8
    blocks = []
    for label, row in zip(labels, rows):
        strip = np.concatenate([np.pad(im, ((pad, pad), (pad, 0), (0, 0)), constant_values=255) for im in row], 1)
        tag = np.full((strip.shape[0], 150, 3), 255, np.uint8)
        cv2.putText(tag, label, (8, strip.shape[0] // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
        blocks.append(np.concatenate([tag, strip], 1))
    return np.concatenate(blocks, 0)


def run_demo(
    output: str | os.PathLike = "fastinst-demo", num_images: int = 4, iters: int = 10, quiet: bool = False
) -> dict:
    """Run the demo and return a summary ({"output", "instances", "agreement", "latency"}).

    Args:
        output: folder to write into (created).
        num_images: sample images to generate and segment.
        iters: timed iterations per backend for the latency table.
    """
    from ..runtime.segmenter import Segmenter
    from ..training.synth import make_synthetic_dataset
    from .bench import benchmark, markdown_table, plot_runs, write_json

    start = time.perf_counter()
    out = check_writable(output, "--output", folder=True)
    out.mkdir(parents=True, exist_ok=True)
    _log(not quiet, f"generating {num_images} sample images")
    ann = make_synthetic_dataset(out / "samples", num_images, seed=_SAMPLE_SEED, size=_SAMPLE_SIZE)
    files = [ann.parent / "images" / im["file_name"] for im in json.loads(ann.read_text())["images"]]

    torch_seg = Segmenter(DEMO_MODEL, backend="torch", device="cpu", conf=0.5)
    onnx_path = out / "fastinst-demo.onnx"
    _log(not quiet, f"exporting {DEMO_MODEL} to {onnx_path}")
    from ..export import export_onnx

    export_onnx(DEMO_MODEL, onnx_path, imgsz=_SAMPLE_SIZE, progress=not quiet)
    ort_seg = Segmenter(onnx_path, device="cpu", conf=0.5)

    rows: dict[str, list[np.ndarray]] = {"torch": [], "onnxruntime": []}
    instances, score_gaps = {}, []
    for seg in (torch_seg, ort_seg):
        kind = seg.backend.kind
        (out / kind).mkdir(exist_ok=True)
        counts = []
        for f in files:
            bgr = cv2.imread(str(f))
            res = seg.predict(bgr)
            drawn = res.draw(bgr)
            write_image(out / kind / f"{f.stem}.jpg", drawn)
            rows[kind].append(drawn)
            counts.append(len(res))
        instances[kind] = counts
    for f in files:  # the two backends must find the same instances with the same scores
        a, b = torch_seg.predict(str(f)), ort_seg.predict(str(f))
        if len(a) == len(b) and len(a):
            score_gaps.append(float(np.abs(a.scores - b.scores).max()))
    agreement = {
        "same_counts": instances["torch"] == instances["onnxruntime"],
        "max_score_diff": max(score_gaps) if score_gaps else 0.0,
    }
    write_image(out / "predictions.jpg", _mosaic(list(rows.values()), ["PyTorch", "ONNX Runtime"]))

    _log(not quiet, f"timing both backends ({iters} iterations each, interleaved)")
    runs = benchmark([torch_seg, ort_seg], str(files[0]), warmup=2, iters=iters, progress=False)
    table = markdown_table(runs)
    (out / "latency.md").write_text(table + "\n")
    write_json(runs, out / "latency.json")
    plot_runs(runs, out / "latency.png", title=f"{DEMO_MODEL} on this CPU")
    seconds = time.perf_counter() - start
    written = [out / "predictions.jpg", out / "torch", out / "onnxruntime", onnx_path, out / "latency.md",
               out / "latency.png"]  # fmt: skip
    return {"output": str(out), "instances": instances, "agreement": agreement, "table": table, "seconds": seconds,
            "latency": [r.to_dict() for r in runs], "written": [str(p) for p in written]}  # fmt: skip
