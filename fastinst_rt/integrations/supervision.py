"""``Results`` <-> ``supervision.Detections`` (Roboflow's supervision: annotators, zones, trackers, datasets).

Imported only by ``Results.to_supervision`` / ``Results.from_supervision``: the runtime never imports supervision
(``pip install 'fastinst-rt[supervision]'``, Python >= 3.10 for supervision 0.31).

Masks travel as supervision's ``CompactMask`` (supervision >= 0.31: each mask's crop as a column-major run-length
code at an offset, the same idea as our ``CropMasks``), built from our crops without a whole-image array; with an
older supervision that has no ``CompactMask``, as the dense (N, H, W) bool array.

Boxes: ``Detections.xyxy`` gets our pixel-edge boxes as they are (x2, y2 exclusive, the continuous coordinates every
detector hands supervision). ``CompactMask`` itself does not depend on that convention: it is given each crop's
offset and shape.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..runtime.masks import CropMasks, rle_counts
from ..runtime.results import Results

__all__ = ["from_supervision", "to_supervision"]

log = logging.getLogger(__name__)

CLASS_NAME = "class_name"  # supervision's data key for class names (supervision.config.CLASS_NAME_DATA_FIELD)


def _compact_mask_type() -> type | None:
    """supervision's ``CompactMask`` class, or None for a supervision without it (before 0.31)."""
    try:
        from supervision.detection.compact_mask import CompactMask
    except ImportError:
        return None
    return CompactMask


def compact_mask(masks: CropMasks) -> Any:
    """Our crops as a ``supervision.CompactMask`` of N masks, no (N, H, W) array made.

    Each crop becomes its column-major run lengths starting with a run of zeros (``rle_counts`` of the crop as a
    whole image: COCO's uncompressed RLE, the format ``CompactMask`` holds), at offset (x1, y1). An empty mask
    becomes a 1x1 all-False crop at (0, 0), as ``CompactMask.from_dense`` makes it.
    """
    compact = _compact_mask_type()
    assert compact is not None
    rles, shapes = [], np.zeros((len(masks), 2), np.int32)
    offsets = np.zeros((len(masks), 2), np.int32)
    for i in range(len(masks)):
        crop, (x1, y1, x2, y2) = masks.crop(i)
        if crop.size == 0:
            rles.append(np.array([1], np.int32))
            shapes[i] = (1, 1)
            continue
        rles.append(rle_counts(crop, (0, 0), crop.shape).astype(np.int32))
        shapes[i], offsets[i] = (y2 - y1, x2 - x1), (x1, y1)
    return compact(rles, shapes, offsets, masks.image_shape)


def to_supervision(results: Results) -> Any:
    """``results`` as a ``supervision.Detections``.

    Fields: ``xyxy`` (N, 4) float32 (``results.boxes``), ``mask`` (a ``CompactMask``, else (N, H, W) bool),
    ``confidence`` (N,) float32, ``class_id`` (N,) int64 (``labels``), ``tracker_id`` (N,) int64 or None, and
    ``data["class_name"]`` (N,) str array (supervision's key for class names, as its own converters fill it).
    """
    import supervision as sv

    if _compact_mask_type() is not None:
        mask = compact_mask(results.crop_masks)
    else:  # an older supervision: the dense masks are the only form it takes
        log.info("supervision %s has no CompactMask: passing dense (N, H, W) masks", sv.__version__)
        mask = results.masks
    names = np.array(results.names, dtype=str) if len(results) else np.zeros(0, dtype=str)
    return sv.Detections(
        xyxy=results.boxes.astype(np.float32, copy=True), mask=mask, confidence=results.scores.copy(),
        class_id=results.labels.copy(), tracker_id=None if results.track_ids is None else results.track_ids.copy(),
        data={CLASS_NAME: names},
    )  # fmt: skip


def _crop_masks(mask: Any, image_shape: tuple[int, int] | None) -> CropMasks:
    """``Detections.mask`` (a ``CompactMask`` or (N, H, W) bool) -> ``CropMasks``; a ``CompactMask`` crop by crop."""
    compact = _compact_mask_type()
    if compact is not None and isinstance(mask, compact):
        if image_shape is not None and tuple(mask.image_shape) != tuple(image_shape):
            raise ValueError(f"masks are {tuple(mask.image_shape)} but image_shape is {tuple(image_shape)}")
        crops, boxes = [], np.zeros((len(mask), 4), np.int64)
        for i in range(len(mask)):
            crop = mask.crop(i)  # (h, w) at offset (x1, y1); not necessarily tight: tighten it
            rows, cols = np.flatnonzero(crop.any(axis=1)), np.flatnonzero(crop.any(axis=0))
            if rows.size == 0:
                crops.append(np.zeros((0, 0), bool))
                continue
            x0, y0 = (int(v) for v in mask.offsets[i])
            crops.append(np.ascontiguousarray(crop[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]))
            boxes[i] = (x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1)
        return CropMasks(crops, boxes, tuple(int(v) for v in mask.image_shape))
    dense = np.asarray(mask)
    if dense.ndim != 3:
        raise ValueError(f"Detections.mask must be (N, H, W), got shape {dense.shape}")
    if image_shape is not None and dense.shape[1:] != tuple(image_shape):
        raise ValueError(f"masks are {dense.shape[1:]} but image_shape is {tuple(image_shape)}")
    return CropMasks.from_dense(dense.astype(bool, copy=False))


def _labels(detections: Any, class_names: Sequence[str]) -> np.ndarray:
    """(N,) int64 labels: ``class_id``, else the index in ``class_names`` of ``data["class_name"]``."""
    if detections.class_id is not None:
        return np.asarray(detections.class_id).astype(np.int64)
    names = detections.data.get(CLASS_NAME)
    if names is None:
        raise ValueError("Detections have neither class_id nor data['class_name']: no labels to give the instances")
    index = {n: i for i, n in enumerate(class_names)}
    missing = sorted({str(n) for n in names} - set(index))
    if missing:
        raise ValueError(f"class names {missing} are not in class_names")
    return np.array([index[str(n)] for n in names], np.int64)


def from_supervision(
    detections: Any, class_names: Sequence[str], image_shape: tuple[int, int] | None = None
) -> Results:
    """A ``Results`` from a ``supervision.Detections`` that has masks (instance segmentation).

    Args:
        detections: with ``mask`` (a ``CompactMask`` or (N, H, W) bool); ``class_id`` or ``data["class_name"]``;
            ``confidence`` (None: 1.0 each, supervision's own meaning of a missing confidence); ``tracker_id``
            (kept as ``track_ids``); ``xyxy`` (kept as ``boxes``).
        class_names: the names ``class_id`` indexes.
        image_shape: (H, W), checked against the masks' (a ``CompactMask`` carries its own; dense masks theirs).
    Returns:
        ``Results`` whose ``crop_masks`` are built crop by crop from a ``CompactMask`` (no whole-image array).
    """
    if detections.mask is None:
        raise ValueError("Detections without masks cannot become Results (instance masks are what Results hold)")
    masks = _crop_masks(detections.mask, image_shape)
    n = len(masks)
    scores = np.ones(n, np.float32) if detections.confidence is None else np.asarray(detections.confidence)
    ids = None if detections.tracker_id is None else np.asarray(detections.tracker_id).astype(np.int64)
    boxes = np.asarray(detections.xyxy, np.float32).reshape(-1, 4)
    return Results(masks, scores.astype(np.float32), _labels(detections, class_names), class_names, boxes,
                   track_ids=ids)  # fmt: skip
