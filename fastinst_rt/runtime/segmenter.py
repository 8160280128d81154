"""``Segmenter``: an image in, instances out, on any backend.

The front door of the SDK. Pre-processing (official resize and padding) and post-processing (official scoring
in the fast order) are the runtime's own and shared by every backend; the backend runs the network and returns
the top query x class pairs in one output contract (``runtime.backends.base.Backend``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .backends import Backend, open_backend
from .postprocess import instances_from_pairs
from .preprocess import ImageSource, PreprocessInfo, check_resize, check_test_size, load_image, prepare
from .results import Results

if TYPE_CHECKING:
    from ..tracking import Tracker
    from .sources import SourceLike

__all__ = ["DEFAULT_RESIZE", "Prepared", "Segmenter"]

#: The test-time resize of ``Segmenter`` (so of ``predict``, ``stream``, ``serve`` and ``bench``); ``eval`` and the
#: parity checks use "exact". Chosen by measurement: benchmarks/README.md, result 16.
DEFAULT_RESIZE = "fast"


class Prepared(NamedTuple):
    """A pre-processed batch (``Segmenter.prepare``): (B, 3, H, W) uint8 padded RGB, (B, 2) int64 valid sizes, and
    each image's original and resized size."""

    batch: np.ndarray
    sizes: np.ndarray
    metas: list[PreprocessInfo]


