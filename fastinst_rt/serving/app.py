"""The Ray Serve application: a ``Segmenter`` per replica, requests batched dynamically across clients.

Routes (all JSON):

* ``POST /v1/segment?conf=0.3&max_det=100``: body = the encoded image (``Content-Type: image/...``); the response
  is ``wire.results_to_json``'s. 400 with a one-line ``{"error": ...}`` for an undecodable image or a bad
  parameter, 413 for a body over ``max_body_bytes``, 503 (Serve's own) when more than ``max_queued`` wait.
* ``GET /v1/health``: ``{"status": "ok"}`` once the replica has loaded its model.
* ``GET /v1/model``: what ``fastinst-rt info`` says (``Backend.describe()``, with file names instead of the server's
  paths), plus the class names and the serving settings.

Batching: ``@serve.batch`` collects up to ``max_batch`` requests for at most ``batch_wait_ms``; the network then
runs once per group of images of one padded input size (and one ``conf``/``max_det``), so every response equals
batch-1 ``Segmenter.predict`` on the same image: images of one padded size need no extra padding.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..runtime.preprocess import ImageError, resized_size
from ..runtime.segmenter import Segmenter
from .wire import MAX_BODY_BYTES, MAX_PIXELS, ImageTooLarge, decode_image, results_to_json

__all__ = ["ServeConfig", "SegmenterServer", "build_app", "public_description"]

#: The largest ``max_det`` a request may ask for (the official top-k is 100; more is almost surely a typo).
MAX_DET_LIMIT = 1000


@dataclass
class ServeConfig:
    """Everything a deployment needs; plain data, so Ray can ship it to the replicas.

    ``replicas`` is the fixed replica count, or the minimum when ``max_replicas`` turns on autoscaling
    (``target_ongoing_requests`` = ``max_batch``: a replica is added when each holds a full batch).
    ``num_gpus`` per replica: 1 puts one replica on each GPU; None chooses 1 when the cluster has GPUs and the
    device is not "cpu". ``max_queued``: requests waiting beyond those the replicas hold (``replicas x max_batch``)
    before Serve answers 503; -1 for no limit.
    """

    model: str
    backend: str | None = None
    device: str | None = None
    conf: float = 0.3
    max_det: int = 100
    min_size: int | None = None
    max_size: int | None = None
    resize: str | None = None  # None: the Segmenter's default (segmenter.DEFAULT_RESIZE)
    replicas: int = 1
    max_replicas: int | None = None
    max_batch: int = 8
    batch_wait_ms: float = 10.0
    max_queued: int = 64
    num_cpus: float = 1.0
    num_gpus: float | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    max_pixels: int = MAX_PIXELS


class BadRequest(ValueError):
    """A client's mistake: answered 400 with its one-line message."""


