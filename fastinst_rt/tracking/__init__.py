"""Tracking: persistent instance ids across the frames of a stream (``Segmenter.track``)."""

from .bytetrack import ByteTracker, box_iou
from .protocol import Tracker

__all__ = ["ByteTracker", "Tracker", "box_iou"]
