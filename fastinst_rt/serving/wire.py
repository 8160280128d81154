"""The HTTP wire format of ``POST /v1/segment``, written once and read by both the server and the client.

A response body is JSON::

    {"image_size": [H, W],
     "instances": [{"label": int, "name": str, "score": float, "box": [x1, y1, x2, y2],
                    "mask": {"size": [H, W], "counts": str}}, ...],
     "timing_ms": {"decode": ..., "queue": ..., "preprocess": ..., "inference": ..., "postprocess": ...}}

``mask`` is COCO compressed RLE of the whole image (pycocotools' format, so any COCO tool reads it), written from
the mask crops (``CropMasks.to_rle``, byte-identical to pycocotools' encoding of the dense mask) and read back into
crops (``CropMasks.from_rle``): neither side builds whole-image masks, and masks are exact after decoding. The
format is the one it always was (it has no version field). Boxes are xyxy pixel edges as ``Results.boxes``. No Ray
here: the client needs only numpy, pycocotools and the standard library.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..runtime.masks import CropMasks
from ..runtime.preprocess import MAX_SIDE, ImageError, load_image
from ..runtime.results import Results

__all__ = ["MAX_BODY_BYTES", "MAX_PIXELS", "ImageTooLarge", "decode_image", "results_to_json", "results_from_json"]

#: Largest accepted request body: 32 MiB holds any sensibly encoded photo (a 8K PNG is ~100 MB raw, ~20 MB encoded).
MAX_BODY_BYTES = 32 * 2**20
# Pixels of one decoded request image (width x height): 4096 x 4096. What a request costs grows with it (the decoded
# RGB image, its resized copy, the mask windows); benchmarks/README.md states the measured peak of the largest.
MAX_PIXELS = 4096 * 4096


class ImageTooLarge(ImageError):
    """An image whose header declares more pixels than the server takes (answered 413, before it is decoded)."""


def decode_image(data: bytes, what: str = "request body", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, WebP, ...) -> (H, W, 3) uint8 RGB, exactly as ``load_image`` reads a file.

    The header's size is checked before the pixels are decoded: ``ImageTooLarge`` past ``max_pixels`` (a 21 KB PNG
    can declare 4000 x 4000). Raises ``ImageError`` (a ``ValueError``) with a one-line reason for bytes that are not
    a decodable image.
    """
    if not data:
        raise ImageError(f"{what} is empty: expected encoded image bytes (JPEG, PNG, WebP)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.height > MAX_SIDE or img.width > MAX_SIDE:
                raise ImageError(f"image of {img.height}x{img.width} pixels is too large (at most {MAX_SIDE} a side)")
            if img.height * img.width > max_pixels:
                raise ImageTooLarge(f"image of {img.height}x{img.width} pixels is over this server's limit of "
                                    f"{max_pixels} pixels")  # fmt: skip
            img.load()  # PIL is lazy: decode now, so a truncated file fails here
            return load_image(img)
    except UnidentifiedImageError:
        raise ImageError(f"{what} is not a decodable image: unknown format (expected JPEG, PNG, WebP, ...)") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageError(f"{what} is not a decodable image: {reason}") from e


def results_to_json(res: Results, timing_ms: dict[str, float] | None = None) -> dict[str, Any]:
    """``Results`` -> the response dict (JSON-serialisable)."""
    h, w = res.orig_shape
    instances = []
    if len(res):
        rles = res.crop_masks.to_rle()
        for rle, label, score, box in zip(rles, res.labels.tolist(), res.scores.tolist(), res.boxes.tolist()):
            instances.append({
                "label": int(label), "name": res.class_names[label], "score": float(score), "box": box,
                "mask": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
            })  # fmt: skip
    return {"image_size": [h, w], "instances": instances, "timing_ms": dict(timing_ms or res.speed)}


def results_from_json(body: dict[str, Any], class_names: Sequence[str]) -> Results:
    """The response dict -> ``Results`` (mask crops decoded from the RLEs, boxes and scores as sent, ``speed`` =
    timing_ms)."""
    h, w = (int(v) for v in body["image_size"])
    instances = body["instances"]
    n = len(instances)
    masks = CropMasks.from_rle([inst["mask"] for inst in instances], (h, w))
    return Results(
        masks,
        np.array([inst["score"] for inst in instances], np.float32),
        np.array([inst["label"] for inst in instances], np.int64),
        class_names,
        boxes=np.array([inst["box"] for inst in instances], np.float32).reshape(n, 4),
        speed={k: float(v) for k, v in body.get("timing_ms", {}).items()},
    )
