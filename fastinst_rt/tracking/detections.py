"""Detections as a tracker needs them: one per object, with boxes that follow the object's body.

A query-based model has no NMS: two queries (or one query with two classes) can give the same mask, the second at
a lower score, and a tracker would start a second track on it. And a mask can carry a few stray pixels far from
the object (a small model's typical error), which stretch the box around all its pixels although they barely change
the mask. The tracker therefore sees the masks after a mask-IoU suppression, with boxes around their main parts.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..runtime.results import Results

__all__ = ["body_box", "clean_detections", "suppress_duplicates"]


def body_box(mask: np.ndarray, box: np.ndarray, min_part: float) -> np.ndarray:
    """xyxy box (x2, y2 exclusive) of the connected parts of ``mask`` with at least ``min_part`` x the largest part's
    area (8-connectivity); ``box`` is the mask's full box, inside which the search runs."""
    x1, y1, x2, y2 = (int(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        return np.asarray(box, np.float32)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask[y1:y2, x1:x2].astype(np.uint8), connectivity=8)
    if n <= 2:  # background plus one part: the full box is the body's
        return np.asarray(box, np.float32)
    parts = stats[1:]
    keep = parts[:, cv2.CC_STAT_AREA] >= min_part * parts[:, cv2.CC_STAT_AREA].max()
    left, top = parts[keep, cv2.CC_STAT_LEFT], parts[keep, cv2.CC_STAT_TOP]
    right, bottom = left + parts[keep, cv2.CC_STAT_WIDTH], top + parts[keep, cv2.CC_STAT_HEIGHT]
    return np.array([x1 + left.min(), y1 + top.min(), x1 + right.max(), y1 + bottom.max()], np.float32)


def suppress_duplicates(results: Results, max_iou: float) -> np.ndarray:
    """Indices (by decreasing score) of the instances whose mask overlaps no higher-scored kept mask by more than
    ``max_iou`` IoU. Overlaps are computed inside the two boxes' intersection only."""
    order = np.argsort(-results.scores, kind="stable")
    areas = results.masks.sum((1, 2))
    kept: list[int] = []
    for i in order:
        a = results.boxes[i]
        duplicate = False
        for j in kept:
            b = results.boxes[j]
            x1, y1 = int(max(a[0], b[0])), int(max(a[1], b[1]))
            x2, y2 = int(min(a[2], b[2])), int(min(a[3], b[3]))
            if x2 <= x1 or y2 <= y1:
                continue
            inter = int(np.count_nonzero(results.masks[i, y1:y2, x1:x2] & results.masks[j, y1:y2, x1:x2]))
            if inter / max(areas[i] + areas[j] - inter, 1) > max_iou:
                duplicate = True
                break
        if not duplicate:
            kept.append(int(i))
    return np.array(kept, np.int64)


def clean_detections(results: Results, max_iou: float = 0.7, min_part: float = 0.2) -> Results:
    """``results`` without duplicate masks (``suppress_duplicates``), by decreasing score, with ``body_box`` boxes."""
    kept = results[suppress_duplicates(results, max_iou)]
    boxes = np.stack([body_box(m, b, min_part) for m, b in zip(kept.masks, kept.boxes)]) if len(kept) else kept.boxes
    out = Results(kept.masks, kept.scores, kept.labels, kept.class_names, boxes.reshape(-1, 4), kept.speed)
    out.frame = results.frame
    return out
