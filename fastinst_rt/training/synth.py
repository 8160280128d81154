"""A synthetic COCO-format instance segmentation dataset of coloured shapes, for smoke tests and demos.

Each image is a textured, noisy background with a few filled shapes (circles, squares, triangles, stars, rings)
of random colour, size, rotation and position. Later shapes cover earlier ones, so the masks are the visible
parts; a shape is only placed where it leaves every earlier instance mostly visible, so each visible shape is
annotated. Output is deterministic for a seed (numpy generator, OpenCV drawing without anti-aliasing).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from ..io.outputs import write_image

__all__ = ["SHAPES", "draw_shape", "make_synthetic_dataset"]

#: The shape classes ``make_synthetic_dataset`` can draw (the default is the first four).
SHAPES = ("circle", "square", "triangle", "star", "ring")

_MIN_VISIBLE = 0.4  # an instance keeps at least this fraction of its area visible
_MIN_AREA = 40  # pixels; smaller visible parts are not drawn as instances


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float background: a base colour, low-frequency blotches, stripes and pixel noise."""
    base = rng.uniform(40, 215, size=3)
    coarse = rng.normal(0, 25, size=(rng.integers(3, 8), rng.integers(3, 8), 3)).astype(np.float32)
    img = base + cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.5:
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 24)
        yy, xx = np.mgrid[0:h, 0:w]
        img = img + (10 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period))[..., None]
    return img + rng.normal(0, 8, size=(h, w, 3))


def _shape_mask(rng: np.random.Generator, kind: str, h: int, w: int, border_cut: float = 0.0) -> np.ndarray:
    """(h, w) uint8 mask of one shape of ``kind`` at a random position, size and rotation; with probability
    ``border_cut`` its centre lies within 0.8 of its size of an image edge, inside or out, so the edge cuts it as
    it cuts a shape entering or leaving a video."""
    r = rng.uniform(0.07, 0.2) * min(h, w)
    cx, cy = rng.uniform(0.05 * w, 0.95 * w), rng.uniform(0.05 * h, 0.95 * h)
    theta = rng.uniform(0, 2 * np.pi)
    if border_cut and rng.random() < border_cut:  # no extra draws at 0, so older datasets stay identical
        side, offset = int(rng.integers(4)), rng.uniform(-0.8, 0.8) * r
        if side < 2:
            cx = offset if side == 0 else w - offset
        else:
            cy = offset if side == 2 else h - offset
    return draw_shape(kind, h, w, cx, cy, r, theta)


def draw_shape(kind: str, h: int, w: int, cx: float, cy: float, r: float, theta: float) -> np.ndarray:
    """(h, w) uint8 mask (1 inside) of a shape of ``kind`` centred at (cx, cy), of size ``r`` pixels, rotated by
    ``theta`` radians; parts outside the image are cut off."""
    m = np.zeros((h, w), dtype=np.uint8)

    def polygon(radii: Sequence[float], n: int) -> np.ndarray:
        a = theta + np.arange(n) * 2 * np.pi / n
        rr = np.resize(np.asarray(radii, dtype=np.float64), n)
        return np.round(np.stack([cx + rr * np.cos(a), cy + rr * np.sin(a)], 1)).astype(np.int32)

    if kind == "circle":
        cv2.circle(m, (int(round(cx)), int(round(cy))), int(round(r)), 1, thickness=-1)
    elif kind == "square":
        cv2.fillPoly(m, [polygon([r], 4)], 1)
    elif kind == "triangle":
        cv2.fillPoly(m, [polygon([r * 1.2], 3)], 1)
    elif kind == "star":
        cv2.fillPoly(m, [polygon([r * 1.2, r * 0.5], 10)], 1)
    elif kind == "ring":
        center = (int(round(cx)), int(round(cy)))
        cv2.circle(m, center, int(round(r)), 1, thickness=-1)
        cv2.circle(m, center, int(round(r * 0.55)), 0, thickness=-1)
    else:
        raise ValueError(f"unknown shape {kind!r}; choose from {SHAPES}")
    return m


