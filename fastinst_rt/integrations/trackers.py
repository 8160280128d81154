"""The ``trackers`` package's algorithms (Roboflow's: SORT, ByteTrack, OC-SORT, BoT-SORT, ...) as a ``Tracker``.

``pip install 'fastinst-rt[trackers]'`` (Python >= 3.10). trackers 2.6 needs numpy >= 2, scipy, supervision,
opencv-python, rich and requests, and no torch (torch only for its ``mask`` extra, which this adapter does not use):
it fits beside the core runtime, at the cost of ``opencv-python`` installed next to the core's headless OpenCV. The
runtime never imports it; ``TrackersAdapter`` does, when made.

Its trackers take ``supervision.Detections`` and return them with ``tracker_id`` (-1: not tracked); the adapter
converts our ``Results`` (``integrations.supervision``), hands them over with each instance's index in ``data``, and
returns the tracked instances of the frame by decreasing score, like ``ByteTracker``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..runtime.results import Results
from ..tracking.detections import clean_detections
from .supervision import to_supervision

__all__ = ["TRACKERS", "TrackersAdapter"]

# Our names for the trackers package's classes that track boxes alone (McByte needs a mask model: not here).
TRACKERS = {"sort": "SORTTracker", "bytetrack": "ByteTrackTracker", "ocsort": "OCSORTTracker",
            "botsort": "BoTSORTTracker", "cbiou": "CBIoUTracker"}  # fmt: skip
_INDEX = "fastinst_index"  # where each detection's position in our Results rides through the tracker


class TrackersAdapter:
    """A ``trackers`` tracker behind our ``Tracker`` protocol.

    Args:
        tracker: a name of ``TRACKERS`` (made with ``options``), or a tracker object already made (anything with
            ``update(sv.Detections) -> sv.Detections`` and ``reset()``).
        low_score: detections below it are not passed on (the stream is run down to it, see ``Tracker``).
        clean: first drop duplicate masks and box the masks' main parts (``detections.clean_detections``), as
            ``ByteTracker`` does: a query-based model has no NMS.
        options: keyword arguments of the tracker's class (e.g. ``lost_track_buffer=30``).
    """

    def __init__(self, tracker: str | Any = "bytetrack", low_score: float = 0.1, clean: bool = True,
                 **options: Any) -> None:  # fmt: skip
        if isinstance(tracker, str):
            import trackers

            if tracker not in TRACKERS:
                raise ValueError(f"unknown tracker {tracker!r}: one of {', '.join(TRACKERS)}")
            tracker = getattr(trackers, TRACKERS[tracker])(**options)
        self.tracker, self.low_score, self.clean = tracker, low_score, clean
        self._history: dict[int, list[tuple[float, float]]] = {}
        self._last: dict[int, int] = {}  # track id -> the last frame it was seen in
        self._seen: set[int] = set()
        self._frame = -1

    def update(self, results: Results) -> Results:
        """Track one frame: the tracked instances by decreasing score, ``track_ids`` set, ``frame`` kept."""
        frame = results.frame
        if self.clean:
            results = clean_detections(results)
        results = results[results.scores >= self.low_score]
        det = to_supervision(results)
        det.data[_INDEX] = np.arange(len(results))
        out = self.tracker.update(det)
        ids = np.asarray(out.tracker_id if out.tracker_id is not None else np.zeros(0), np.int64)
        index = np.asarray(out.data.get(_INDEX, np.zeros(0)), np.int64)[ids >= 0]
        ids = ids[ids >= 0]
        order = np.argsort(-results.scores[index], kind="stable")
        tracked = results[index[order]]
        tracked.track_ids, tracked.frame = ids[order], frame
        self._remember(tracked)
        return tracked

    def _remember(self, tracked: Results) -> None:
        """Keep the last 64 box centres of the tracks seen in this frame (for ``trails``); forget tracks unseen for
        64 frames (the memory stays bounded on a long stream)."""
        self._frame += 1
        self._seen = set(tracked.track_ids.tolist())
        for tid, (x1, y1, x2, y2) in zip(tracked.track_ids.tolist(), tracked.boxes.tolist()):
            self._history[tid] = (self._history.get(tid, []) + [((x1 + x2) / 2, (y1 + y2) / 2)])[-64:]
            self._last[tid] = self._frame
        for tid in [t for t, f in self._last.items() if self._frame - f > 64]:
            del self._last[tid], self._history[tid]

    def trails(self) -> dict[int, list[tuple[float, float]]]:
        """Recent box centres (x, y) of the tracks seen in the last frame, by id, oldest first."""
        return {tid: list(self._history[tid]) for tid in self._seen}

    def reset(self) -> None:
        """Forget every track (the wrapped tracker's ``reset``) and the trails."""
        self.tracker.reset()
        self._history, self._last, self._seen, self._frame = {}, {}, set(), -1
