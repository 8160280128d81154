"""INT8 calibration kept: the activation ranges of one export, to keep, share and rebuild the same graph without images.

TensorRT users keep a calibration cache beside an engine; this is that for the Q/DQ ONNX graph. ``export --int8
--calib DIR --calib-cache FILE`` writes it after the graph passed its gate; ``export --int8 --calib-cache FILE``
(no images) rebuilds the identical graph, byte for byte, from it.

The file is JSON, versioned::

    {"format": "fastinst-rt calibration", "version": 1,
     "graph_sha256": "...",        # the FP32 graph the ranges were measured on (serialized ONNX, before quantization)
     "method": "percentile",       # export.quantize.CALIB_METHODS
     "images": 32,                 # calibration images the ranges come from
     "float32_regions": ["backbone.res2"],   # regions the export's gate left in float32 (quantize.conv_regions)
     "ranges": {...}}              # onnxruntime's calibration data, as its save_tensors_data writes it

``ranges`` is onnxruntime's own format (``onnxruntime.quantization.calibrate.save_tensors_data``), so the quantizer
reads it as it reads the ranges of a fresh calibration. A cache made for another graph (another model, input size,
exporter or version) is refused rather than applied: ranges are per tensor name, and names can coincide.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from fastinst_rt.io.outputs import write_atomic

__all__ = ["CACHE_FORMAT", "CACHE_VERSION", "CalibrationCache", "graph_sha256", "read_cache", "write_cache"]

CACHE_FORMAT = "fastinst-rt calibration"
CACHE_VERSION = 1
_MAX_BYTES = 64 * 2**20  # ranges of a few thousand tensors are well under a megabyte; refuse before reading more


@dataclass(frozen=True)
class CalibrationCache:
    """What ``read_cache`` returns: the ranges (onnxruntime's JSON text) and how they were made."""

    ranges_json: str
    method: str
    images: int
    float32_regions: tuple[str, ...]

    def write_ranges(self, path: str | os.PathLike) -> Path:
        """The ranges as the file ``quantize.quantize_onnx(ranges=...)`` reads."""
        return write_atomic(path, self.ranges_json)


def graph_sha256(serialized: bytes) -> str:
    """The identity of the FP32 graph a cache belongs to."""
    return hashlib.sha256(serialized).hexdigest()


def write_cache(path: str | os.PathLike, ranges: str | os.PathLike, graph: str, method: str, images: int,
                float32_regions: tuple[str, ...]) -> Path:  # fmt: skip
    """Write the cache of an export whose ranges are in ``ranges`` (onnxruntime's calibration file)."""
    data = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "graph_sha256": graph, "method": method,
            "images": int(images), "float32_regions": list(float32_regions),
            "ranges": json.loads(Path(ranges).read_text())}  # fmt: skip
    return write_atomic(path, json.dumps(data))


def read_cache(path: str | os.PathLike, graph: str, methods: tuple[str, ...]) -> CalibrationCache:
    """The validated cache at ``path`` for the FP32 graph whose ``graph_sha256`` is ``graph``; ValueError with the
    reason (naming the file) for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such calibration cache: {path}")
    if path.stat().st_size > _MAX_BYTES:
        raise ValueError(f"{path} is not a calibration cache: {path.stat().st_size} bytes")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a calibration cache: not JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        raise ValueError(f"{path} is not a fastinst-rt calibration cache")
    if data.get("version") != CACHE_VERSION:
        raise ValueError(f"{path}: calibration cache version {data.get('version')!r}; this fastinst-rt reads "
                         f"{CACHE_VERSION}: calibrate again with --calib")  # fmt: skip
    if data.get("graph_sha256") != graph:
        raise ValueError(f"{path} was calibrated on another graph (another model, input size, exporter or version): "
                         "calibrate again with --calib")  # fmt: skip
    regions, images, ranges = data.get("float32_regions"), data.get("images"), data.get("ranges")
    if data.get("method") not in methods or not isinstance(images, int) or images < 1 or not isinstance(ranges, dict):
        raise ValueError(f"{path}: a calibration cache needs method in {methods}, images >= 1 and ranges")
    if not isinstance(regions, list) or not all(isinstance(r, str) for r in regions):
        raise ValueError(f"{path}: float32_regions must be a list of region names")
    return CalibrationCache(json.dumps(ranges), data["method"], images, tuple(regions))