def _render(
    rng: np.random.Generator, h: int, w: int, classes: Sequence[str], max_instances: int, border_cut: float = 0.0
) -> tuple:
    """One image: (h, w, 3) uint8 RGB, and a list of (label, (h, w) bool visible mask)."""
    img = _background(rng, h, w)
    owner = np.full((h, w), -1, dtype=np.int32)  # which instance each pixel shows
    labels: list[int] = []
    for _ in range(int(rng.integers(2, max_instances + 1))):
        label = int(rng.integers(len(classes)))
        for _attempt in range(20):
            m = _shape_mask(rng, classes[label], h, w, border_cut).astype(bool)
            if m.sum() < 2 * _MIN_AREA:
                continue
            # Covering earlier instances is fine (that is the occlusion) as long as each stays mostly visible.
            covered = np.bincount(owner[m & (owner >= 0)], minlength=len(labels))
            visible = np.bincount(owner[owner >= 0], minlength=len(labels))
            left = visible - covered
            if all(left[i] >= _MIN_AREA and left[i] >= _MIN_VISIBLE * visible[i] for i in range(len(labels))):
                break
        else:
            continue
        colour = rng.uniform(0, 255, size=3)
        texture = rng.normal(0, rng.uniform(3, 15), size=(int(m.sum()), 3))
        img[m] = colour + texture
        owner[m] = len(labels)
        labels.append(label)
    rgb = np.clip(img, 0, 255).round().astype(np.uint8)
    return rgb, [(lab, owner == i) for i, lab in enumerate(labels)]


def _segmentation(mask: np.ndarray, kind: str) -> list | dict:
    if kind == "rle":
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
    # Outer contours only: a polygon cannot describe a hole, so rings and cut-through occlusions are approximate.
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def make_synthetic_dataset(
    output_dir: str | os.PathLike,
    num: int,
    seed: int = 0,
    size: tuple[int, int] = (256, 320),
    classes: Sequence[str] = SHAPES[:4],
    max_instances: int = 6,
    image_format: str = "jpg",
    segmentation: str = "rle",
    border_cut: float = 0.0,
) -> Path:
    """Write ``num`` synthetic images and their COCO annotations.

    Args:
        output_dir: gets ``images/NNNNNN.<image_format>`` and ``annotations.json``.
        num: number of images.
        seed: different seeds give different data; the same seed gives identical files.
        size: (H, W) of every image.
        classes: 1 to 5 of ``SHAPES``; category ids are 1..K in this order.
        max_instances: at most this many shapes per image (2 at least are attempted).
        image_format: "jpg" or "png".
        segmentation: "rle" (exact visible masks) or "polygon" (outer contours of the visible masks).
        border_cut: share of the shapes placed across an image edge (0 to 1), partly outside the image like the
            shapes that enter and leave the synthetic videos; 0 (the default) keeps every shape's centre inside.
    Returns:
        The path of ``annotations.json``.
    """
    h, w = size
    if not 1 <= len(classes) <= len(SHAPES) or any(c not in SHAPES for c in classes):
        raise ValueError(f"classes must be 1 to {len(SHAPES)} of {SHAPES}, got {tuple(classes)}")
    if image_format not in ("jpg", "png") or segmentation not in ("rle", "polygon"):
        raise ValueError(f"bad image_format {image_format!r} or segmentation {segmentation!r}")
    if not 0.0 <= border_cut <= 1.0:
        raise ValueError(f"border_cut is a share of the shapes, from 0 to 1; got {border_cut}")
    if num < 1 or h < 32 or w < 32 or max_instances < 2:
        raise ValueError(f"need num >= 1, a size of at least 32x32 and max_instances >= 2; got {num}, {size}")
    root = Path(output_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(num):
        rgb, instances = _render(rng, h, w, classes, max_instances, border_cut)
        name = f"{i:06d}.{image_format}"
        write_image(root / "images" / name, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
        for label, mask in instances:
            ys, xs = np.nonzero(mask)
            x0, y0 = int(xs.min()), int(ys.min())
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": label + 1,
                "segmentation": _segmentation(mask, segmentation), "area": int(mask.sum()),
                "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1], "iscrowd": 0,
            })  # fmt: skip
    categories = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(classes)]
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path
