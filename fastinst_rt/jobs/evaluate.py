"""COCO mask (and box) AP of any artifact, measured through the same ``Segmenter`` users run.

Boxes are derived from the predicted masks (the official code outputs zero boxes, so its box AP means
nothing); box AP is reported beside mask AP for comparison with detectors.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from pathlib import Path

import numpy as np

from ..io.outputs import check_writable, write_atomic
from ..log import bar_disabled
from ..runtime.segmenter import Segmenter
from .coco_checks import check_coco_instances

__all__ = ["evaluate_coco", "category_mapping", "STAT_NAMES"]

# COCOeval.stats[0:6] in order, reported x100.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def category_mapping(class_names: tuple[str, ...], categories: list[dict]) -> list[int]:
    """Dataset category id of each model label.

    By name when every model class is a dataset category name; otherwise by position in sorted category-id
    order (Detectron2's contiguous-id convention), which needs the same number of classes.
    """
    by_name = {c["name"]: c["id"] for c in categories}
    if all(name in by_name for name in class_names):
        return [by_name[name] for name in class_names]
    ids = sorted(c["id"] for c in categories)
    if len(ids) != len(class_names):
        theirs = ", ".join(c["name"] for c in categories[:5])
        raise ValueError(
            f"the model has {len(class_names)} classes but the dataset has {len(ids)} categories and the names do "
            f"not match (model: {', '.join(class_names[:5])}...; dataset: {theirs}...)"
        )
    return ids


def _load_ground_truth(coco_json: str | os.PathLike, images: str | os.PathLike):
    from pycocotools.coco import COCO

    coco_json, images = Path(coco_json), Path(images)
    if not coco_json.is_file():
        raise FileNotFoundError(f"no such annotation file: {coco_json}")
    if not images.is_dir():
        raise FileNotFoundError(f"no such image folder: {images}")
    try:
        data = json.loads(coco_json.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{coco_json} is not valid JSON: {e}") from e
    check_coco_instances(data, coco_json)  # pycocotools would crash (KeyError, bare Exception) or hang otherwise
    missing = [im["file_name"] for im in data["images"] if not (images / im["file_name"]).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) of {coco_json.name} are not in {images}: {missing[:5]}")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    return coco


def _summarize(coco, records: list[dict], iou_type: str, image_ids: list[int]) -> dict[str, float | None]:
    from pycocotools.cocoeval import COCOeval

    if not records:
        return dict.fromkeys(STAT_NAMES, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        detections = coco.loadRes(records)
        ev = COCOeval(coco, detections, iou_type)
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # COCOeval reports -1 where a range holds no ground truth: None (JSON null), not a fake 0 or -100.
    return {name: float(v) * 100 if v >= 0 else None for name, v in zip(STAT_NAMES, ev.stats[:6])}


def evaluate_coco(
    segmenter: Segmenter,
    coco_json: str | os.PathLike,
    images: str | os.PathLike,
    max_images: int | None = None,
    json_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Mask and box AP of ``segmenter`` on a COCO-format dataset.

    Args:
        segmenter: any backend; for official numbers use ``conf=0.0, max_det=100``.
        coco_json: COCO instances annotations. images: the folder holding their ``file_name``s.
        max_images: evaluate the first N images (sorted by id) only; N >= 1.
        json_path: also write the result here (written whole or not at all).
    Returns:
        ``{"segm": {"AP", "AP50", "AP75", "APs", "APm", "APl"}, "bbox": {...}, "images": N, "instances": M,
        "speed": {stage: mean ms}}``; AP values are percentages.
    """
    from tqdm import tqdm

    if max_images is not None and max_images < 1:
        raise ValueError(f"--max-images must be a positive number of images, got {max_images}")
    if json_path:
        check_writable(json_path, "--json")  # before any image is run
    coco = _load_ground_truth(coco_json, images)
    category_ids = category_mapping(tuple(segmenter.class_names), coco.dataset["categories"])
    image_ids = sorted(coco.getImgIds())[:max_images]
    records, totals = [], {}
    start = time.perf_counter()
    for image_id in tqdm(image_ids, desc="eval", disable=bar_disabled(progress)):
        info = coco.imgs[image_id]
        res = segmenter.predict(Path(images) / info["file_name"])
        if res.orig_shape != (info["height"], info["width"]):
            raise ValueError(f"{info['file_name']} is {res.orig_shape} but the annotations say "
                             f"{(info['height'], info['width'])}")  # fmt: skip
        records.extend(res.to_coco(image_id, category_ids))
        for k, v in res.speed.items():
            totals[k] = totals.get(k, 0.0) + v
    n = max(len(image_ids), 1)
    segm = _summarize(coco, records, "segm", image_ids)
    box_records = [{k: v for k, v in r.items() if k != "segmentation"} for r in records]
    result = {
        "segm": segm,
        "bbox": _summarize(coco, box_records, "bbox", image_ids),
        "images": len(image_ids),
        "instances": len(records),
        "seconds": time.perf_counter() - start,
        "speed": {k: v / n for k, v in totals.items()},
    }
    if json_path:
        write_atomic(json_path, json.dumps(result, indent=2, default=_json_default))
    return result


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
