"""``fastinst-rt track``: the predict job with a tracker, MOTChallenge output, and scores against a ground truth."""

from __future__ import annotations

import os
from typing import Any

from ..runtime.segmenter import Segmenter
from ..runtime.sources import SourceLike
from ..tracking import ByteTracker
from .predict import PredictSummary, predict_source

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
    metrics of ``tracking.mot.track_metrics`` (MOTA, IDF1, ID switches, ...).
    """
    if gt_path and not mot_path:
        raise ValueError("scoring against ground truth needs --mot FILE")
    summary = predict_source(segmenter, source, save_dir, json_path, tracker=tracker or ByteTracker(),
                             mot_path=mot_path, **options)  # fmt: skip
    if not (gt_path and summary.frames):
        return summary, None
    from ..tracking.mot import track_metrics

    return summary, track_metrics(gt_path, mot_path)
