"""MOTChallenge text files and track quality: MOTA, IDF1, ID switches through py-motmetrics, HOTA through TrackEval.

The MOT format: one line per box, ``frame,id,x,y,w,h,score,-1,-1,-1`` with frames counted from 1 and boxes in pixels
(x, y the top-left corner). Ground truth from ``fastinst-rt synth --video`` has ``frame,id,x,y,w,h,1,class,visibility``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..runtime.results import Results
from .bytetrack import box_iou
from .hota import hota_metrics

__all__ = ["mot_lines", "read_mot", "read_ground_truth", "require_motmetrics", "track_metrics"]


def mot_lines(results: Results, frame_number: int) -> list[str]:
    """MOTChallenge lines of one frame's tracked instances (``frame_number`` counts from 1)."""
    if results.track_ids is None:
        raise ValueError("results have no track_ids: use Segmenter.track")
    lines = []
    for tid, score, (x1, y1, x2, y2) in zip(results.track_ids.tolist(), results.scores.tolist(), results.boxes):
        lines.append(f"{frame_number},{tid},{x1:.1f},{y1:.1f},{x2 - x1:.1f},{y2 - y1:.1f},{score:.4f},-1,-1,-1")
    return lines


MotFrames = dict[int, tuple[np.ndarray, np.ndarray]]


def _parse_line(line: str) -> tuple[int, int, list[float]]:
    """(frame, id, xyxy box) of one MOTChallenge line; ValueError saying what is wrong with it."""
    parts = line.split(",")
    if len(parts) < 6:
        raise ValueError("is not MOTChallenge 'frame,id,x,y,w,h,...'")
    try:
        values = [float(v) for v in parts[:6]]
    except ValueError:
        raise ValueError("is not MOTChallenge 'frame,id,x,y,w,h,...' (a field is not a number)") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError("holds NaN or inf")
    frame, tid, x, y, w, h = values
    if frame != int(frame) or frame < 1 or tid != int(tid):
        raise ValueError("needs a whole frame number >= 1 and a whole id")
    if w < 0 or h < 0:
        raise ValueError("has a negative width or height")
    return int(frame), int(tid), [x, y, x + w, y + h]


def _text(path: str | os.PathLike | IO[str]) -> str:
    if not isinstance(path, (str, os.PathLike)):
        return path.read()
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"no such MOTChallenge file: {path}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file (MOTChallenge lines frame,id,x,y,w,h,...)") from None


def read_mot(path: str | os.PathLike | IO[str]) -> MotFrames:
    """{frame: (ids (N,) int64, boxes (N, 4) float64 xyxy)} from a MOTChallenge text file.

    Every line is checked: six numbers at least, finite, a whole frame number >= 1, a whole id, a width and height
    >= 0; a ValueError names the file and the line."""
    rows: dict[int, list[tuple[int, list[float]]]] = {}
    for number, line in enumerate(_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            frame, tid, box = _parse_line(line)
        except ValueError as e:
            raise ValueError(f"{path}: line {number} {e}: {line[:80]!r}") from None
        rows.setdefault(frame, []).append((tid, box))
    return {
        f: (np.array([r[0] for r in v], np.int64), np.array([r[1] for r in v], np.float64)) for f, v in rows.items()
    }


def read_ground_truth(path: str | os.PathLike) -> MotFrames:
    """``read_mot`` of a ground truth, which must hold at least one box (an empty one would score NaN)."""
    truth = read_mot(path)
    if not truth:
        raise ValueError(f"{path}: the ground truth holds no boxes (MOTChallenge lines frame,id,x,y,w,h,...)")
    return truth


def require_motmetrics() -> Any:
    """The py-motmetrics module; RuntimeError saying how to install it."""
    try:
        import motmetrics
    except ImportError:
        raise RuntimeError("track metrics need py-motmetrics: pip install motmetrics") from None
    return motmetrics


def track_metrics(
    gt: str | os.PathLike | MotFrames, predicted: str | os.PathLike, min_iou: float = 0.5
) -> dict[str, float]:
    """MOTA, IDF1, ID switches and friends of ``predicted`` against ``gt`` (MOTChallenge files, or the ground truth
    already read by ``read_ground_truth``), boxes matched at IoU >= ``min_iou``, over every frame of the ground truth;
    and ``hota``, ``deta``, ``assa``, ``loca`` (TrackEval's, averaged over IoU 0.05..0.95: ``hota.hota_metrics``).

    Needs py-motmetrics and trackeval (the ``metrics`` extra). Distances are computed here (1 - IoU, NaN where
    IoU < ``min_iou``), as motmetrics' own ``iou_matrix`` calls ``np.asfarray``, which numpy 2 removed.
    """
    mm = require_motmetrics()
    truth = gt if isinstance(gt, dict) else read_ground_truth(gt)
    hyp = read_mot(predicted)
    acc = mm.MOTAccumulator(auto_id=False)
    empty = (np.zeros(0, np.int64), np.zeros((0, 4)))
    for frame in range(1, max(truth) + 1):
        (gid, gbox), (hid, hbox) = truth.get(frame, empty), hyp.get(frame, empty)
        dist = 1.0 - box_iou(gbox, hbox)
        dist[dist > 1.0 - min_iou] = np.nan
        acc.update(gid.tolist(), hid.tolist(), dist, frameid=frame)
    names = ["mota", "motp", "idf1", "num_switches", "precision", "recall", "num_false_positives", "num_misses",
             "mostly_tracked", "num_unique_objects", "num_frames"]  # fmt: skip
    summary = mm.metrics.create().compute(acc, metrics=names, name="run")
    return {**{k: float(summary[k].iloc[0]) for k in names}, **hota_metrics(truth, hyp, max(truth))}
