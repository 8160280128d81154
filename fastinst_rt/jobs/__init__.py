"""The jobs the CLI runs over the core runtime: ``predict`` (folders, videos), ``evaluate`` (COCO AP), ``bench``
(per-stage latency) and ``demo``. Each is a library function; ``fastinst_rt.cli`` is a thin layer over them.

Only the public runtime (``Segmenter``, ``Results``, ``preprocess``) is used here: a job never reaches into a backend.
"""
