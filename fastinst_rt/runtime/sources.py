"""Where frames come from: video files, folders or lists of images, iterables of frames, cameras, stream URLs.

``open_source`` turns any of these into a ``Source`` that yields ``Frame`` objects (index in the source, RGB image,
timestamp, name) and knows whether it is live, its frame rate, its frame count and the files it reads.

Decoding: video files and stream URLs are decoded with PyAV (the ``video`` extra), cameras are read with OpenCV.
PyAV gives each frame its presentation timestamp, reports where decoding of a damaged file stopped (an FFmpeg
error or fewer frames than the header declares, where OpenCV's ``read`` just returns ``False``), bounds the
connection and read time of a URL (``av.open(timeout=...)``), and encodes H.264 for the annotated output.
OpenCV stays for camera indices: ``VideoCapture(0)`` is the portable way to open V4L2, DirectShow or AVFoundation
devices. Hardware decoding would plug in at ``_open_container``: PyAV >= 14 accepts ``av.open(..., hwaccel=
HWAccel("cuda"))`` (NVDEC through FFmpeg), or a hardware decoder can be chosen by name (``h264_cuvid``); frames
then still arrive as ``av.VideoFrame`` and the rest of the pipeline is unchanged. Not done here (no GPU to test).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from .preprocess import ImageError, ImageSource, load_image

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "Frame", "Source", "SourceLike", "open_source"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".ts", ".m2ts", ".mts", ".mpg", ".mpeg")
_LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "udp", "tcp", "srt", "http", "https")

SourceLike = Union[str, int, os.PathLike, Sequence[Union[str, os.PathLike]], Iterable[ImageSource], "Source"]


@dataclass
class Frame:
    """One frame of a source.

    Attributes:
        index: position in the source, from 0, counting frames skipped by ``vid_stride`` or dropped.
        image: (H, W, 3) uint8 RGB, or None when it could not be read (then ``error`` says why).
        name: the file name of an image, ``<stem>_<index:06d>`` for a video frame, ``frame_<index:06d>`` otherwise.
        timestamp: seconds from the start: the presentation time for a video, time since opening for a camera.
        error: why the image could not be read (a corrupt file in a folder); such frames are reported and skipped.
        dropped: frames dropped by realtime mode before this one was taken (cumulative).
    """

    index: int
    image: np.ndarray | None
    name: str
    timestamp: float | None = None
    error: str | None = None
    dropped: int = 0


class Source:
    """An opened source; iterate ``frames(vid_stride)`` once, then ``close``.

    Attributes:
        kind: "images", "video", "stream", "camera" or "frames".
        live: frames arrive in real time (camera, stream URL): the default for realtime (frame-dropping) mode.
        fps: frames per second when known (videos, streams, cameras), else None.
        count: number of frames when known before reading, else None.
        files: the input files (outputs must never overwrite them).
        stopped: set when decoding ended early (a truncated video): where, and why.
    """

    kind = ""

    def __init__(self, name: str, *, live: bool = False, fps: float | None = None, count: int | None = None,
                 files: Sequence[Path] = ()) -> None:  # fmt: skip
        self.name, self.live, self.fps, self.count = name, live, fps, count
        self.files = tuple(files)
        self.stopped: str | None = None

    def frames(self, vid_stride: int = 1) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - most sources hold nothing to release
        """Release the decoder or device."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, live={self.live}, fps={self.fps}, count={self.count})"


class ImageFiles(Source):
    """Image files in a given order; an unreadable one becomes a ``Frame`` with ``error`` set, not an exception."""

    kind = "images"

    def __init__(self, files: Sequence[Path], name: str) -> None:
        super().__init__(name, count=len(files), files=files)

    def frames(self, vid_stride: int = 1) -> Iterator[Frame]:
        for index, path in enumerate(self.files):
            if index % vid_stride:
                continue
            try:
                yield Frame(index, load_image(path), path.name)
            except (ImageError, OSError, ValueError) as e:  # corrupt, truncated, deleted meanwhile, too large
                yield Frame(index, None, path.name, error=str(e))


class ArrayFrames(Source):
    """Frames from any iterable of images (arrays in ``color`` order, PIL images or paths)."""

    kind = "frames"

    def __init__(self, items: Iterable[ImageSource], color: str) -> None:
        count = len(items) if isinstance(items, Sequence) else None
        super().__init__("frames", count=count)
        self._items, self._color = items, color

    def frames(self, vid_stride: int = 1) -> Iterator[Frame]:
        for index, item in enumerate(self._items):
            if index % vid_stride == 0:
                yield Frame(index, load_image(item, self._color), f"frame_{index:06d}")


