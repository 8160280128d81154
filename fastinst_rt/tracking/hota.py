"""HOTA, DetA and AssA (Luiten et al., IJCV 2021) of MOTChallenge boxes, computed by TrackEval's own metric code.

Why TrackEval (the ``trackeval`` package, 1.3 on PyPI) and not the ``trackers`` package's ``trackers.eval``: TrackEval
is the HOTA authors' reference implementation, the one benchmark numbers are computed with; its 1.3 release runs on
numpy 2 (it declares numpy >= 2.3 on Python 3.11, and none of the aliases numpy 2 removed are left in it), and its
metric classes take one sequence's arrays directly, so the scores come from the frames already read here, without
writing its folder layout. ``trackers.eval`` is a port of the same code, but importing it imports the whole
``trackers`` package (supervision, its trackers and their OpenCV calls) for a metric. Both pull ``opencv-python``
in as a requirement, beside the ``opencv-python-headless`` of the core (the same cv2 module, twice installed); that
is why HOTA is in the optional ``metrics`` extra and never imported by the runtime.

``tests/test_hota.py`` checks ``hota_metrics`` against TrackEval's whole MOTChallenge evaluator on files, to 1e-3.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .bytetrack import box_iou

__all__ = ["hota_metrics", "require_trackeval"]

MotFrames = dict[int, tuple[np.ndarray, np.ndarray]]


def require_trackeval() -> Any:
    """The trackeval module; RuntimeError saying how to install it."""
    try:
        import trackeval
    except ImportError:
        raise RuntimeError("HOTA needs TrackEval: pip install 'fastinst-rt[metrics]'") from None
    return trackeval


def _contiguous(ids: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
    """Ids of every frame renumbered 0..K-1 (TrackEval indexes arrays by id), and K."""
    unique = np.unique(np.concatenate(ids)) if ids else np.zeros(0, np.int64)
    return [np.searchsorted(unique, i).astype(int) for i in ids], len(unique)


def sequence_data(truth: MotFrames, predicted: MotFrames, num_frames: int) -> dict[str, Any]:
    """One sequence as TrackEval's metrics take it (what its datasets' ``get_preprocessed_seq_data`` returns): per
    frame 1..``num_frames``, the ids (renumbered 0..K-1) and the (G, T) box IoU of ground truth and predictions."""
    empty = (np.zeros(0, np.int64), np.zeros((0, 4)))
    gt = [truth.get(f, empty) for f in range(1, num_frames + 1)]
    hyp = [predicted.get(f, empty) for f in range(1, num_frames + 1)]
    gt_ids, num_gt_ids = _contiguous([g[0] for g in gt])
    hyp_ids, num_hyp_ids = _contiguous([h[0] for h in hyp])
    return {
        "num_timesteps": num_frames, "num_gt_ids": num_gt_ids, "num_tracker_ids": num_hyp_ids,
        "num_gt_dets": sum(len(i) for i in gt_ids), "num_tracker_dets": sum(len(i) for i in hyp_ids),
        "gt_ids": gt_ids, "tracker_ids": hyp_ids, "seq": "seq",
        "similarity_scores": [box_iou(g[1], h[1]) for g, h in zip(gt, hyp)],
    }  # fmt: skip


def hota_metrics(truth: MotFrames, predicted: MotFrames, num_frames: int | None = None) -> dict[str, float]:
    """HOTA, DetA, AssA and LocA of ``predicted`` against ``truth`` ({frame: (ids (N,), xyxy boxes (N, 4))}, as
    ``mot.read_mot`` gives them), averaged over TrackEval's 19 IoU thresholds 0.05..0.95, over frames 1 to
    ``num_frames`` (default: the last frame of the ground truth). Every ground-truth box counts (no distractor
    classes, as in MOTChallenge files of class 1 and flag 1)."""
    trackeval = require_trackeval()
    frames = num_frames or max(truth, default=0)
    res = trackeval.metrics.HOTA({"PRINT_CONFIG": False}).eval_sequence(sequence_data(truth, predicted, frames))
    return {name.lower(): float(np.mean(res[name])) for name in ("HOTA", "DetA", "AssA", "LocA")}
