"""Instance post-processing of FastInst outputs, in numpy/cv2, with the official scores but in the fast order.

The official ``FastInst.instance_inference`` (``fastinst/fastinst.py``) upsamples all 100 mask logit maps to the
padded input size, crops them to the resized image, resizes them to the original image, and only then takes the
top-k query x class pairs. Here the pairs are chosen first (class probability is an upper bound of the final score,
because the mask score is at most 1) and only the masks of the kept queries are upsampled, each query once however
many classes it was kept with, and each only in the window of the image its positive pixels can reach: masks are
returned as ``masks.CropMasks`` (box + crop), which cost what an instance covers. Scores, labels and masks are
those of the official code up to float rounding.

No torch: the ONNX Runtime and TensorRT backends use this module as is.
"""

from __future__ import annotations

import cv2
import numpy as np

from .masks import CropMasks
from .upsample import first_resize, upsample_parts, windowable

__all__ = [
    "boxes_from_masks",
    "instances_from_outputs",
    "instances_from_pairs",
    "select_pairs",
    "upsample_mask_logits",
]

# Masks are resized one map at a time, not as an (H, W, n) stack, measured with OpenCV 5.0 (IPP build):
# - a 1-channel float resize takes OpenCV's IPP/HAL path, ~6x faster than one multi-channel call for 100 COCO-sized
#   maps (35 ms vs 200 ms) and with source coordinates in double (max error vs float64 ~4e-6 of the value range);
# - a stack takes the IPP path for 1, 3 or 4 channels but a float32-coordinate path otherwise (up to ~2e-5 of the
#   value range off), so a query's mask would depend on how many other queries were kept; OpenCV 5 also refuses
#   stacks of more than 128 channels.
# Per-map calls give every query the same arithmetic whatever else is kept, and (n, H, W) masks without a transpose.


def select_pairs(pred_logits: np.ndarray, pred_masks: np.ndarray, max_det: int = 100) -> dict[str, np.ndarray]:
    """The official top-``max_det`` query x class pairs of raw head outputs, in the backends' output contract.

    Args:
        pred_logits: (B, Q, K+1) class logits; the last column is no-object. Any float dtype, computed in float32.
        pred_masks: (B, Q, h, w) mask logits.
        max_det: pairs kept per image (the official top-k, 100); at most Q*K are.

    Returns:
        {"scores", "labels", "query", "masks"} as ``runtime.backends.base.Backend`` describes them, N = min(max_det,
        Q*K). The same pairs as the end-to-end graph's TopK, except for the order of pairs whose probabilities tie.
    """
    logits = np.asarray(pred_logits, dtype=np.float32)
    low = np.asarray(pred_masks, dtype=np.float32)
    if logits.ndim != 3 or logits.shape[2] < 2:
        raise ValueError(f"pred_logits must be (B, Q, K+1) with K >= 1, got shape {logits.shape}")
    if low.ndim != 4 or low.shape[:2] != logits.shape[:2]:
        raise ValueError(f"pred_masks must be (B, Q, h, w) with B, Q = {logits.shape[:2]}, got shape {low.shape}")
    if max_det < 0:
        raise ValueError(f"max_det must be >= 0, got {max_det}")
    num_classes = logits.shape[2] - 1
    # Softmax over K+1 with max subtraction, then drop no-object without renormalizing (as the official code).
    e = np.exp(logits - logits.max(axis=2, keepdims=True))
    probs = (e / e.sum(axis=2, keepdims=True))[:, :, :num_classes].reshape(logits.shape[0], -1)
    # A full stable sort of Q*K (8000) values is cheap and makes the top-k and its ties deterministic.
    order = np.argsort(-probs, axis=1, kind="stable")[:, : min(max_det, probs.shape[1])]
    query = order // num_classes
    return {
        "scores": np.take_along_axis(probs, order, axis=1),
        "labels": (order % num_classes).astype(np.int64),
        "query": query.astype(np.int64),
        "masks": np.take_along_axis(low, query[:, :, None, None], axis=1),
    }


