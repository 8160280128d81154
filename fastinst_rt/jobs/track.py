"""``fastinst-rt track``: the predict job with a tracker, MOTChallenge output, and scores against a ground truth."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..runtime.segmenter import Segmenter
from ..runtime.sources import SourceLike
from ..tracking import ByteTracker
from .predict import PredictSummary, predict_source

if TYPE_CHECKING:
    from ..tracking.mot import MotFrames

__all__ = ["track_source"]


def track_source(
    segmenter: Segmenter,
    source: SourceLike,
    save_dir: str | os.PathLike | None = None,
    json_path: str | os.PathLike | None = None,
    mot_path: str | os.PathLike | None = None,
    *,
    tracker: ByteTracker | None = None,
    gt_path: str | os.PathLike | None = None,
    **options: Any,
) -> tuple[PredictSummary, dict[str, float] | None]:
    """Track every instance of ``source`` (see ``predict_source`` for the outputs and ``options``).

    Returns the summary and, when ``gt_path`` (MOTChallenge ground truth) and ``mot_path`` are given, the track
    metrics of ``tracking.mot.track_metrics`` (MOTA, IDF1, ID switches, ...). The ground truth is read and checked
    before the first frame runs: a missing, unparsable or empty file is refused with nothing written.
    """
    truth = _ground_truth(gt_path, mot_path) if gt_path else None
    summary = predict_source(segmenter, source, save_dir, json_path, tracker=tracker or ByteTracker(),
                             mot_path=mot_path, **options)  # fmt: skip
    if truth is None or not summary.frames:
        return summary, None
    from ..tracking.mot import track_metrics

    return summary, track_metrics(truth, mot_path)


def _ground_truth(gt_path: str | os.PathLike, mot_path: str | os.PathLike | None) -> MotFrames:
    """The ground truth, read and checked (and py-motmetrics found) before any work; never overwritten by --mot."""
    from ..tracking.hota import require_trackeval
    from ..tracking.mot import read_ground_truth, require_motmetrics

    if not mot_path:
        raise ValueError("scoring against ground truth needs --mot FILE")
    if Path(mot_path).resolve() == Path(gt_path).resolve():
        raise ValueError(f"--mot {mot_path} is the ground truth --gt: it would be overwritten")
    require_motmetrics()
    require_trackeval()
    return read_ground_truth(gt_path)
