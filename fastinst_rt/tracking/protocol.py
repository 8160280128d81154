"""What ``Segmenter.track`` and ``fastinst-rt track``'s pipeline need from a tracker: the ``Tracker`` protocol."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..runtime.results import Results

__all__ = ["Tracker"]


@runtime_checkable
class Tracker(Protocol):
    """Anything that gives the instances of consecutive frames persistent ids.

    Required:
        ``update(results) -> Results``: called once per frame, in order, with that frame's ``Results``; returns the
        instances it tracks (any subset, any order) with ``track_ids`` (N,) int64 set, ``frame`` kept.
        ``reset()``: forget every track (a new video).

    Optional, used when present:
        ``low_score`` (float): the lowest score the tracker uses; the stream then keeps detections down to
        ``min(conf, low_score)`` (ByteTrack's second association stage needs the unsure ones).
        ``trails() -> {track_id: [(x, y), ...]}``: recent centres, drawn by ``--trails`` / ``Results.draw``.

    ``fastinst_rt.tracking.ByteTracker`` satisfies it, as does ``integrations.trackers.TrackersAdapter`` (the
    ``trackers`` package's SORT, ByteTrack, OC-SORT, ...).
    """

    def update(self, results: Results) -> Results: ...

    def reset(self) -> None: ...
