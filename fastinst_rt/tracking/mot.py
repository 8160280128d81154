"""MOTChallenge text files and track quality (MOTA, IDF1, ID switches) through py-motmetrics.

The MOT format: one line per box, ``frame,id,x,y,w,h,score,-1,-1,-1`` with frames counted from 1 and boxes in pixels
(x, y the top-left corner). Ground truth from ``fastinst-rt synth --video`` has ``frame,id,x,y,w,h,1,class,visibility``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

import numpy as np

from ..runtime.results import Results
from .bytetrack import box_iou

__all__ = ["mot_lines", "read_mot", "track_metrics"]


def mot_lines(results: Results, frame_number: int) -> list[str]:
    """MOTChallenge lines of one frame's tracked instances (``frame_number`` counts from 1)."""
    if results.track_ids is None:
        raise ValueError("results have no track_ids: use Segmenter.track")
    lines = []
    for tid, score, (x1, y1, x2, y2) in zip(results.track_ids.tolist(), results.scores.tolist(), results.boxes):
        lines.append(f"{frame_number},{tid},{x1:.1f},{y1:.1f},{x2 - x1:.1f},{y2 - y1:.1f},{score:.4f},-1,-1,-1")
    return lines


def read_mot(path: str | os.PathLike | IO[str]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{frame: (ids (N,) int64, boxes (N, 4) float64 xyxy)} from a MOTChallenge text file."""
    text = Path(path).read_text() if isinstance(path, (str, os.PathLike)) else path.read()
    rows: dict[int, list[tuple[int, list[float]]]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(",")
        try:
            frame, tid, x, y, w, h = int(float(parts[0])), int(float(parts[1])), *map(float, parts[2:6])
        except (ValueError, IndexError):
            raise ValueError(f"{path}: line {number} is not MOTChallenge 'frame,id,x,y,w,h,...': {line!r}") from None
        rows.setdefault(frame, []).append((tid, [x, y, x + w, y + h]))
    return {
        f: (np.array([r[0] for r in v], np.int64), np.array([r[1] for r in v], np.float64)) for f, v in rows.items()
    }


def track_metrics(gt: str | os.PathLike, predicted: str | os.PathLike, min_iou: float = 0.5) -> dict[str, float]:
    """MOTA, IDF1, ID switches and friends of ``predicted`` against ``gt`` (MOTChallenge files), boxes matched at
    IoU >= ``min_iou``, over every frame of the ground truth.

    Needs py-motmetrics (the ``dev`` extra). Distances are computed here (1 - IoU, NaN where IoU < ``min_iou``), as
    motmetrics' own ``iou_matrix`` calls ``np.asfarray``, which numpy 2 removed.
    """
    try:
        import motmetrics as mm
    except ImportError:
        raise RuntimeError("track metrics need py-motmetrics: pip install motmetrics") from None
    truth, hyp = read_mot(gt), read_mot(predicted)
    acc = mm.MOTAccumulator(auto_id=False)
    empty = (np.zeros(0, np.int64), np.zeros((0, 4)))
    for frame in range(1, max(truth) + 1 if truth else 1):
        (gid, gbox), (hid, hbox) = truth.get(frame, empty), hyp.get(frame, empty)
        dist = 1.0 - box_iou(gbox, hbox)
        dist[dist > 1.0 - min_iou] = np.nan
        acc.update(gid.tolist(), hid.tolist(), dist, frameid=frame)
    names = ["mota", "motp", "idf1", "num_switches", "precision", "recall", "num_false_positives", "num_misses",
             "mostly_tracked", "num_unique_objects", "num_frames"]  # fmt: skip
    summary = mm.metrics.create().compute(acc, metrics=names, name="run")
    return {k: float(summary[k].iloc[0]) for k in names}
