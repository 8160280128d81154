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


def body_box(crop: np.ndarray, box: np.ndarray, min_part: float) -> np.ndarray:
    """xyxy box (x2, y2 exclusive) of the connected parts of a mask with at least ``min_part`` x the largest part's
    area (8-connectivity). ``crop`` is the mask inside ``box``, its full box: (y2 - y1, x2 - x1) bool
    (``CropMasks.crop``)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        return np.asarray(box, np.float32)
    if crop.shape != (y2 - y1, x2 - x1):
        raise ValueError(f"crop of shape {crop.shape} for box {box}")
    n, _, stats, _ = cv2.connectedComponentsWithStats(crop.astype(np.uint8), connectivity=8)
    if n <= 2:  # background plus one part: the full box is the body's
        return np.asarray(box, np.float32)
    parts = stats[1:]
    keep = parts[:, cv2.CC_STAT_AREA] >= min_part * parts[:, cv2.CC_STAT_AREA].max()
    left, top = parts[keep, cv2.CC_STAT_LEFT], parts[keep, cv2.CC_STAT_TOP]
    right, bottom = left + parts[keep, cv2.CC_STAT_WIDTH], top + parts[keep, cv2.CC_STAT_HEIGHT]
    return np.array([x1 + left.min(), y1 + top.min(), x1 + right.max(), y1 + bottom.max()], np.float32)


def suppress_duplicates(results: Results, max_iou: float) -> np.ndarray:
    """Indices (by decreasing score) of the instances whose mask overlaps no higher-scored kept mask by more than
    ``max_iou`` IoU. Overlaps are counted on the mask crops, inside the two masks' box intersection only."""
    order = np.argsort(-results.scores, kind="stable")
    masks = results.crop_masks
    areas = masks.areas()
    kept: list[int] = []
    for i in order:
        duplicate = False
        for j in kept:
            inter = masks.intersection(int(i), masks, j)  # 0 without a box overlap, at no cost
            if inter and inter / max(areas[i] + areas[j] - inter, 1) > max_iou:
                duplicate = True
                break
        if not duplicate:
            kept.append(int(i))
    return np.array(kept, np.int64)


def clean_detections(results: Results, max_iou: float = 0.7, min_part: float = 0.2) -> Results:
    """``results`` without duplicate masks (``suppress_duplicates``), by decreasing score, with ``body_box`` boxes."""
    kept = results[suppress_duplicates(results, max_iou)]
    masks = kept.crop_masks
    boxes = np.stack([body_box(*masks.crop(i), min_part) for i in range(len(kept))]) if len(kept) else kept.boxes
    out = Results(masks, kept.scores, kept.labels, kept.class_names, boxes.reshape(-1, 4), kept.speed)
    out.frame = results.frame
    return out
