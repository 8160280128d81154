"""Masks as polygons: round trips through pycocotools on the synthetic ground truth, holes, and the CLI's
YOLO-seg label files and COCO polygon JSON read back by pycocotools."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from fastinst_rt import Results, Segmenter
from fastinst_rt.cli import main
from fastinst_rt.io.yolo_labels import read_yolo_seg
from fastinst_rt.runtime.masks import CropMasks
from fastinst_rt.runtime.polygons import DEFAULT_TOLERANCE
from fastinst_rt.training.synth import make_synthetic_dataset

FAST = ["-m", "fastinst-demo", "--backend", "torch", "--device", "cpu", "-q"]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _from_polygons(polygons: list[list[float]], h: int, w: int) -> np.ndarray:
    """pycocotools' rasterization of one instance's COCO polygons (the union of its parts)."""
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))).astype(bool)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[Path, Results]:
    """``fastinst-rt synth --num 50 --seed 7``: its ground-truth masks as one Results (all images are 256x320)."""
    root = tmp_path_factory.mktemp("synth")
    ann = json.loads(Path(make_synthetic_dataset(root, 50, seed=7)).read_text())
    segs = [a["segmentation"] for a in ann["annotations"]]
    masks = CropMasks.from_rle(segs, segs[0]["size"])
    n = len(masks)
    return root, Results(masks, np.ones(n, np.float32), np.zeros(n, np.int64), ["shape"])


# The bounds measured on this set (runtime/polygons.py): lossless up to 0.25 px, mean/min 0.993/0.958 at the default
# 0.5 px, 0.976/0.934 at 1 px.
ROUND_TRIPS = [(0.0, 1.0, 1.0), (0.25, 1.0, 1.0), (DEFAULT_TOLERANCE, 0.99, 0.95), (1.0, 0.97, 0.93)]


@pytest.mark.parametrize("tolerance, mean_iou, min_iou", ROUND_TRIPS)
def test_round_trip_iou_on_the_synthetic_ground_truth(synth, tolerance, mean_iou, min_iou) -> None:
    _, gt = synth
    h, w = gt.orig_shape
    records = gt.to_coco(1, segmentation="polygon", tolerance=tolerance)
    assert len(records) == len(gt) > 200
    ious = np.array([_iou(_from_polygons(r["segmentation"], h, w), gt.masks[i]) for i, r in enumerate(records)])
    assert ious.mean() >= mean_iou and ious.min() >= min_iou, (ious.mean(), ious.min())


def test_holes_are_kept_and_flagged_and_exports_fill_them() -> None:
    h, w = 120, 140
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - 60, xx - 70)
    ring = (r < 40) & (r >= 20)
    island = r < 8  # inside the hole
    res = Results(np.stack([ring, ring | island]), np.array([0.9, 0.8], np.float32), np.zeros(2, np.int64), ["o"])
    (ring_parts, island_parts) = res.polygons(tolerance=0)
    assert len(ring_parts) == 1 and len(ring_parts[0].holes) == 1
    assert len(island_parts) == 2 and [len(p.holes) for p in island_parts] == [1, 0]
    # Outer minus holes, rasterized by pycocotools, is the ring exactly.
    outer = _from_polygons([ring_parts[0].outer.ravel().tolist()], h, w)
    hole = _from_polygons([ring_parts[0].holes[0].ravel().tolist()], h, w)
    np.testing.assert_array_equal(outer & ~hole, ring)
    # COCO polygons cannot hold a hole: the export gives the filled disk (documented), the island part included.
    coco = res.to_coco(1, segmentation="polygon", tolerance=0)
    np.testing.assert_array_equal(_from_polygons(coco[0]["segmentation"], h, w), r < 40)
    assert len(coco[1]["segmentation"]) == 2
    empty = Results(np.zeros((1, h, w), bool), np.ones(1, np.float32), np.zeros(1, np.int64), ["o"])
    assert empty.polygons() == [[]] and empty.to_coco(1, segmentation="polygon") == [] and empty.to_yolo() == []
    with pytest.raises(ValueError, match="tolerance"):
        res.polygons(tolerance=-1)


def test_predict_writes_yolo_labels_and_coco_polygons_read_back_by_pycocotools(synth, tmp_path) -> None:
    root, _ = synth
    images = tmp_path / "images"
    images.mkdir()
    for name in ("000000.jpg", "000001.jpg", "000002.jpg", "000003.jpg"):
        (images / name).write_bytes((root / "images" / name).read_bytes())
    labels, poly_json, rle_json = tmp_path / "labels", tmp_path / "poly.json", tmp_path / "rle.json"
    assert main(["predict", str(images), *FAST, "--save-txt", str(labels), "--json", str(poly_json),
                 "--segmentation", "polygon"]) == 0  # fmt: skip
    assert main(["predict", str(images), *FAST, "--json", str(rle_json)]) == 0
    assert sorted(p.name for p in labels.iterdir()) == ["000000.txt", "000001.txt", "000002.txt", "000003.txt"]
    seg = Segmenter("fastinst-demo", backend="torch", device="cpu")
    for path in sorted(images.iterdir()):
        res = seg.predict(str(path))
        h, w = res.orig_shape
        parts = read_yolo_seg(labels / f"{path.stem}.txt", (h, w))
        assert len(parts) >= len(res) > 0 and {c for c, _ in parts} <= set(res.labels.tolist())
        # The lines are the instances' parts in order: rebuild each instance from its own lines.
        per_instance = [len(p) for p in res.polygons()]
        starts = np.cumsum([0, *per_instance])
        for i in range(len(res)):
            polys = [xy for _, xy in parts[starts[i] : starts[i + 1]]]
            assert _iou(_from_polygons(polys, h, w), res.masks[i]) >= 0.9
    # The polygon JSON is a COCO results file pycocotools loads and scores like the RLE one.
    gt = COCO(str(root / "annotations.json"))
    image_ids = {im["file_name"]: im["id"] for im in gt.dataset["images"]}
    category = [gt.getCatIds(catNms=[name])[0] for name in seg.class_names]  # the model's labels are 0-based
    ap = {}
    for name, path in (("polygon", poly_json), ("rle", rle_json)):
        records = json.loads(path.read_text())
        assert all(isinstance(r["segmentation"], list) == (name == "polygon") for r in records)
        dt = gt.loadRes([{**r, "image_id": image_ids[r["file_name"]], "category_id": category[r["category_id"]]}
                         for r in records])  # fmt: skip
        ap[name] = _segm_ap(gt, dt, [image_ids[p.name] for p in images.iterdir()])
    assert ap["polygon"] > 0.3 and abs(ap["polygon"] - ap["rle"]) < 0.05, ap


def _segm_ap(gt: COCO, dt: COCO, image_ids: list[int]) -> float:
    from pycocotools.cocoeval import COCOeval

    ev = COCOeval(gt, dt, "segm")
    ev.params.imgIds = image_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[0])


def test_save_txt_is_checked_like_every_output(synth, tmp_path, capsys) -> None:
    root, _ = synth
    images = root / "images"
    assert main(["predict", str(images), *FAST, "--save-txt", str(images / "labels")]) == 2
    assert "--save-txt" in capsys.readouterr().err
    same = tmp_path / "out"
    assert main(["predict", str(images / "000000.jpg"), *FAST, "--save-txt", str(same), "--save", str(same)]) == 2
    assert "overlap" in capsys.readouterr().err
    txt = tmp_path / "t"
    assert main(["predict", str(images / "000000.jpg"), *FAST, "--save-txt", str(txt),
                 "--json", str(txt / "000000.txt")]) == 2  # fmt: skip
    assert "collide" in capsys.readouterr().err and not txt.exists()
    cv2.imwrite(str(tmp_path / "blank.png"), np.zeros((64, 64, 3), np.uint8))
    assert main(["predict", str(tmp_path / "blank.png"), *FAST, "--save-txt", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "blank.txt").read_text() == ""  # done, nothing found: an empty label file
