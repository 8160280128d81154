"""Soak: the full pipelined job over >= 10,000 frames with the process RSS sampled, to show memory stays flat.

A short video is decoded again and again (a fresh PyAV decoder per pass, frame indices continuing) and fed to
``predict_source`` with an annotated video being encoded and JSON Lines written, exactly as
``fastinst-rt predict VIDEO --save DIR --json F.jsonl`` runs. RSS (``/proc/self/status`` VmRSS) is sampled by the
decoder thread every 100 frames. Acceptance: growth between frame 500 and the last frame <= 50 MB.

    python benchmarks/stream_soak.py --video v.mp4 --model demo.onnx --frames 10000 --out results/x
    python benchmarks/stream_soak.py --video v2160.mp4 --model demo.onnx --frames 400 --conf 0 --max-det 20 \
        --rss-from 100 --out results/y        # 2160-line frames, 20 instances each
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from fastinst_rt import Segmenter
from fastinst_rt.jobs.bench import machine_info
from fastinst_rt.jobs.predict import predict_source
from fastinst_rt.runtime.sources import Frame, Source, open_source


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class LoopedVideo(Source):
    """``video`` decoded ``passes`` times over as one source of consecutive frames."""

    kind = "video"

    def __init__(self, video: str, frames: int, samples: list) -> None:
        first = open_source(video)
        super().__init__(video, fps=first.fps, count=frames)
        first.close()
        self.video, self.samples = video, samples

    def frames(self, vid_stride: int = 1) -> Iterator[Frame]:
        index = 0
        while index < self.count:
            src = open_source(self.video)
            try:
                for f in src.frames():
                    if index >= self.count:
                        return
                    if index % 100 == 0:
                        self.samples.append((index, rss_mb(), time.perf_counter()))
                    yield Frame(index, f.image, f"soak_{index:06d}", f.timestamp)
                    index += 1
            finally:
                src.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--conf", type=float, default=0.3, help="0 with --max-det N: N instances in every frame")
    ap.add_argument("--max-det", type=int, default=100)
    ap.add_argument("--rss-from", type=int, default=500, help="growth is measured from this frame (a multiple of 100)")
    ap.add_argument("--out", required=True, help="path prefix: writes .json, .md and .png")
    args = ap.parse_args()
    seg = Segmenter(args.model, device="cpu", conf=args.conf, max_det=args.max_det)
    samples: list = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = predict_source(seg, LoopedVideo(args.video, args.frames, samples), Path(tmp) / "out",
                                 Path(tmp) / "res.jsonl", progress=False)  # fmt: skip
        wall = time.perf_counter() - start
        # The annotated video is named after the source (video.mp4 for a synth video, <stem>.mp4 otherwise).
        out_video_mb = sum(f.stat().st_size for f in (Path(tmp) / "out").glob("*.mp4")) / 2**20
    at = {i: r for i, r, _ in samples}
    start = args.rss_from
    growth = samples[-1][1] - at[start]
    record = {
        "model": args.model, "video": args.video, "frames": summary.frames, "complete": summary.complete,
        "wall_s": wall, "fps": summary.frames / wall, "rss_from_frame": start, "rss_mb_at_start": at[start],
        "rss_mb_last": samples[-1][1], "last_sample_frame": samples[-1][0], "rss_growth_mb_start_to_last": growth,
        "instances_per_frame": summary.instances / max(summary.frames, 1), "conf": args.conf, "max_det": args.max_det,
        "annotated_video_mb": out_video_mb,
        "stage_ms": summary.speed, "samples": samples, "machine": machine_info(),
        "note": "2-core VM shared with other jobs during the run",
    }  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    last, last_rss = samples[-1][0], samples[-1][1]
    table = (f"| frames | wall | fps | RSS at {start} | RSS at {last} | growth | limit |\n"
             "|---|---|---|---|---|---|---|\n"
             f"| {summary.frames} | {wall:.0f} s | {summary.frames / wall:.1f} | {at[start]:.1f} MB | {last_rss:.1f} MB"
             f" | **{growth:+.1f} MB** | <= 50 MB |\n")  # fmt: skip
    out.with_suffix(".md").write_text(table)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot([s[0] for s in samples], [s[1] for s in samples])
    ax.axvline(start, color="grey", ls=":")
    ax.set_xlabel("frame")
    ax.set_ylabel("RSS (MB)")
    ax.set_title(f"soak: {summary.frames} frames, RSS growth {start}->{samples[-1][0]}: {growth:+.1f} MB")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    print(table)


if __name__ == "__main__":
    main()