def instances_from_pairs(
    scores: np.ndarray,
    labels: np.ndarray,
    query: np.ndarray,
    masks: np.ndarray,
    resized_size: tuple[int, int],
    padded_size: tuple[int, int],
    orig_size: tuple[int, int],
    *,
    conf: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, CropMasks]:
    """Turn one image's selected pairs into scored instances, as the official ``instance_inference`` does.

    Args:
        scores, labels, query, masks: one image's row of the backends' output contract
            (``runtime.backends.base.Backend``): (N,) class probabilities in ranking order, (N,) classes,
            (N,) query indices, (N, h, w) mask logits of each pair's query.
        resized_size: (h_r, w_r), the image size after the test resize, before padding.
        padded_size: (Hp, Wp), the padded network input size; the masks are first upsampled to it.
        orig_size: (H, W), the original image size the masks are returned at.
        conf: drop instances whose final score is below this (0.0 keeps all, as the official evaluation does).

    Returns:
        ``(scores, labels, masks)``: scores (N',) float32 sorted descending (ties keep the pair order), labels (N',)
        int64 in 0..K-1, masks a ``CropMasks`` of N' instances of the (H, W) image (each mask's tight box and the
        bool pixels in it; ``masks.dense()`` is the (N', H, W) bool array). N' = N when ``conf`` is 0.0, fewer
        otherwise.

    The score of a pair is its class probability * mask score, where the mask score is the mean sigmoid of the
    mask logits over the pixels whose logit is > 0 (0 for an empty mask), measured at the original size. Each
    query's mask is upsampled once, however many classes it was kept with, and only inside the separated windows
    that can hold a logit > 0 (``upsample.upsample_parts``): the same masks and scores as upsampling the whole
    image.
    """
    probs = np.asarray(scores, dtype=np.float32).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    query = np.asarray(query).reshape(-1).astype(np.int64)
    low = np.asarray(masks, dtype=np.float32)
    if labels.shape != probs.shape or query.shape != probs.shape or low.ndim != 3 or low.shape[0] != probs.size:
        raise ValueError(
            f"need scores, labels, query (N,) and masks (N, h, w); got {probs.shape} {labels.shape} {query.shape} "
            f"{low.shape}"
        )
    (hr, wr), (hp, wp), (H, W) = resized_size, padded_size, orig_size
    if not (0 < hr <= hp and 0 < wr <= wp and H > 0 and W > 0):
        raise ValueError(f"bad sizes: resized {resized_size}, padded {padded_size}, orig {orig_size}")
    keep = np.flatnonzero(probs >= conf)  # mask score <= 1: below conf on class probability alone, never kept
    if keep.size == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64), CropMasks.empty((H, W))
    probs, labels, query, low = probs[keep], labels[keep], query[keep], low[keep]
    _, first, inverse = np.unique(query, return_index=True, return_inverse=True)
    masks_u, mask_scores = _masks_and_scores(low[first], resized_size, padded_size, orig_size)
    return _rank(probs, labels, masks_u, mask_scores, inverse.reshape(-1), conf)


def instances_from_outputs(
    pred_logits: np.ndarray,
    pred_masks: np.ndarray,
    resized_size: tuple[int, int],
    padded_size: tuple[int, int],
    orig_size: tuple[int, int],
    *,
    conf: float = 0.0,
    max_det: int = 100,
) -> tuple[np.ndarray, np.ndarray, CropMasks]:
    """One image's raw head outputs -> instances: ``select_pairs`` then ``instances_from_pairs``.

    Args:
        pred_logits: (Q, K+1) class logits. pred_masks: (Q, h, w) mask logits, at 1/8 of the padded input.
        resized_size, padded_size, orig_size, conf: as in ``instances_from_pairs``.
        max_det: number of query x class pairs taken by class probability (the official top-k, 100).

    Returns:
        ``(scores, labels, masks)`` as ``instances_from_pairs``; N = min(max_det, Q*K) when ``conf`` is 0.0.
    """
    logits, low = np.asarray(pred_logits), np.asarray(pred_masks)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"pred_logits must be (Q, K+1) with K >= 1, got shape {logits.shape}")
    if low.ndim != 3 or low.shape[0] != logits.shape[0]:
        raise ValueError(f"pred_masks must be (Q, h, w) with Q={logits.shape[0]}, got shape {low.shape}")
    pairs = select_pairs(logits[None], low[None], max_det)
    return instances_from_pairs(
        *(pairs[k][0] for k in ("scores", "labels", "query", "masks")), resized_size, padded_size, orig_size, conf=conf
    )


