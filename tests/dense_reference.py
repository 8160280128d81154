"""The post-processing, COCO encoding and drawing as they were before masks became crops: whole-image masks.

Kept verbatim (only renamed) as the reference that the crop path must reproduce bit for bit: tests/test_mask_crops.py
compares against it, and benchmarks/mask_crops.py times it.
"""

from __future__ import annotations

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from fastinst_rt.runtime.postprocess import upsample_mask_logits
from fastinst_rt.runtime.results import _class_color, _put_label


def dense_instances_from_pairs(scores, labels, query, masks, resized_size, padded_size, orig_size, *, conf=0.0):
    """The former ``instances_from_pairs``: (scores (N',) float32, labels (N',) int64, masks (N', H, W) bool)."""
    probs = np.asarray(scores, dtype=np.float32).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    query = np.asarray(query).reshape(-1).astype(np.int64)
    low = np.asarray(masks, dtype=np.float32)
    H, W = orig_size
    keep = np.flatnonzero(probs >= conf)
    if keep.size == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros((0, H, W), bool)
    probs, labels, query, low = probs[keep], labels[keep], query[keep], low[keep]
    _, first, inverse = np.unique(query, return_index=True, return_inverse=True)
    masks_u, mask_scores = dense_masks_and_scores(low[first], resized_size, padded_size, orig_size)
    inverse = inverse.reshape(-1)
    scores = probs * mask_scores[inverse]
    keep = np.flatnonzero(scores >= conf)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    return scores[keep].astype(np.float32), labels[keep].astype(np.int64), masks_u[inverse[keep]]


def dense_masks_and_scores(low, resized_size, padded_size, orig_size):
    """The former ``_masks_and_scores``: (n, h, w) logits -> masks (n, H, W) bool, mask scores (n,) float32."""
    H, W = orig_size
    masks_u = np.empty((low.shape[0], H, W), dtype=bool)
    mask_scores = np.empty(low.shape[0], dtype=np.float32)
    for j in range(low.shape[0]):
        logit = upsample_mask_logits(low[j : j + 1], resized_size, padded_size, orig_size)[0]
        np.greater(logit, 0, out=masks_u[j])
        positive = logit[masks_u[j]].astype(np.float64)
        mask_scores[j] = (1.0 / (1.0 + np.exp(-positive))).sum() / (positive.size + 1e-6)
    return masks_u, mask_scores


def dense_rles(masks: np.ndarray) -> list[dict]:
    """The former ``to_coco`` encoding: pycocotools on the (N, H, W) bool masks."""
    if len(masks) == 0:
        return []
    return mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))


def dense_draw(res, masks, image, color="bgr", alpha=0.5, show_labels=True):
    """The former ``Results.draw`` (no trails) on whole-image ``masks`` (N, H, W) bool."""
    out = np.array(image, order="C", copy=True)
    thick = max(1, round(min(res.orig_shape) / 400))
    for i in np.argsort(res.scores, kind="stable"):
        x1, y1, x2, y2 = (int(v) for v in res.boxes[i])
        if x2 <= x1 or y2 <= y1:
            continue
        ids = res.track_ids
        rgb = _class_color(int(ids[i]) if ids is not None else int(res.labels[i]))
        col = rgb[::-1] if color == "bgr" else rgb
        m = masks[i, y1:y2, x1:x2]
        region = out[y1:y2, x1:x2]
        region[m] = (region[m] * (1.0 - alpha) + np.array(col) * alpha + 0.5).astype(np.uint8)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x1, y1))
        cv2.drawContours(out, contours, -1, col, thick, cv2.LINE_AA)
        if show_labels:
            cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), col, thick)
            prefix = f"#{ids[i]} " if ids is not None else ""
            text = f"{prefix}{res.class_names[res.labels[i]]} {res.scores[i]:.2f}"
            _put_label(out, text, (x1, y1), col, thick)
    return out