class Segmenter:
    """Instance segmentation with a FastInst model.

    Args:
        model: an official FastInst ``.pth``, our ``.safetensors``, a zoo name (e.g. "fastinst-r50-d1"), a
            ``Backend`` already opened, or the URL of a ``fastinst-rt serve`` server ("http://host:8000": the
            instance is then a ``fastinst_rt.serving.Client``, and the server chooses backend, device and size).
        backend: "torch", "onnxruntime" or "tensorrt"; default from the file type.
        device: "cpu", "cuda", "cuda:1"; default CUDA when available (torch backend).
        conf: minimum score of a returned instance. 0.0 with ``max_det=100`` gives the official evaluation output.
        max_det: at most this many instances (query-class pairs) per image.
        min_size, max_size: test-time resize (short side, long-side cap); default the model's (e.g. 576/777).
            ``32 <= min_size <= max_size <= MAX_TEST_SIZE`` (2048, ``preprocess.MAX_TEST_SIZE``).
        resize: "fast" (the default: 2x2 box halvings of a large image, then the official bilinear; the same pixels
            unless an image shrinks 4x or more) or "exact" (the official PIL bilinear, pixel for pixel). See
            ``preprocess.resize_image``.
        half: float16 inference (torch on CUDA; ONNX and engine precision is chosen at export/build).
        cuda_graph: replay CUDA graphs (torch and TensorRT on CUDA): less launch overhead at batch 1.

    Example::

        seg = Segmenter("fastinst_R50_ppm-fpn_x1_576_34.9.pth")
        res = seg.predict("street.jpg")
        for name, score, box in zip(res.names, res.scores, res.boxes):
            print(name, score, box)
    """

    def __new__(cls, model: str | os.PathLike | Backend | None = None, *args: object, **kwargs: object) -> Segmenter:
        # A server URL gives the HTTP client (a Segmenter whose predict runs on `fastinst-rt serve`).
        if cls is Segmenter and isinstance(model, str) and model.startswith(("http://", "https://")):
            from ..serving.client import Client

            return super().__new__(Client)
        return super().__new__(cls)

    def __init__(
        self,
        model: str | os.PathLike | Backend,
        *,
        backend: str | None = None,
        device: str | None = None,
        conf: float = 0.3,
        max_det: int = 100,
        min_size: int | None = None,
        max_size: int | None = None,
        half: bool = False,
        cuda_graph: bool = False,
        resize: str = DEFAULT_RESIZE,
    ) -> None:
        check_resize(resize)
        if not 0.0 <= conf <= 1.0:
            raise ValueError(f"conf must be in [0, 1], got {conf}")
        if max_det < 1:
            raise ValueError(f"max_det must be positive, got {max_det}")
        if min_size is not None and max_size is not None:
            check_test_size(min_size, max_size)  # before the model is loaded: a bad size is refused at once
        self.closed = False
        self.backend = model if isinstance(model, Backend) else open_backend(model, backend, device, half, cuda_graph)
        info = self.backend.info
        self.conf, self.max_det, self.resize = conf, max_det, resize
        self.min_size = int(min_size or info.test_size[0])
        self.max_size = int(max_size or info.test_size[1])
        check_test_size(self.min_size, self.max_size)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.backend.info.class_names

    def predict(self, image: ImageSource, color: str = "bgr") -> Results:
        """Segment one image.

        Args:
            image: a file path, a PIL image, or an HxW / HxWx3 / HxWx4 uint8 (or uint16) array.
            color: channel order of an array: "bgr" (OpenCV, the default) or "rgb". Files and PIL images are RGB.
        Returns:
            ``Results`` with masks (N, H, W) bool at the original size, scores (N,), labels (N,), boxes (N, 4).
        """
        return self.predict_batch([image], color)[0]

    def predict_batch(self, images: Sequence[ImageSource], color: str = "bgr") -> list[Results]:
        """Segment several images in one forward pass.

        The images are padded to a common size, so results can differ slightly from one-by-one ``predict``
        (the official evaluation runs batch 1). Returns one ``Results`` per image.
        """
        if self.closed:
            raise RuntimeError("this Segmenter is closed; create a new one to predict")
        if len(images) == 0:
            return []
        self.backend.reserve_cores(0)  # a call on its own has every core (a pipelined stream may have reserved some)
        t0 = time.perf_counter()
        prepared = self.preprocess(images, color)
        t1 = time.perf_counter()
        out = self.infer(prepared)
        t2 = time.perf_counter()
        results = self.postprocess(out, prepared)
        t3 = time.perf_counter()
        n = len(images)
        speed = {
            "preprocess": (t1 - t0) * 1e3 / n,
            "inference": (t2 - t1) * 1e3 / n,
            "postprocess": (t3 - t2) * 1e3 / n,
        }
        for r in results:
            r.speed = dict(speed)
        return results

    def stream(
        self,
        source: SourceLike,
        *,
        batch: int = 1,
        vid_stride: int = 1,
        realtime: bool | None = None,
        pipeline: bool = True,
        queue_size: int = 4,
        timeout: float = 10.0,
        color: str = "bgr",
        conf: float | None = None,
    ) -> Iterator[Results]:
        """Segment a video, camera, stream URL, folder or iterable of frames, yielding one ``Results`` per frame.

        Decoding, pre-processing, inference and post-processing run as overlapped threads joined by bounded
        queues (``pipeline=False``: the same steps one after another). Results come in frame order, each with
        ``.frame`` (index in the source, timestamp in seconds, name, the RGB image, frames dropped so far).

        Args:
            source: see ``fastinst_rt.runtime.sources.open_source`` (path, list of paths, camera index, URL,
                iterable of images or an opened ``Source``).
            batch: frames per backend call (artifacts with a fixed batch take exactly theirs).
            vid_stride: keep every n-th frame of the source.
            realtime: always process the newest frame and count the dropped ones (default: for live sources).
                Files never drop.
            queue_size: frames or batches buffered between two stages (back-pressure beyond that).
            timeout: seconds to wait for a live source to connect or deliver a frame.
            color: channel order of arrays in an iterable of frames ("bgr" or "rgb").
            conf: score threshold for this stream instead of the Segmenter's.
        Raises:
            StreamError: a stage failed (``.stage``, ``.frame_index``; the cause is chained). Bad images in a
                folder raise too; ``fastinst-rt predict`` reports and skips them instead.
        """
        from .stream import segment_stream

        if self.closed:
            raise RuntimeError("this Segmenter is closed; create a new one to stream")
        frames = segment_stream(
            self, source, batch=batch, vid_stride=vid_stride, realtime=realtime, pipeline=pipeline,
            queue_size=queue_size, timeout=timeout, color=color, conf=conf, skip_bad=False,
        )  # fmt: skip
        with closing(frames):  # closing this generator early stops the pipeline at once, not at garbage collection
            for frame, res in frames:
                res.frame = frame
                yield res

    def track(self, source: SourceLike, tracker: Tracker | None = None, **stream_options: Any) -> Iterator[Results]:
        """``stream`` with persistent instance ids: each ``Results`` has ``track_ids`` (N,) int64.

        Args:
            tracker: any ``fastinst_rt.tracking.Tracker`` (``update``, ``reset``): default a ``ByteTracker`` with
                its default thresholds; e.g. ``integrations.trackers.TrackersAdapter`` for the ``trackers``
                package's. Detections down to its ``low_score`` (if it has one) are streamed; the yielded results
                hold the tracked instances only.
            stream_options: passed to ``stream`` (``batch``, ``vid_stride``, ``realtime``, ``pipeline``, ...).
        """
        from ..tracking import ByteTracker

        tracker = tracker or ByteTracker()
        stream_options.setdefault("conf", min(self.conf, getattr(tracker, "low_score", self.conf)))
        for res in self.stream(source, **stream_options):
            yield tracker.update(res)

    # -- the three steps of ``predict_batch``, public so that a pipeline can run each in its own thread --------------

    def preprocess(self, images: Sequence[ImageSource], color: str = "bgr") -> Prepared:
        """Load, resize and pad images (``prepare``): the (B, 3, H, W) uint8 batch and each image's sizes."""
        prepared = Prepared(*self.prepare([load_image(im, color) for im in images]))
        self._check_positions(prepared.batch.shape[-2:], prepared.metas)
        return prepared

    def infer(self, prepared: Prepared) -> dict[str, np.ndarray]:
        """Run the backend on a prepared batch; returns the selected pairs of the backend output contract."""
        return self.backend.infer(prepared.batch, prepared.sizes, max_det=self.max_det)

    def postprocess(self, out: dict[str, np.ndarray], prepared: Prepared, conf: float | None = None) -> list[Results]:
        """The selected pairs as one ``Results`` per image at its original size; ``conf`` overrides ``self.conf``."""
        conf = self.conf if conf is None else conf
        results = []
        for i, meta in enumerate(prepared.metas):
            scores, labels, masks = instances_from_pairs(
                out["scores"][i], out["labels"][i], out["query"][i], out["masks"][i], meta.resized_size,
                prepared.batch.shape[-2:], meta.orig_size, conf=conf,
            )  # fmt: skip
            results.append(Results(masks, scores, labels, self.class_names))
        return results

    def prepare(self, rgb: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[PreprocessInfo]]:
        """``preprocess.prepare`` with this model's test size, padding and fixed input size (if any)."""
        info = self.backend.info
        return prepare(rgb, self.min_size, self.max_size, info.size_divisibility, info.fixed_size, self.resize)

    def _check_positions(self, padded: tuple[int, ...], metas: list[PreprocessInfo]) -> None:
        """Refuse a batch too small for the query selection (an image of extreme aspect ratio, e.g. 1x30000):
        the network picks ``num_queries`` positions of its 1/16 feature map, and fails deep inside otherwise."""
        q, (h, w) = self.backend.info.num_queries, padded
        positions = (h // 16) * (w // 16)
        if q is None or positions >= q:
            return
        sizes = ", ".join(f"{m.orig_size[0]}x{m.orig_size[1]}" for m in metas)
        raise ValueError(
            f"image of {sizes} (HxW) pixels is too thin for this model: resized to at most {self.min_size}/"
            f"{self.max_size} and padded to {h}x{w}, it has {positions} positions at 1/16, fewer than the {q} queries; "
            "crop or pad it"
        )

    def close(self) -> None:
        """Release the model; ``predict`` then refuses. Closing twice is harmless."""
        if not self.closed:
            self.closed = True
            self.backend.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Segmenter({self.backend.info.name!r}, backend={self.backend.kind!r}, conf={self.conf}, "
                f"max_det={self.max_det}, size={self.min_size}/{self.max_size}, resize={self.resize!r})")  # fmt: skip