def _masks_and_scores(
    low: np.ndarray, resized_size: tuple[int, int], padded_size: tuple[int, int], orig_size: tuple[int, int]
) -> tuple[CropMasks, np.ndarray]:
    """(n, h, w) mask logits -> the binary masks at the original size as ``CropMasks`` (n), mask scores (n,) float32.

    Only the separated windows of each map that can hold a logit > 0 are upsampled (``upsample.upsample_parts``),
    with the values of the whole-image path there; the whole map where that cannot be guaranteed or the windows
    cover much of the image. The windows' tight boxes are kept as the masks' parts (``CropMasks.part_boxes``).
    """
    n = low.shape[0]
    crops, parts, boxes = [], [], np.zeros((n, 4), np.int64)
    mask_scores = np.empty(n, dtype=np.float32)
    fast = windowable(low.shape[1:], resized_size)
    for j in range(n):
        found = None
        if fast:
            up = first_resize(low[j], resized_size, padded_size)
            found = upsample_parts(up, orig_size)
            if found is None:  # windows too large: cv2's second step on the whole map, the same call as before
                found = [((0, 0, orig_size[1], orig_size[0]), _resize(up, orig_size))]
        if found is None:  # cv2's values not guaranteed by the emulation: the whole-image path
            whole = upsample_mask_logits(low[j : j + 1], resized_size, padded_size, orig_size)[0]
            found = [((0, 0, orig_size[1], orig_size[0]), whole)]
        crop, boxes[j], part_boxes, positive = _crop_and_parts(found)
        crops.append(crop)
        parts.append(part_boxes)
        mask_scores[j] = _mask_score(positive)
    return CropMasks(crops, boxes, orig_size, parts=parts), mask_scores


