"""Scale-out: a Ray Serve application and its HTTP client, and offline batch prediction on Ray Data.

Ray is imported only by the modules that need it (``app``, ``server``, ``batch``; the ``serve`` extra), never by
``import fastinst_rt``: the client (``Client``, also reached as ``Segmenter("http://host:8000")``) and the wire
format need only the standard library, numpy and pycocotools. Names are loaded on first use, so that the CLI's
argument wiring (``serving.cli``) costs nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Client", "ServerError", "ServeConfig", "start_server", "predict_ray"]

_HOMES = {"Client": "client", "ServerError": "client", "ServeConfig": "app", "start_server": "server",
          "predict_ray": "batch"}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
