"""A small ByteTrack-style tracker on the boxes of ``Results``: persistent ids across frames.

The method of ByteTrack (Zhang et al., ECCV 2022), written from the paper: a constant-velocity Kalman filter per
track predicts its box; detections are split by score; the confident ones are matched first to every track by IoU
with the predicted boxes, and the tracks left over get a second chance with the low-score detections (the ones
occlusion or blur made unsure), which is what keeps ids through partial occlusions. Tracks that are lost are kept
for ``max_lost`` frames and can be found again; new tracks start from unmatched confident detections and are
confirmed by a second hit (except in the first frame).

Why not a library: the maintained ByteTrack packages (e.g. ``supervision``'s) pull a second OpenCV or torch into
the runtime, and the algorithm is ~150 lines over numpy. Assignment is ``assignment.linear_assignment``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..runtime.results import Results
from .assignment import match
from .detections import clean_detections

__all__ = ["ByteTracker", "box_iou"]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, B) IoU of xyxy boxes a (A, 4) and b (B, 4)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-9)


class _Kalman:
    """Constant-velocity model of (cx, cy, w, h); process and measurement noise scale with the box size, as in
    SORT/ByteTrack (position 1/20 of the size, velocity 1/160 per frame)."""

    F = np.eye(8) + np.eye(8, k=4)
    H = np.eye(4, 8)

    def __init__(self, box: np.ndarray) -> None:
        z = _xyxy_to_cxcywh(box)
        self.x = np.concatenate([z, np.zeros(4)])
        size = np.array([z[2], z[3], z[2], z[3]])
        self.P = np.diag(np.concatenate([2 * size / 20, 10 * size / 160]) ** 2)

    def predict(self) -> None:
        size = np.maximum(np.array([self.x[2], self.x[3]] * 2), 1.0)
        q = np.diag(np.concatenate([size / 20, size / 160]) ** 2)
        self.x = self.F @ self.x
        self.P = self.F @ self.P @ self.F.T + q

    def update(self, box: np.ndarray) -> None:
        z = _xyxy_to_cxcywh(box)
        size = np.maximum(np.array([z[2], z[3]] * 2), 1.0)
        s = self.H @ self.P @ self.H.T + np.diag((size / 20) ** 2)
        gain = self.P @ self.H.T @ np.linalg.inv(s)
        self.x = self.x + gain @ (z - self.H @ self.x)
        self.P = (np.eye(8) - gain @ self.H) @ self.P

    def box(self) -> np.ndarray:
        cx, cy, w, h = self.x[:4]
        w, h = max(w, 1.0), max(h, 1.0)
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def _xyxy_to_cxcywh(b: np.ndarray) -> np.ndarray:
    return np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0], b[3] - b[1]], dtype=np.float64)


@dataclass(eq=False)
class _Track:
    track_id: int
    kalman: _Kalman
    label: int
    score: float
    last_frame: int
    confirmed: bool
    lost: bool = False
    hits: int = 1
    history: list[tuple[float, float]] = field(default_factory=list)

    def hit(self, box: np.ndarray, label: int, score: float, frame: int) -> None:
        self.kalman.update(box)
        self.label, self.score, self.last_frame = label, score, frame
        self.lost, self.hits = False, self.hits + 1
        self.confirmed = True


class ByteTracker:
    """Give the instances of consecutive ``Results`` persistent ids.

    Args:
        high_score: detections at or above it are matched first, and may start tracks.
        low_score: detections between ``low_score`` and ``high_score`` are only used to continue tracks.
        new_track_score: an unmatched detection starts a track only from this score.
        match_iou: least IoU (with the predicted box) for the first association; ``low_match_iou`` for the second
            (low-score detections must overlap more); ``new_match_iou`` to confirm a track seen once.
        max_lost: frames a lost track is kept before it is forgotten.
        duplicate_iou: masks overlapping a higher-scored one by more than this IoU are dropped first (no NMS in
            the model); ``min_part``: box parts smaller than this fraction of the largest part are ignored (see
            ``detections.clean_detections``).
    """

    def __init__(self, high_score: float = 0.5, low_score: float = 0.1, new_track_score: float = 0.6,
                 match_iou: float = 0.3, low_match_iou: float = 0.5, new_match_iou: float = 0.3,
                 max_lost: int = 30, duplicate_iou: float = 0.7, min_part: float = 0.2) -> None:  # fmt: skip
        if not 0.0 <= low_score <= high_score <= 1.0:
            raise ValueError(f"need 0 <= low_score <= high_score <= 1, got {low_score} and {high_score}")
        self.high_score, self.low_score, self.new_track_score = high_score, low_score, new_track_score
        self.match_iou, self.low_match_iou, self.new_match_iou = match_iou, low_match_iou, new_match_iou
        self.max_lost, self.duplicate_iou, self.min_part = max_lost, duplicate_iou, min_part
        self.reset()

    def reset(self) -> None:
        """Forget every track and start the ids and frame count again (a new video)."""
        self.tracks: list[_Track] = []
        self.frame = -1
        self._next_id = 1

    def update(self, results: Results) -> Results:
        """Associate one frame's instances; returns the tracked ones by decreasing score, with ``track_ids`` set
        and boxes around the masks' main parts."""
        self.frame += 1
        results = clean_detections(results, self.duplicate_iou, self.min_part)
        boxes, scores = results.boxes.astype(np.float64), results.scores
        for t in self.tracks:
            t.kalman.predict()
        high = np.nonzero(scores >= self.high_score)[0]
        low = np.nonzero((scores >= self.low_score) & (scores < self.high_score))[0]
        ids = np.full(len(results), -1, np.int64)

        confirmed = [t for t in self.tracks if t.confirmed]
        # Stage 1: confident detections against every confirmed track, lost ones included (they may come back).
        rest_high = self._associate(confirmed, high, boxes, results, ids, self.match_iou)
        # Stage 2: tracks still visible but unmatched against the low-score detections.
        waiting = [t for t in confirmed if _index_of(t, ids) is None and not t.lost]
        self._associate(waiting, low, boxes, results, ids, self.low_match_iou)
        # Tentative tracks (seen once) are confirmed by a confident detection, or dropped.
        tentative = [t for t in self.tracks if not t.confirmed]
        rest_high = self._associate(tentative, rest_high, boxes, results, ids, self.new_match_iou)
        matched = set(ids[ids >= 0].tolist())
        self.tracks = [t for t in self.tracks if t.confirmed or t.track_id in matched]
        for t in self.tracks:
            if t.track_id not in matched:
                t.lost = True
        for i in rest_high:
            if scores[i] >= self.new_track_score:
                track = _Track(self._next_id, _Kalman(boxes[i]), int(results.labels[i]), float(scores[i]),
                               self.frame, confirmed=self.frame == 0)  # fmt: skip
                self._next_id += 1
                self.tracks.append(track)
                if track.confirmed:
                    ids[i] = track.track_id
        self.tracks = [t for t in self.tracks if self.frame - t.last_frame <= self.max_lost]
        keep = np.nonzero(ids >= 0)[0]
        out = results[keep]
        out.track_ids = ids[keep]
        for t in self.tracks:
            if t.last_frame == self.frame:  # the filtered centre: smoother than the detections' own
                b = t.kalman.box()
                t.history = (t.history + [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)])[-64:]
        return out

    def _associate(self, tracks: list[_Track], dets: np.ndarray, boxes: np.ndarray, results: Results,
                   ids: np.ndarray, min_iou: float) -> np.ndarray:  # fmt: skip
        """Match ``tracks`` to detections ``dets`` (indices) by IoU; sets ``ids``; returns the unmatched dets."""
        if not len(tracks) or not len(dets):
            return dets
        predicted = np.stack([t.kalman.box() for t in tracks])
        cost = 1.0 - box_iou(predicted, boxes[dets])
        pairs, _, unmatched = match(cost, 1.0 - min_iou)
        for ti, di in pairs:
            d = dets[di]
            tracks[ti].hit(boxes[d], int(results.labels[d]), float(results.scores[d]), self.frame)
            ids[d] = tracks[ti].track_id
        return dets[unmatched]

    def trails(self) -> dict[int, list[tuple[float, float]]]:
        """Recent box centres (x, y) of the tracks seen in the last frame, by id, oldest first."""
        return {t.track_id: list(t.history) for t in self.tracks if t.last_frame == self.frame and t.confirmed}


def _index_of(track: _Track, ids: np.ndarray) -> int | None:
    hit = np.nonzero(ids == track.track_id)[0]
    return int(hit[0]) if len(hit) else None
