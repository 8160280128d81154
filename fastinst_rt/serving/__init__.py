"""Scale-out: a Ray Serve application and its HTTP client, and offline batch prediction on Ray Data.

Ray is imported only by the modules that need it (``app``, ``server``, ``batch``; the ``serve`` extra), never by
``import fastinst_rt``: the client (``Client``, also reached as ``Segmenter("http://host:8000")``) and the wire
format need only the standard library, numpy and pycocotools.
"""

from __future__ import annotations

from .client import Client, ServerError

__all__ = ["Client", "ServerError"]