def _crop_and_parts(
    found: list[tuple[tuple[int, int, int, int], np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Upsampled logits on separated windows [((x1, y1, x2, y2), (h, w) float32)] -> the mask's tight bool crop,
    its box (4,) int64, its parts (k, 4) int64 (each window's tight box, image coordinates) and the (P,) float32
    logits of its positive pixels in the row-major order of the whole image."""
    pieces = []  # (tight box, binary, logits) of each window with a positive pixel
    for (wx1, wy1, _, _), logit in found:
        binary = logit > 0  # == sigmoid > 0.5, strict as in the official code
        rows, cols = np.flatnonzero(binary.any(axis=1)), np.flatnonzero(binary.any(axis=0))
        if rows.size:
            r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            box = (wx1 + c0, wy1 + r0, wx1 + c1, wy1 + r1)
            pieces.append((box, binary[r0:r1, c0:c1], logit[r0:r1, c0:c1]))
    if not pieces:
        return np.zeros((0, 0), bool), np.zeros(4, np.int64), np.zeros((0, 4), np.int64), np.zeros(0, np.float32)
    part_boxes = np.array([p[0] for p in pieces], np.int64)
    box = np.concatenate([part_boxes[:, :2].min(axis=0), part_boxes[:, 2:].max(axis=0)])
    if len(pieces) == 1:
        binary, logit = pieces[0][1:]
        return binary.copy(), box, part_boxes, logit[binary]
    crop = np.zeros((box[3] - box[1], box[2] - box[0]), bool)
    for (x1, y1, x2, y2), binary, _ in pieces:
        crop[y1 - box[1] : y2 - box[1], x1 - box[0] : x2 - box[0]] = binary
    pieces.sort(key=lambda p: p[0][1])
    if all(a[0][3] <= b[0][1] for a, b in zip(pieces, pieces[1:])):  # parts one below the other: row-major order
        return crop, box, part_boxes, np.concatenate([logit[binary] for _, binary, logit in pieces])
    # Parts side by side share rows: gather the positives through a box-sized buffer, in the image's order.
    values = np.empty(crop.shape, np.float32)  # only the parts are written, and only positives are read
    for (x1, y1, x2, y2), _, logit in pieces:
        values[y1 - box[1] : y2 - box[1], x1 - box[0] : x2 - box[0]] = logit
    return crop, box, part_boxes, values[crop]


def _mask_score(positive: np.ndarray) -> float:
    """The mask score of the (P,) float32 positive logits, in the whole image's row-major order: their mean sigmoid,
    as the official code (0 for an empty mask). float64 avoids float32 drift over ~1e5 terms; the operations are
    those of the whole-image path, in place, and the array the same, so the (pairwise) sum is the same."""
    p = positive.astype(np.float64)
    np.negative(p, out=p)
    np.exp(p, out=p)
    p += 1.0
    np.divide(1.0, p, out=p)
    return float(p.sum() / (p.size + 1e-6))


def _rank(
    probs: np.ndarray, labels: np.ndarray, masks: CropMasks, mask_scores: np.ndarray, inverse: np.ndarray, conf: float
) -> tuple[np.ndarray, np.ndarray, CropMasks]:
    # Final score = class probability x mask score; keep >= conf; stable sort, so ties keep the pair order.
    scores = probs * mask_scores[inverse]
    keep = np.flatnonzero(scores >= conf)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    return scores[keep].astype(np.float32), labels[keep].astype(np.int64), masks[inverse[keep]]


def upsample_mask_logits(
    low: np.ndarray,
    resized_size: tuple[int, int],
    padded_size: tuple[int, int],
    orig_size: tuple[int, int],
    *,
    crop: bool = True,
) -> np.ndarray:
    """Upsample (n, h, w) float32 mask logits to the original image as the official code does: (n, H, W) float32.

    Bilinear (align_corners=False, i.e. ``cv2.INTER_LINEAR``) to ``padded_size`` (Hp, Wp), crop to ``resized_size``,
    then a second, separate bilinear resize to ``orig_size`` (H, W).

    With ``crop`` (and an integer upsampling factor, as FastInst's x8), the low-resolution maps are first cut to the
    rows/columns the crop reads (plus one interpolation neighbour): a bilinear output pixel depends only on its two
    nearest source rows/columns and the source coordinate only on the factor, so the values are identical.
    """
    n, h, w = low.shape
    (hr, wr), (hp, wp), (H, W) = resized_size, padded_size, orig_size
    if crop and hp % h == 0 and wp % w == 0:
        fy, fx = hp // h, wp // w
        # Output pixel y reads source rows floor((y + 0.5) / f - 0.5) and the next one (clamped to the map).
        # At least 2: cv2/IPP round a 1-pixel-wide source differently (1 ulp), measured.
        h = min(h, max(2, int(np.floor((hr - 0.5) / fy - 0.5)) + 2))
        w = min(w, max(2, int(np.floor((wr - 0.5) / fx - 0.5)) + 2))
        low, hp, wp = low[:, :h, :w], h * fy, w * fx
    out = np.empty((n, H, W), dtype=np.float32)
    for i in range(n):
        up = _resize(np.ascontiguousarray(low[i], dtype=np.float32), (hp, wp))
        out[i] = _resize(up[:hr, :wr], (H, W))  # cv2 takes the row-strided view without a copy
    return out


def _resize(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    if image.shape == tuple(size_hw):
        return image
    return cv2.resize(image, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_LINEAR)


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """Tight pixel-edge boxes of (N, H, W) bool masks: (N, 4) float32 xyxy.

    x1, y1 are the first column/row with a pixel, x2, y2 one past the last (so x2 - x1 is the width in pixels).
    An empty mask gives (0, 0, 0, 0).
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    masks = masks.astype(bool, copy=False)
    n, h, w = masks.shape
    rows = masks.any(axis=2)  # (N, H)
    cols = masks.any(axis=1)  # (N, W)
    nonempty = rows.any(axis=1)
    boxes = np.zeros((n, 4), dtype=np.float32)
    # argmax finds the first True; on the reversed axis it finds the last one.
    boxes[:, 0] = cols.argmax(axis=1)
    boxes[:, 1] = rows.argmax(axis=1)
    boxes[:, 2] = w - cols[:, ::-1].argmax(axis=1)
    boxes[:, 3] = h - rows[:, ::-1].argmax(axis=1)
    boxes[~nonempty] = 0.0
    return boxes
