"""Tracking: persistent instance ids across the frames of a stream (``Segmenter.track``)."""

from .bytetrack import ByteTracker, box_iou

__all__ = ["ByteTracker", "box_iou"]
