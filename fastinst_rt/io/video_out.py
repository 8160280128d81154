"""Writing video: H.264 through PyAV where it is installed (plays everywhere), else MPEG-4 Part 2 through OpenCV."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["VideoWriter"]


class VideoWriter:
    """Encode RGB frames into ``path`` at ``fps``; the first frame fixes the size, later ones are resized to it
    (a stream whose resolution changes still gives one playable file).

    Args:
        path: the file to write (.mp4 for H.264; OpenCV's mp4v also writes .mp4 and .avi).
        fps: frames per second, e.g. the source's.
        quality: x264 constant rate factor (lower is better; 18 is visually lossless for most content).
        codec: "h264" (falls back to "mp4v" without PyAV or its libx264) or "mp4v".
    Attributes:
        codec: "h264" or "mp4v", known after the first frame.
    """

    def __init__(self, path: str | os.PathLike, fps: float, quality: int = 18, codec: str = "h264") -> None:
        if not fps or fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if codec not in ("h264", "mp4v"):
            raise ValueError(f"codec must be 'h264' or 'mp4v', got {codec!r}")
        self._want_h264 = codec == "h264"
        self.path, self.fps, self.quality = Path(path), float(fps), quality
        self.size: tuple[int, int] | None = None  # (h, w)
        self.codec = ""
        self.frames = 0
        self._av: Any = None
        self._stream: Any = None
        self._cv: cv2.VideoWriter | None = None

    def write(self, rgb: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame."""
        if self.size is None:
            self._open(rgb.shape[0], rgb.shape[1])
        h, w = self.size
        if rgb.shape[:2] != (h, w):
            rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        if self._cv is not None:
            self._cv.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        else:
            import av

            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            for packet in self._stream.encode(frame):
                self._av.mux(packet)
        self.frames += 1

    def _open(self, h: int, w: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            import av
        except ImportError:
            av = None
        if self._want_h264 and av is not None and "libx264" in av.codecs_available:
            # yuv420p halves the chroma resolution: both sides must be even (one pixel row/column is cut if not).
            self.size = (h - h % 2, w - w % 2)
            self._av = av.open(str(self.path), "w")
            self._stream = self._av.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
            self._stream.width, self._stream.height = self.size[1], self.size[0]
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": str(self.quality), "preset": "veryfast"}
            self.codec = "h264"
            return
        self.size = (h, w)
        self._cv = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
        if not self._cv.isOpened():
            raise OSError(f"could not open {self.path} for writing video")
        self.codec = "mp4v"

    def close(self) -> None:
        """Flush the encoder and finish the file (also after an error, so the frames written so far play)."""
        if self._cv is not None:
            self._cv.release()
            self._cv = None
        if self._av is not None:
            for packet in self._stream.encode():
                self._av.mux(packet)
            self._av.close()
            self._av = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
