"""``Segmenter``: an image in, instances out, on any backend.

The front door of the SDK. Pre-processing (official resize and padding) and post-processing (official scoring
in the fast order) are the runtime's own and shared by every backend; the backend runs the network and returns
the top query x class pairs in one output contract (``runtime.backends.base.Backend``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from .backends import Backend, open_backend
from .postprocess import instances_from_pairs
from .preprocess import ImageSource, PreprocessInfo, check_test_size, load_image, prepare
from .results import Results

__all__ = ["Segmenter"]


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
    ) -> None:
        if not 0.0 <= conf <= 1.0:
            raise ValueError(f"conf must be in [0, 1], got {conf}")
        if max_det < 1:
            raise ValueError(f"max_det must be positive, got {max_det}")
        if min_size is not None and max_size is not None:
            check_test_size(min_size, max_size)  # before the model is loaded: a bad size is refused at once
        self.closed = False
        self.backend = model if isinstance(model, Backend) else open_backend(model, backend, device, half, cuda_graph)
        info = self.backend.info
        self.conf, self.max_det = conf, max_det
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
        t0 = time.perf_counter()
        batch, sizes, metas = self.prepare([load_image(im, color) for im in images])
        self._check_positions(batch.shape[-2:], metas)
        t1 = time.perf_counter()
        out = self.backend.infer(batch, sizes, max_det=self.max_det)  # the selected pairs, whatever the backend
        t2 = time.perf_counter()
        results = []
        for i, meta in enumerate(metas):
            scores, labels, masks = instances_from_pairs(
                out["scores"][i], out["labels"][i], out["query"][i], out["masks"][i], meta.resized_size,
                batch.shape[-2:], meta.orig_size, conf=self.conf,
            )  # fmt: skip
            results.append(Results(masks, scores, labels, self.class_names))
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

    def stream(self, frames: Iterable[ImageSource], color: str = "bgr") -> Iterator[Results]:
        """Segment a sequence of frames (e.g. decoded video) lazily, one ``Results`` per frame."""
        for frame in frames:
            yield self.predict(frame, color)

    def prepare(self, rgb: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[PreprocessInfo]]:
        """``preprocess.prepare`` with this model's test size, padding and fixed input size (if any)."""
        info = self.backend.info
        return prepare(rgb, self.min_size, self.max_size, info.size_divisibility, info.fixed_size)

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
                f"max_det={self.max_det}, size={self.min_size}/{self.max_size})")  # fmt: skip
