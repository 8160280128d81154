"""The full job at camera resolution: what a 1080 and a 2160-line frame cost beside the same frame at 256x320.

The same synthetic content (``fastinst-rt synth --video --frames 100 --seed 1001``, 256x320) is upscaled (bilinear)
to 1080x1350 and 2160x2700 and re-encoded with the project's ``VideoWriter`` (H.264), keeping the aspect ratio, so
that the network sees the same 256x320 input at every resolution and only the host-side work differs (decoding,
resize, mask upsampling, RLE, drawing, encoding). Then, interleaved round by round:

- ``predict VIDEO --json F.jsonl`` and ``predict VIDEO --save DIR --json F.jsonl`` (``predict_source``, pipelined,
  the default ``resize``) at each resolution: wall time, each stage's busy ms per frame, the ratios to 256x320;
- ``fastinst-rt bench MODEL --image <1080p photo> --conf 0 --max-det 20`` with ``resize`` exact and fast
  (``jobs.bench.benchmark``, interleaved): pre-processing + post-processing against inference.

    python benchmarks/camera_resolution.py --model demo.onnx --work /tmp/cam --out benchmarks/results/<date>_x
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from fastinst_rt import Segmenter
from fastinst_rt.io.video_out import VideoWriter
from fastinst_rt.jobs.bench import benchmark, machine_info
from fastinst_rt.jobs.predict import predict_source
from fastinst_rt.runtime.sources import open_source

SIZES = {"256x320": None, "1080x1350": (1080, 1350), "2160x2700": (2160, 2700)}


def videos(work: Path) -> dict[str, Path]:
    """The 256x320 synthetic video (seed 1001, 100 frames) and its upscaled copies, made once under ``work``."""
    base = work / "v256" / "video.mp4"
    if not base.exists():
        subprocess.run(["fastinst-rt", "synth", "--video", "--frames", "100", "--seed", "1001", "-o",
                        str(base.parent)], check=True)  # fmt: skip
    out = {"256x320": base}
    for name, hw in SIZES.items():
        if hw is None:
            continue
        path = work / f"v{name}.mp4"
        if not path.exists():
            src, writer = open_source(base), VideoWriter(path, 25.0)
            for frame in src.frames():
                writer.write(cv2.resize(frame.image, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR))
            writer.close()
            src.close()
        out[name] = path
    return out


def one_job(seg: Segmenter, video: Path, save: bool, work: Path) -> dict:
    """``predict VIDEO [--save DIR] --json F.jsonl``, pipelined: wall seconds, frames, busy ms per frame per stage."""
    start = time.perf_counter()
    summary = predict_source(seg, video, work / "out" if save else None, work / "res.jsonl", progress=False)
    wall = time.perf_counter() - start
    assert summary.complete, summary
    return {"wall_s": wall, "frames": summary.frames, "instances": summary.instances, "stage_ms": summary.speed}


def jobs(seg: Segmenter, paths: dict[str, Path], rounds: int) -> dict:
    """Every (resolution, save) job ``rounds`` times, interleaved; medians and the ratios to 256x320."""
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        one_job(seg, paths["256x320"], True, Path(tmp))  # warm-up
        for i in range(rounds):
            for name, path in paths.items():
                for save in (False, True):
                    key = f"{name}{' --save' if save else ''}"
                    runs.setdefault(key, []).append(one_job(seg, path, save, Path(tmp) / f"{i}{key}"))
    out = {}
    for key, rs in runs.items():
        best = sorted(rs, key=lambda r: r["wall_s"])[len(rs) // 2]  # the median run, with its own stage times
        out[key] = {"wall_ms_per_frame": best["wall_s"] * 1e3 / best["frames"], "stage_ms": best["stage_ms"],
                    "instances": best["instances"], "walls_s": [r["wall_s"] for r in rs]}  # fmt: skip
    for key, r in out.items():
        base = out["256x320 --save" if key.endswith("--save") else "256x320"]["wall_ms_per_frame"]
        r["ratio_to_256x320"] = r["wall_ms_per_frame"] / base
    return out


def bench_photo(model: str, iters: int) -> dict:
    """``bench MODEL --image <1080p photo> --conf 0 --max-det 20`` with each resize, interleaved (p50 ms)."""
    photo = cv2.cvtColor(cv2.imread(str(Path(__file__).parents[1] / "fastinst_rt/assets/astronaut.jpg")),
                         cv2.COLOR_BGR2RGB)  # fmt: skip
    photo = cv2.resize(photo, (1920, 1080), interpolation=cv2.INTER_CUBIC)  # a real photo at 1080p
    segs = [Segmenter(model, device="cpu", conf=0.0, max_det=20, resize=r) for r in ("exact", "fast")]
    runs = benchmark(segs, np.ascontiguousarray(photo), iters=iters, warmup=5, labels=["exact", "fast"], progress=False)
    return {r.resize: {k: r.stages[k]["p50"] for k in r.stages} | {"instances": r.instances} for r in runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="the bundled model's ONNX export")
    ap.add_argument("--work", required=True, help="folder for the videos (kept between runs)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--out", required=True, help="path prefix: writes .json")
    args = ap.parse_args()
    record: dict = {"machine": machine_info(), "loadavg_start": os.getloadavg(), "model": args.model}
    paths = videos(Path(args.work))
    seg = Segmenter(args.model, device="cpu")
    record["resize"] = seg.resize
    record["jobs"] = jobs(seg, paths, args.rounds)
    record["bench_1080p_photo"] = bench_photo(args.model, args.iters)
    record["loadavg_end"] = os.getloadavg()
    Path(args.out).with_suffix(".json").write_text(json.dumps(record, indent=1))
    for key, r in record["jobs"].items():
        busy = ", ".join(f"{k} {v:.1f}" for k, v in r["stage_ms"].items())
        print(f"{key}: {r['wall_ms_per_frame']:.1f} ms/frame, x{r['ratio_to_256x320']:.2f}; busy {busy}")
    print(json.dumps(record["bench_1080p_photo"], indent=1))


if __name__ == "__main__":
    main()
