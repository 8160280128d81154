"""Track quality of the bundled model on synthetic videos from unseen seeds: HOTA, DetA, AssA, MOTA, IDF1.

For each seed: ``fastinst-rt synth --video --frames N --seed S`` (the demo model was trained on still images of
seed 0; video seeds never were), the model run once over the video (down to score 0.1, as ``Segmenter.track``
streams for a tracker whose ``low_score`` is 0.1), then each tracker of ``--trackers`` on those same detections:
``ours`` (``ByteTracker``) and the ``trackers`` package's ``sort``, ``bytetrack``, ``ocsort`` (``TrackersAdapter``,
their default settings). Scored against ``gt.txt`` by py-motmetrics (MOTA, IDF1 at IoU >= 0.5) and TrackEval
(HOTA). Also reported, as a diagnosis only: the same scores when the ground truth and predicted boxes that touch the
image border are left out (shapes entering or leaving, cut by the edge, are where the model misses most). Writes
JSON, a markdown table and a contact sheet of annotated frames.

    python benchmarks/track_quality.py --seeds 1001 1002 1003 --frames 300 --out results/x --sheet docs/tracking.jpg
    python benchmarks/track_quality.py --frames 100 --trackers ours sort bytetrack ocsort --out results/y
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import cv2
import numpy as np

from fastinst_rt import Segmenter
from fastinst_rt.tracking import ByteTracker, Tracker
from fastinst_rt.tracking.mot import mot_lines, track_metrics
from fastinst_rt.training.synth_video import make_synthetic_video


def _interior(src: Path, dst: Path, h: int, w: int) -> None:
    """``src`` without the boxes that touch the image border."""
    keep = []
    for line in src.read_text().splitlines():
        x, y, bw, bh = (float(v) for v in line.split(",")[2:6])
        if x > 0.5 and y > 0.5 and x + bw < w - 0.5 and y + bh < h - 0.5:
            keep.append(line)
    dst.write_text("\n".join(keep) + "\n")


def make_tracker(name: str) -> Tracker:
    if name == "ours":
        return ByteTracker()
    from fastinst_rt.integrations.trackers import TrackersAdapter

    return TrackersAdapter(name)


def run_seed(seed: int, frames: int, work: Path, sheet_frames: list | None, model: str = "fastinst-demo",
             trackers: tuple[str, ...] = ("ours",)) -> list[dict]:  # fmt: skip
    """One row per tracker: the scores of its tracks on the video of ``seed`` (the same detections for all)."""
    video = make_synthetic_video(work / str(seed), frames=frames, seed=seed)
    detections = list(Segmenter(model).stream(str(video), conf=0.1))
    sheet_at = set(np.linspace(20, frames - 1, 8).astype(int).tolist()) if sheet_frames is not None else ()
    rows = []
    for name in trackers:
        tracker, lines = make_tracker(name), []
        for det in detections:
            res = tracker.update(det)
            lines += mot_lines(res, res.frame.index + 1)
            if name == trackers[0] and res.frame.index in sheet_at:
                sheet_frames.append(res.draw(res.frame.image, color="rgb", trails=tracker.trails()))
        rows.append({"seed": seed, "frames": frames, "tracker": name, **_scores(video.parent, lines, name)})
    return rows


def _scores(folder: Path, lines: list[str], name: str) -> dict:
    pred, gt = folder / f"pred_{name}.txt", folder / "gt.txt"
    pred.write_text("\n".join(lines) + "\n")
    full = track_metrics(gt, pred)
    _interior(gt, gt.with_name("gt_interior.txt"), 256, 320)
    _interior(pred, pred.with_name(f"pred_{name}_interior.txt"), 256, 320)
    interior = track_metrics(gt.with_name("gt_interior.txt"), pred.with_name(f"pred_{name}_interior.txt"))
    return {"all": full, "interior": interior}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1001, 1002, 1003])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--model", default="fastinst-demo", help="zoo name or checkpoint (default fastinst-demo)")
    ap.add_argument("--out", required=True, help="path prefix: writes .json and .md")
    ap.add_argument("--sheet", help="contact sheet of 8 annotated frames of the first seed (JPEG)")
    ap.add_argument("--trackers", nargs="+", default=["ours"], choices=["ours", "sort", "bytetrack", "ocsort"],
                    help="ours: ByteTracker; the others: the trackers package's, through TrackersAdapter")  # fmt: skip
    args = ap.parse_args()
    sheet: list = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [row for i, s in enumerate(args.seeds)
                for row in run_seed(s, args.frames, Path(tmp), sheet if i == 0 and args.sheet else None, args.model,
                                    tuple(args.trackers))]  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"runs": runs, "model": f"{args.model} (torch, CPU)"}, indent=1))
    rows = ["| tracker | seed | frames | HOTA | DetA | AssA | MOTA | IDF1 | ID switches | precision | recall | "
            "MOTA / IDF1 without border boxes |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in runs:
        a, b = r["all"], r["interior"]
        rows.append(f"| {r['tracker']} | {r['seed']} | {r['frames']} | **{a['hota']:.3f}** | {a['deta']:.3f} | "
                    f"{a['assa']:.3f} | **{a['mota']:.3f}** | **{a['idf1']:.3f}** | {a['num_switches']:.0f} | "
                    f"{a['precision']:.3f} | {a['recall']:.3f} | {b['mota']:.3f} / {b['idf1']:.3f} |")  # fmt: skip
    out.with_suffix(".md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))
    if args.sheet and sheet:
        grid = np.concatenate([np.concatenate(sheet[i : i + 4], axis=1) for i in range(0, 8, 4)], axis=0)
        cv2.imwrite(args.sheet, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
        print(f"wrote {args.sheet}")


if __name__ == "__main__":
    main()
