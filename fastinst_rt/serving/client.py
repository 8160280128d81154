"""A client of ``fastinst-rt serve`` returning the same ``Results`` as local inference. Standard library HTTP only.

seg = Segmenter("http://127.0.0.1:8000")          # or Client("http://127.0.0.1:8000")
res = seg.predict("street.jpg")                   # Results: masks, scores, labels, boxes, names
"""

from __future__ import annotations

import io
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..runtime.preprocess import ImageSource, load_image
from ..runtime.results import Results
from ..runtime.segmenter import Segmenter
from .wire import results_from_json

__all__ = ["Client", "ServerError"]

_CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
                  ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff"}  # fmt: skip


class ServerError(RuntimeError):
    """A non-200 answer: ``status`` (400 bad input, 413 too large, 503 queue full, ...) and the server's reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"server answered {status}: {reason}")
        self.status, self.reason = status, reason


class Client(Segmenter):
    """``Segmenter`` over HTTP: ``predict`` posts the image to ``POST /v1/segment`` and decodes the response.

    Args:
        url: the server, e.g. "http://127.0.0.1:8000".
        conf, max_det: sent with every request (the server's defaults when None).
        timeout: seconds per request.

    Files are sent as they are (the server decodes them as ``load_image`` would); arrays and PIL images are sent
    as PNG (lossless), so results equal local inference on the same pixels.
    """

    def __init__(
        self, url: str, *, conf: float | None = None, max_det: int | None = None, timeout: float = 60.0, **unused: Any
    ) -> None:
        given = sorted(k for k, v in unused.items() if v not in (None, False))
        if given:
            raise ValueError(f"{', '.join(given)} are chosen by the server, not by a client of {url}")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"a server URL starts with http:// or https://, got {url!r}")
        self.url, self.timeout = url.rstrip("/"), float(timeout)
        self.conf, self.max_det = conf, max_det
        self._model: dict[str, Any] | None = None

    def model_info(self) -> dict[str, Any]:
        """``GET /v1/model``: what ``fastinst-rt info`` says about the served model, plus class names and settings."""
        if self._model is None:
            self._model = self._get("/v1/model")
        return self._model

    def health(self) -> dict[str, Any]:
        return self._get("/v1/health")

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.model_info()["class_names"])

    def predict(self, image: ImageSource | bytes, color: str = "bgr") -> Results:
        """Segment one image on the server. ``image`` as for ``Segmenter.predict``, or encoded bytes."""
        body, ctype = _encode(image, color)
        query = {k: v for k, v in (("conf", self.conf), ("max_det", self.max_det)) if v is not None}
        path = "/v1/segment" + ("?" + urllib.parse.urlencode(query) if query else "")
        return results_from_json(self._request(path, body, ctype), self.class_names)

    def predict_batch(self, images: Sequence[ImageSource], color: str = "bgr") -> list[Results]:
        """One request per image, sent concurrently: the server batches them with other clients' requests."""
        if not images:
            return []
        with ThreadPoolExecutor(min(len(images), 16)) as pool:
            return list(pool.map(lambda im: self.predict(im, color), images))

    def _get(self, path: str) -> dict[str, Any]:
        return self._request(path, None, None)

    def _request(self, path: str, body: bytes | None, ctype: str | None) -> dict[str, Any]:
        req = urllib.request.Request(self.url + path, data=body, method="POST" if body is not None else "GET")
        if ctype:
            req.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            text = e.read().decode("utf-8", "replace")
            try:
                reason = json.loads(text).get("error", text)
            except ValueError:
                reason = text.strip() or e.reason
            raise ServerError(e.code, str(reason)) from None
        except urllib.error.URLError as e:
            raise ConnectionError(f"cannot reach {self.url}: {e.reason}") from None

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"Client({self.url!r}, conf={self.conf}, max_det={self.max_det})"


def _encode(image: ImageSource | bytes, color: str) -> tuple[bytes, str]:
    """(body, Content-Type) for an image source: file bytes as they are, pixels as PNG."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image), "application/octet-stream"
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"no such image file: {path}")
        return path.read_bytes(), _CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
    rgb = load_image(image, color)  # EXIF orientation applied here for PIL images, as locally
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), "image/png"