@serve.deployment(name="Segmenter")
class SegmenterServer:
    """One replica: loads the model once and serves the routes of the module docstring."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.seg = Segmenter(
            config.model, backend=config.backend, device=config.device, conf=config.conf, max_det=config.max_det,
            min_size=config.min_size, max_size=config.max_size, **({"resize": config.resize} if config.resize else {}),
        )  # fmt: skip
        self._views: dict[tuple[float, int], Segmenter] = {}
        self.segment_batch.set_max_batch_size(config.max_batch)
        self.segment_batch.set_batch_wait_timeout_s(config.batch_wait_ms / 1e3)
        serving = {k: v for k, v in asdict(config).items() if k != "model"}
        described = public_description(self.seg.backend.describe())
        self.description = {**described, "class_names": list(self.seg.class_names), "serving": serving}

    async def __call__(self, request: Request) -> JSONResponse:
        # Under a route prefix (several applications on one proxy) the routes are relative to it.
        path, root, method = request.url.path.rstrip("/"), request.scope.get("root_path", ""), request.method
        path = path[len(root) :] if root and path.startswith(root) else path
        if path == "/v1/segment" and method == "POST":
            try:
                return JSONResponse(await self._segment(request))
            except (_TooLarge, ImageTooLarge) as e:
                return JSONResponse({"error": str(e)}, status_code=413)
            except (BadRequest, ImageError) as e:
                return JSONResponse({"error": str(e)}, status_code=400)
        if path == "/v1/health" and method == "GET":
            return JSONResponse({"status": "ok", "model": self.seg.backend.info.name})
        if path == "/v1/model" and method == "GET":
            return JSONResponse(self.description)
        routes = "POST /v1/segment, GET /v1/health, GET /v1/model"
        return JSONResponse({"error": f"no route {method} {request.url.path}; routes: {routes}"}, status_code=404)

    async def _segment(self, request: Request) -> dict[str, Any]:
        conf, max_det = self._params(dict(request.query_params))
        ctype = request.headers.get("content-type", "")
        if ctype and not (ctype.startswith("image/") or ctype.startswith("application/octet-stream")):
            raise BadRequest(f"Content-Type must be image/... (the encoded image bytes), got {ctype!r}")
        body = await _read_body(request, self.config.max_body_bytes)
        t0 = time.perf_counter()
        rgb = await asyncio.to_thread(decode_image, body, "request body", self.config.max_pixels)
        decode_ms = (time.perf_counter() - t0) * 1e3
        response = await self.segment_batch(_Item(rgb, conf, max_det, time.perf_counter()))
        response["timing_ms"]["decode"] = decode_ms
        return response

    def _params(self, query: dict[str, str]) -> tuple[float, int]:
        unknown = sorted(set(query) - {"conf", "max_det"})
        if unknown:
            raise BadRequest(f"unknown query parameter(s) {', '.join(unknown)}; expected conf, max_det")
        try:
            conf = float(query.get("conf", self.config.conf))
            max_det = int(query.get("max_det", self.config.max_det))
        except ValueError:
            raise BadRequest(f"conf must be a number and max_det an integer, got {query}") from None
        if not 0.0 <= conf <= 1.0:
            raise BadRequest(f"conf must be in [0, 1], got {conf}")
        if not 1 <= max_det <= MAX_DET_LIMIT:
            raise BadRequest(f"max_det must be in 1..{MAX_DET_LIMIT}, got {max_det}")
        return conf, max_det

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def segment_batch(self, items: list[_Item]) -> list[dict[str, Any]]:
        start = time.perf_counter()
        responses = await asyncio.to_thread(self._run_groups, items)
        for item, response in zip(items, responses):
            response["timing_ms"].update(queue=(start - item.arrived) * 1e3, batch=float(len(items)))
        return responses

    def _run_groups(self, items: list[_Item]) -> list[dict[str, Any]]:
        """One forward pass per group of one padded size and one (conf, max_det); responses in ``items`` order."""
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault((self._padded_size(item.rgb), item.conf, item.max_det), []).append(i)
        responses: list[dict[str, Any]] = [{}] * len(items)
        for (_, conf, max_det), members in groups.items():
            results = self._view(conf, max_det).predict_batch([items[i].rgb for i in members], color="rgb")
            for i, res in zip(members, results):
                responses[i] = results_to_json(res, {**res.speed, "group": float(len(members))})
        return responses

    def _padded_size(self, rgb: np.ndarray) -> tuple[int, int]:
        info = self.seg.backend.info
        if info.fixed_size is not None:
            return info.fixed_size
        h, w = resized_size(rgb.shape[0], rgb.shape[1], self.seg.min_size, self.seg.max_size)
        d = info.size_divisibility
        return -(-h // d) * d, -(-w // d) * d

    def _view(self, conf: float, max_det: int) -> Segmenter:
        """A Segmenter on the replica's backend with a request's conf/max_det (cheap: the model is shared)."""
        key = (conf, max_det)
        if key not in self._views:
            s = self.seg
            self._views[key] = Segmenter(s.backend, conf=conf, max_det=max_det, min_size=s.min_size,
                                         max_size=s.max_size, resize=s.resize)  # fmt: skip
        return self._views[key]


def public_description(described: dict[str, Any]) -> dict[str, Any]:
    """``Backend.describe()`` with its file paths (``file``, ``source``) cut to file names: a client learns which
    model answers, not where the server keeps it."""
    return {k: Path(v).name if k in ("file", "source") and isinstance(v, str) else v for k, v in described.items()}


@dataclass
class _Item:
    rgb: np.ndarray
    conf: float
    max_det: int
    arrived: float


class _TooLarge(ValueError):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) past ``limit`` bytes.

    An oversized body is still read to its end (discarded, up to 8 x ``limit``) before the answer: a client that
    is still sending when the connection closes sees a reset instead of the 413 and its reason.
    """
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > 8 * limit:
            break
    if size > limit:
        declared = request.headers.get("content-length")
        size_text = f"{declared} bytes" if declared and declared.isdigit() else "over the limit"
        raise _TooLarge(f"request body of {size_text} is over the limit of {limit} bytes")
    return b"".join(chunks)


def build_app(config: ServeConfig, gpus_in_cluster: float = 0.0) -> serve.Application:
    """The bound application for ``serve.run``: replica resources, batching, queue limit and scaling from ``config``.

    ``gpus_in_cluster`` (``ray.cluster_resources().get("GPU", 0)``) decides ``num_gpus`` when the config leaves it
    unset: one GPU per replica when there are GPUs and the device is not "cpu".
    """
    if config.max_batch < 1 or config.batch_wait_ms < 0 or config.replicas < 1:
        raise ValueError(f"need max_batch >= 1, batch_wait_ms >= 0, replicas >= 1; got {config}")
    num_gpus = config.num_gpus
    if num_gpus is None:
        num_gpus = 1.0 if gpus_in_cluster > 0 and (config.device or "cuda") != "cpu" else 0.0
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": config.num_cpus, "num_gpus": num_gpus},
        # A replica holds one batch; the rest wait in Serve's queue, up to max_queued, then get 503.
        "max_ongoing_requests": config.max_batch,
        "max_queued_requests": config.max_queued,
        # A model that cannot load fails the same way every time: give up after a few tries, not Serve's default.
        "max_constructor_retry_count": 3,
        # Requests take well under a second: a stopping replica need not wait Serve's default 20 s for stragglers.
        "graceful_shutdown_timeout_s": 5.0,
    }
    if config.max_replicas is not None:
        if config.max_replicas < config.replicas:
            raise ValueError(f"max_replicas {config.max_replicas} is below replicas {config.replicas}")
        options["autoscaling_config"] = {
            "min_replicas": config.replicas, "max_replicas": config.max_replicas,
            "target_ongoing_requests": config.max_batch,
        }  # fmt: skip
    else:
        options["num_replicas"] = config.replicas
    return SegmenterServer.options(**options).bind(config)