class VideoFile(Source):
    """A video file or stream URL decoded with PyAV."""

    def __init__(self, target: str, *, live: bool, timeout: float) -> None:
        self._container = _open_container(target, live, timeout)
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"  # FFmpeg's frame and slice threads: decoding overlaps within the decoder too
        fps = float(stream.average_rate) if stream.average_rate else None
        self._stream, self._stem = stream, Path(target).stem if not live else "stream"
        files = () if live else (Path(target),)
        super().__init__(target, live=live, fps=fps, count=int(stream.frames) or None, files=files)
        self.kind = "stream" if live else "video"

    def frames(self, vid_stride: int = 1) -> Iterator[Frame]:
        import av

        index = -1
        try:
            for vf in self._container.decode(self._stream):
                index += 1
                if index % vid_stride:
                    continue  # decoded anyway (later frames depend on it), but never converted to RGB
                ts = float(vf.pts * vf.time_base) if vf.pts is not None and vf.time_base else None
                yield Frame(index, vf.to_ndarray(format="rgb24"), f"{self._stem}_{index:06d}", ts)
        except av.FFmpegError as e:
            if self.live:
                raise ConnectionError(f"{self.name}: stream ended after frame {index}: {e}") from e
            self._stop(f"decoding stopped at frame {index + 1}: {e}")
            return
        if not self.live and self.count and index + 1 < self.count:
            self._stop(f"decoding stopped at frame {index + 1} of the {self.count} the header declares")

    def _stop(self, why: str) -> None:
        self.stopped = why
        warnings.warn(f"{self.name}: {why} (truncated or damaged file?)", RuntimeWarning, stacklevel=3)

    def close(self) -> None:
        self._container.close()


class Camera(Source):
    """A camera by index, read with OpenCV; timestamps are seconds since opening."""

    kind = "camera"

    def __init__(self, index: int, timeout: float) -> None:
        import cv2

        # The open timeout is honoured by OpenCV's FFmpeg and GStreamer back-ends; V4L2 opens synchronously.
        ms = int(timeout * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        self._cap = cv2.VideoCapture(index, cv2.CAP_ANY, params)
        if not self._cap.isOpened():
            raise ConnectionError(f"camera {index} could not be opened (no such device, or in use)")
        fps = self._cap.get(cv2.CAP_PROP_FPS) or None
        super().__init__(f"camera {index}", live=True, fps=fps)

    def frames(self, vid_stride: int = 1) -> Iterator[Frame]:
        import cv2

        start, index = time.monotonic(), -1
        while True:
            ok, bgr = self._cap.read()
            if not ok:
                self.stopped = f"the camera delivered no frame after frame {index}"
                return
            index += 1
            if index % vid_stride == 0:
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                yield Frame(index, rgb, f"camera_{index:06d}", time.monotonic() - start)

    def close(self) -> None:
        self._cap.release()


def _open_container(target: str, live: bool, timeout: float) -> Any:
    try:
        import av
    except ImportError:
        raise RuntimeError(f"{target}: decoding video needs PyAV: pip install 'fastinst-rt[video]'") from None
    options = {"rtsp_transport": "tcp"} if target.startswith("rtsp") else {}
    try:
        # (open, read) timeouts: a URL that does not answer fails within ``timeout`` seconds instead of hanging.
        container = av.open(target, timeout=(timeout, timeout), options=options)
    except av.FFmpegError as e:
        if live:
            raise ConnectionError(f"could not open stream {target} within {timeout:g} s: {e}") from e
        raise ValueError(f"{target}: not a readable video (truncated, or not a video?): {e}") from e
    if not container.streams.video:
        container.close()
        raise ValueError(f"{target} holds no video stream")
    return container


def open_source(source: SourceLike, *, timeout: float = 10.0, color: str = "bgr") -> Source:
    """Open ``source`` for reading.

    Args:
        source: a video file; a folder of images (sorted by name; other files ignored); an image file; a list of
            image paths; a camera index (``0`` or ``"0"``); an ``rtsp://``, ``rtmp://``, ``http(s)://``, ``udp://``
            URL; any other iterable of images (arrays, PIL images or paths); or a ``Source`` (returned as is).
        timeout: seconds a camera or URL may take to open, and a stream to deliver the next packet.
        color: channel order of arrays in an iterable ("bgr" or "rgb").
    Raises:
        FileNotFoundError: no such path. ValueError: an empty folder, an unreadable video file, a ``timeout`` that
            is not a positive finite number.
        ConnectionError: a camera or URL that cannot be opened within ``timeout``.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
    if isinstance(source, Source):
        return source
    if isinstance(source, int) and not isinstance(source, bool) or isinstance(source, str) and source.isdigit():
        return Camera(int(source), timeout)
    if isinstance(source, str) and "://" in source:
        scheme = source.split("://", 1)[0].lower()
        if scheme not in _LIVE_SCHEMES:
            raise ValueError(f"unsupported URL scheme {scheme!r} in {source}; use one of {', '.join(_LIVE_SCHEMES)}")
        live = not source.lower().split("?")[0].endswith(VIDEO_SUFFIXES)  # an .mp4 over HTTP is a file
        return VideoFile(source, live=live, timeout=timeout)
    if isinstance(source, (str, os.PathLike)):
        return _open_path(Path(source), timeout)
    if isinstance(source, (list, tuple)) and source and all(isinstance(s, (str, os.PathLike)) for s in source):
        return ImageFiles([Path(s) for s in source], f"{len(source)} images")
    if isinstance(source, np.ndarray) and source.ndim in (2, 3):
        source = [source]  # one image, not an iterable of its rows
    if isinstance(source, Iterable):
        return ArrayFrames(source, color)
    raise TypeError(f"unsupported source {type(source).__name__}")


def _open_path(path: Path, timeout: float) -> Source:
    if not path.exists():
        raise FileNotFoundError(f"no such image, folder or video: {path}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return ImageFiles(files, str(path))
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return VideoFile(str(path), live=False, timeout=timeout)
    return ImageFiles([path], str(path))
