"""Checks of a COCO instances file before pycocotools sees it.

pycocotools trusts its input: a missing key is a ``KeyError`` deep inside ``COCOeval``, a bad polygon a bare
``Exception``, and compressed RLE ``counts`` that do not add up to the image size make its C code run far past the
mask (over 120 s measured in ``computeIoU``, or a crash). Each problem here is a ``ValueError`` that names the file
and the image or annotation.

The compressed RLE string format (COCO's ``maskApi.c``): each run length is written in 5-bit groups, least
significant first, one character per group as ``48 + bits``; bit 0x20 of a group says another group follows, and
bit 0x10 of the last group is the sign. From the third run on, the value stored is the difference to the run two
places before.
"""

from __future__ import annotations

import math
from numbers import Real
from pathlib import Path

__all__ = ["check_coco_instances", "rle_counts"]

_IMAGE_KEYS = ("id", "file_name", "height", "width")
_ANNOTATION_KEYS = ("id", "image_id", "category_id", "segmentation", "area", "iscrowd", "bbox")


def rle_counts(counts: str) -> list[int]:
    """The run lengths of a compressed COCO RLE string; ValueError for a character outside the format."""
    runs: list[int] = []
    i, n = 0, len(counts)
    while i < n:
        value, shift, more = 0, 0, True
        while more:
            if i >= n:
                raise ValueError("the string ends inside a run length")
            group = ord(counts[i]) - 48
            if not 0 <= group < 64:
                raise ValueError(f"character {counts[i]!r} at {i} is not part of the RLE format")
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            i += 1
            shift += 5
            if not more and group & 0x10:
                value -= 1 << shift  # sign extension
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_rle(rle: dict, height: int, width: int) -> None:
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
        raise ValueError(f"RLE 'size' must be [height, width], got {size!r}")
    if size != [height, width]:
        raise ValueError(f"RLE size {size} is not the image's [{height}, {width}]")
    if isinstance(counts, str):
        runs = rle_counts(counts)
    elif isinstance(counts, list) and all(_is_int(v) for v in counts):
        runs = counts
    else:
        raise ValueError("RLE 'counts' must be a compressed string or a list of integers")
    if any(r < 0 for r in runs):
        raise ValueError("RLE counts hold a negative run length")
    if sum(runs) != height * width:
        raise ValueError(f"RLE counts add up to {sum(runs)} pixels, not {height}x{width} = {height * width}")


def _check_polygons(polygons: list, height: int, width: int) -> None:
    from pycocotools import mask as mask_utils

    if not polygons:
        raise ValueError("empty polygon list")
    for polygon in polygons:
        # pycocotools reads a 4-number "polygon" as a box, and fails with a bare Exception on other short ones.
        if not (isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0):
            raise ValueError("each polygon must be a list of at least 3 x, y pairs")
        if not all(_is_number(v) for v in polygon):
            raise ValueError("polygon coordinates must be finite numbers")
    try:
        mask_utils.frPyObjects(polygons, height, width)
    except Exception as e:  # pycocotools raises bare Exceptions
        raise ValueError(f"pycocotools cannot read the polygons: {e}") from e


def _check_annotation(ann: object, images: dict[int, dict], category_ids: set[int]) -> None:
    if not isinstance(ann, dict):
        raise ValueError("not a JSON object")
    missing = [k for k in _ANNOTATION_KEYS if k not in ann]
    if missing:
        raise ValueError(f"missing {', '.join(repr(k) for k in missing)}")
    if not all(_is_int(ann[k]) for k in ("id", "image_id", "category_id")):
        raise ValueError("'id', 'image_id' and 'category_id' must be integers")
    if ann["image_id"] not in images:
        raise ValueError(f"unknown image id {ann['image_id']!r}")
    if ann["category_id"] not in category_ids:
        raise ValueError(f"unknown category id {ann['category_id']!r}")
    if ann["iscrowd"] not in (0, 1):
        raise ValueError(f"'iscrowd' must be 0 or 1, got {ann['iscrowd']!r}")
    if not (_is_number(ann["area"]) and ann["area"] >= 0):
        raise ValueError(f"'area' must be a number >= 0, got {ann['area']!r}")
    bbox = ann["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        raise ValueError(f"'bbox' must be [x, y, w, h], got {bbox!r}")
    image, seg = images[ann["image_id"]], ann["segmentation"]
    if isinstance(seg, dict):
        _check_rle(seg, image["height"], image["width"])
    elif isinstance(seg, list):
        _check_polygons(seg, image["height"], image["width"])
    else:
        raise ValueError("'segmentation' must be polygons (a list) or RLE (an object)")


def _check_images(data: dict, path: Path) -> dict[int, dict]:
    images: dict[int, dict] = {}
    for index, image in enumerate(data["images"]):
        where = f"{path}: image {index}" + (f" (id {image.get('id')!r})" if isinstance(image, dict) else "")
        if not isinstance(image, dict) or any(k not in image for k in _IMAGE_KEYS):
            raise ValueError(f"{where}: needs {', '.join(_IMAGE_KEYS)}")
        if not _is_int(image["id"]):
            raise ValueError(f"{where}: the id must be an integer")
        if not all(_is_int(image[k]) and image[k] > 0 for k in ("height", "width")):
            raise ValueError(f"{where}: height and width must be positive integers")
        if image["id"] in images:
            raise ValueError(f"{where}: the id is used twice")
        images[image["id"]] = image
    return images


def check_coco_instances(data: object, path: Path) -> None:
    """Refuse a COCO instances dict that pycocotools would crash or hang on: ValueError naming what is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a COCO instances file: not a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path} is not a COCO instances file: no '{key}' list")
    images = _check_images(data, path)
    if not all(isinstance(c, dict) and "id" in c and "name" in c for c in data["categories"]):
        raise ValueError(f"{path}: every category needs an 'id' and a 'name'")
    category_ids = {c["id"] for c in data["categories"]}
    seen: set = set()
    for index, ann in enumerate(data["annotations"]):
        named = isinstance(ann, dict) and "id" in ann
        label = f"{path}: annotation {index}" + (f" (id {ann['id']!r})" if named else "")
        try:
            _check_annotation(ann, images, category_ids)
        except ValueError as e:
            raise ValueError(f"{label}: {e}") from None
        if ann["id"] in seen:
            raise ValueError(f"{label}: the id is used twice")
        seen.add(ann["id"])
