"""Image loading, resizing and batching, exactly as the official FastInst test pipeline does it.

Reproduces Detectron2's ``read_image`` (PIL, EXIF orientation, RGB) and ``ResizeShortestEdge`` (PIL bilinear on
uint8, sizes rounded as ``int(x + 0.5)``), and pads bottom/right to multiples of 32 as ``ImageList.from_tensors``.
Normalization is not done here: the model (or the exported graph) takes uint8 and normalizes on the device.
Numpy/PIL/OpenCV only, so the ONNX Runtime and TensorRT backends can use it without torch.

Two resizes (``RESIZE_MODES``): ``"exact"`` is the official one, pixel for pixel (parity, ``eval``); ``"fast"`` first
halves a much larger image with exact 2x2 box averages and then runs the same PIL bilinear on the rest, which is
what PIL's own ``reducing_gap=2`` computes, 2-5x faster on camera frames (``benchmarks/resize_agreement.py``,
result 16 of ``benchmarks/README.md``). Both give the same pixels when the image shrinks less than 4x.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..artifact import MAX_TEST_SIZE  # the bound of the test-time resize, shared with the artifact format

__all__ = [
    "MAX_SIDE",
    "MAX_TEST_SIZE",
    "RESIZE_MODES",
    "ImageError",
    "ImageSource",
    "PreprocessInfo",
    "check_resize",
    "check_test_size",
    "load_image",
    "pad_batch",
    "prepare",
    "resize_image",
    "resized_size",
]

#: Largest accepted image side in pixels; anything larger is almost surely a mistake (and would need gigabytes).
MAX_SIDE = 2**15

ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray]

#: The test-time resizes: "exact" (the official PIL bilinear) and "fast" (box halvings, then the same bilinear).
RESIZE_MODES = ("exact", "fast")


# PIL modes that hold 16-bit (or 32-bit integer) gray values; PIL's own convert("RGB") clips these at 255.
_WIDE_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageError(ValueError):
    """An image that exists but cannot be used: undecodable, truncated, or of an unsupported kind."""


def load_image(source: ImageSource, color: str = "bgr") -> np.ndarray:
    """Load an image as an HxWx3 uint8 RGB array, C-contiguous.

    Args:
        source: a path (str or os.PathLike) to an image file, a PIL image, or a numpy array.
            Files and PIL images get their EXIF orientation applied (as Detectron2's ``read_image`` does), then
            are converted to RGB: alpha is dropped; 16-bit gray (``I;16*``, and ``I`` clipped to 0..65535) is
            scaled to 8 bits as ``value >> 8`` and replicated to 3 channels; float (``F``) images are refused.
            Arrays must be uint8 or uint16 (uint16 is scaled as ``>> 8``), shaped HxW, HxWx1, HxWx3 or HxWx4.
        color: channel order of a 3- or 4-channel array, ``"bgr"`` (OpenCV's, the default) or ``"rgb"``.
            Ignored for files and PIL images, which are RGB by definition.

    Returns:
        (H, W, 3) uint8 RGB. When ``source`` already is a C-contiguous HxWx3 uint8 array given as ``"rgb"``, it is
        returned as is (no copy).

    Raises:
        FileNotFoundError: the path does not name a file.
        ImageError: the file cannot be decoded (not an image, corrupt, truncated) or is a float image.
        TypeError: an unsupported source type or array dtype.
        ValueError: a bad ``color``, array shape, an empty image, or a side longer than ``MAX_SIDE``.
    """
    if color not in ("bgr", "rgb"):
        raise ValueError(f"color must be 'bgr' or 'rgb', got {color!r}")
    if isinstance(source, np.ndarray):
        rgb = _array_to_rgb(source, color)
    elif isinstance(source, Image.Image):
        _check_size(source.height, source.width)
        rgb = _pil_to_rgb(_exif_transpose(source, "PIL image"), "PIL image")
    elif isinstance(source, (str, os.PathLike)):
        rgb = _read_file(Path(source))
    else:
        raise TypeError(f"unsupported image source {type(source).__name__}: expected a path, a PIL image or an array")
    return np.ascontiguousarray(rgb)


def _read_file(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    try:
        with Image.open(path) as img:
            # Check the header size before decoding, so a huge file is refused without allocating it.
            _check_size(img.height, img.width)
            # Force full decoding here: PIL is lazy, and a truncated file would otherwise fail later (or not at all).
            img.load()
            img = _exif_transpose(img, str(path))
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(f"could not decode image file {path}: {e}") from e
    return _pil_to_rgb(img, str(path))


def _exif_transpose(img: Image.Image, what: str) -> Image.Image:
    # Only transpose when a non-trivial orientation is present: exif_transpose copies the image otherwise.
    try:
        if img.getexif().get(0x0112, 1) == 1:
            return img
        return ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError) as e:
        raise ImageError(f"could not read the EXIF orientation of {what}: {e}") from e


def _pil_to_rgb(img: Image.Image, what: str) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img)
    if mode == "F":
        raise ImageError(f"float images (PIL mode 'F') are not supported: {what}")
    if mode in _WIDE_GRAY_MODES:
        # PIL's convert("RGB") would clip these at 255 (Detectron2's read_image does that); scale instead.
        gray = np.asarray(img).astype(np.int64)
        gray = (np.clip(gray, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    try:
        # L, P, LA, RGBA, CMYK, YCbCr, 1, ...: PIL's conversion, alpha dropped, as Detectron2's read_image does.
        return np.asarray(img.convert("RGB"))
    except (ValueError, OSError) as e:
        raise ImageError(f"cannot convert PIL mode {mode!r} to RGB: {what}") from e


def _array_to_rgb(arr: np.ndarray, color: str) -> np.ndarray:
    if arr.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"image array dtype must be uint8 or uint16, got {arr.dtype}")
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ValueError(f"image array must be HxW, HxWx1, HxWx3 or HxWx4, got shape {arr.shape}")
    _check_size(arr.shape[0], arr.shape[1])
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if color == "rgb":
        return arr if arr.shape[2] == 3 else arr[:, :, :3]
    return arr[:, :, 2::-1]  # BGR(A) -> RGB: the first three channels reversed (a view, copied by the caller)


def _check_size(h: int, w: int) -> None:
    if h < 1 or w < 1:
        raise ValueError(f"empty image: size {h}x{w}")
    if h > MAX_SIDE or w > MAX_SIDE:
        raise ValueError(f"image of {h}x{w} pixels is too large: each side must be at most {MAX_SIDE}")


def check_test_size(min_size: int, max_size: int) -> None:
    """Refuse a test-time resize outside ``32 <= min_size <= max_size <= MAX_TEST_SIZE`` (ValueError naming both)."""
    if not 32 <= min_size <= max_size <= MAX_TEST_SIZE:
        raise ValueError(
            f"bad test size {min_size}/{max_size}: need 32 <= min_size <= max_size <= {MAX_TEST_SIZE} (MAX_TEST_SIZE)"
        )


def resized_size(h: int, w: int, min_size: int, max_size: int) -> tuple[int, int]:
    """Output size of Detectron2's ``ResizeShortestEdge`` for an ``h`` x ``w`` image, as ``(new_h, new_w)``.

    The short side becomes ``min_size``; if the long side then exceeds ``max_size``, both are scaled down so it is
    ``max_size``. Each side is rounded as ``int(x + 0.5)``, e.g. 480x640 -> (640, 853) with 640/853 and
    (576, 768) with 576/777. A side that would round to 0 (an image of extreme aspect ratio, e.g. 1x30000) is kept
    at 1 pixel, where the official code fails. Pure arithmetic (training uses it uncapped); ``prepare`` bounds the
    test-time sizes.
    """
    if h < 1 or w < 1 or min_size < 1 or max_size < 1:
        raise ValueError(f"sizes must be positive, got h={h} w={w} min_size={min_size} max_size={max_size}")
    # Same float expressions, in the same order, as detectron2.data.transforms.ResizeShortestEdge.get_output_shape.
    scale = min_size * 1.0 / min(h, w)
    if h < w:
        newh, neww = float(min_size), scale * w
    else:
        newh, neww = scale * h, float(min_size)
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh = newh * scale
        neww = neww * scale
    return max(1, int(newh + 0.5)), max(1, int(neww + 0.5))


def check_resize(resize: str) -> str:
    """``resize`` if it is one of ``RESIZE_MODES``, else ValueError naming the choices."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    return resize


def resize_image(rgb: np.ndarray, size_hw: tuple[int, int], mode: str = "exact") -> np.ndarray:
    """Resize an (H, W, 3) uint8 image to ``size_hw`` = (h, w): (h, w, 3) uint8.

    ``mode="exact"``: PIL bilinear, as the official code does. PIL's bilinear filter antialiases when it shrinks an
    image (cv2 and ``F.interpolate`` do not), and rounds to uint8; any other resize gives different pixels.
    ``mode="fast"``: while both sides are even and at least 4x the target, halve with exact 2x2 box averages
    (OpenCV's integer ``INTER_AREA``, rounded half up as PIL's ``reduce``), then the same PIL bilinear. Identical to
    "exact" when the image shrinks less than 4x (or grows). Returns ``rgb`` itself when the size is unchanged.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"resize_image expects an HxWx3 uint8 image, got {rgb.dtype} {rgb.shape}")
    check_resize(mode)
    h, w = size_hw
    if (h, w) == rgb.shape[:2]:
        return rgb
    if mode == "fast":
        # Halve while a shrink of 2x or more is left for the bilinear (PIL's reducing_gap=2): it then still spans 2-4
        # source pixels per output pixel, so its antialiasing is kept (mean |difference| to "exact" 0.25 grey levels
        # on a 1080p photo; halving down to a 1-2x bilinear: 0.65, OpenCV INTER_AREA 1.1). Odd sides stop the
        # halving: a 2x2 box there would shift the geometry by half a pixel.
        while not rgb.shape[0] % 2 and not rgb.shape[1] % 2 and min(rgb.shape[0] / h, rgb.shape[1] / w) >= 4:
            rgb = cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))


def pad_batch(images: Sequence[np.ndarray], size_divisibility: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Stack resized (H, W, 3) uint8 RGB images into a zero-padded CHW batch.

    Args:
        images: one or more (h_i, w_i, 3) uint8 RGB images (already resized).
        size_divisibility: the padded height and width are rounded up to a multiple of this (0 or 1: no rounding).

    Returns:
        ``(batch, sizes)``: batch is (B, 3, Hp, Wp) uint8 with each image at the top left and zeros bottom/right,
        Hp/Wp the largest h/w rounded up to ``size_divisibility``; sizes is (B, 2) int64, each image's (h, w).
        The padding value is only a placeholder: the model normalizes and then sets the padding to 0.0, as
        Detectron2's ``ImageList.from_tensors`` pads the normalized tensor with 0.
    """
    if len(images) == 0:
        raise ValueError("pad_batch needs at least one image")
    if size_divisibility < 0:
        raise ValueError(f"size_divisibility must be >= 0, got {size_divisibility}")
    for i, im in enumerate(images):
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f"image {i}: expected HxWx3 uint8, got {im.dtype} {im.shape}")
    sizes = np.array([im.shape[:2] for im in images], dtype=np.int64)
    hp, wp = (int(v) for v in sizes.max(axis=0))
    if size_divisibility > 1:
        hp = -(-hp // size_divisibility) * size_divisibility
        wp = -(-wp // size_divisibility) * size_divisibility
    batch = np.zeros((len(images), 3, hp, wp), dtype=np.uint8)
    for i, im in enumerate(images):
        h, w = im.shape[:2]
        batch[i, :, :h, :w] = im.transpose(2, 0, 1)
    return batch, sizes


@dataclass(frozen=True)
class PreprocessInfo:
    """What post-processing needs to know about one image: sizes as (h, w) before and after the resize."""

    orig_size: tuple[int, int]
    resized_size: tuple[int, int]


def prepare(
    images: Sequence[np.ndarray],
    min_size: int,
    max_size: int,
    size_divisibility: int = 32,
    fixed_size: tuple[int, int] | None = None,
    resize: str = "exact",
) -> tuple[np.ndarray, np.ndarray, list[PreprocessInfo]]:
    """Resize (shortest edge ``min_size``, long edge capped at ``max_size``) and pad RGB images into a batch.

    Args:
        images: (H_i, W_i, 3) uint8 RGB images, e.g. from ``load_image``.
        min_size, max_size: the test-time resize, e.g. 640/853 or 576/777.
        size_divisibility: see ``pad_batch``.
        fixed_size: (H, W) of an artifact that takes one padded input size (a static graph), else None.
            The official resize is kept whenever it fits in (H, W); otherwise (e.g. a portrait image in a landscape
            graph) it is shrunk, aspect ratio kept, until it fits. The input is the official one when the official
            padded size equals (H, W) (e.g. 4:3 landscape photos at the default export size); other images see
            more zero padding than the official batch-1 input.
        resize: "exact" (the official pixels) or "fast" (see ``resize_image``).

    Returns:
        ``(batch, sizes, infos)``: the (B, 3, Hp, Wp) uint8 batch (Hp, Wp = ``fixed_size`` when given, else as
        ``pad_batch`` pads), the (B, 2) int64 resized (h, w) of each image (the backends' ``sizes`` input), and one
        ``PreprocessInfo`` per image.

    Raises:
        ValueError: no image, an unknown ``resize``, or sizes outside ``32 <= min_size <= max_size <= MAX_TEST_SIZE``
            (``check_test_size``).
    """
    if len(images) == 0:
        raise ValueError("prepare needs at least one image")
    check_resize(resize)
    check_test_size(min_size, max_size)  # a resize target of 100000 would need tens of GB before any check
    resized, infos = [], []
    for im in images:
        h, w = im.shape[:2]
        size = resized_size(h, w, min_size, max_size)
        if fixed_size is not None:
            size = _fit(size, fixed_size)
        resized.append(resize_image(im, size, resize))
        infos.append(PreprocessInfo(orig_size=(h, w), resized_size=size))
    batch, sizes = pad_batch(resized, size_divisibility)
    if fixed_size is not None:
        full = np.zeros((batch.shape[0], 3, *fixed_size), np.uint8)
        full[:, :, : batch.shape[2], : batch.shape[3]] = batch
        batch = full
    return batch, sizes, infos


def _fit(size: tuple[int, int], bound: tuple[int, int]) -> tuple[int, int]:
    """``size`` (h, w) unchanged if it fits in ``bound`` (H, W), else scaled down to fit, aspect ratio kept."""
    (h, w), (bh, bw) = size, bound
    if h <= bh and w <= bw:
        return h, w
    scale = min(bh / h, bw / w)
    return max(1, min(bh, int(h * scale + 0.5))), max(1, min(bw, int(w * scale + 0.5)))
