"""COCO evaluation through pycocotools on real photos: a model scored against its own predictions gets AP 100."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from fastinst_rt import Segmenter
from fastinst_rt.coco import COCO_CATEGORY_IDS, COCO_CLASSES
from fastinst_rt.jobs.evaluate import category_mapping, evaluate_coco

from .conftest import TEST_VARIANTS


@pytest.fixture(scope="module")
def seg(tiny_checkpoints) -> Segmenter:
    # Scores of this random-weight model are 0.02-0.07: the threshold keeps a handful of instances per photo.
    return Segmenter(tiny_checkpoints[TEST_VARIANTS[0]], conf=0.045, max_det=100)


def _dataset(seg: Segmenter, photos: list[np.ndarray], root: Path, keep: int = 100, perturb: bool = False) -> Path:
    """A COCO file whose ground truth is every instance ``seg`` finds (at most ``keep``); with ``perturb`` the
    ground-truth masks lose their right 40%, so predictions overlap them with IoU about 0.6."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, rgb in enumerate(photos, start=1):
        name = f"photo{image_id}.png"
        Image.fromarray(rgb).save(images_dir / name)
        images.append({"id": image_id, "file_name": name, "height": rgb.shape[0], "width": rgb.shape[1]})
        res = seg.predict(images_dir / name)
        res = res[res.masks.sum(axis=(1, 2)) > 0]  # an empty mask cannot be matched by anything
        for rec in res[:keep].to_coco(image_id, COCO_CATEGORY_IDS):
            if perturb:
                m = mask_utils.decode(rec["segmentation"])
                x1, _, w, _ = rec["bbox"]
                m[:, int(x1 + 0.6 * w) :] = 0
                rec["segmentation"] = mask_utils.encode(np.asfortranarray(m))
                rec["segmentation"]["counts"] = rec["segmentation"]["counts"].decode()
                rec["bbox"] = [float(v) for v in mask_utils.toBbox(rec["segmentation"])]
            area = float(mask_utils.area(rec["segmentation"]))
            rec.update(id=len(annotations) + 1, iscrowd=0, area=area)
            annotations.append(rec)
    categories = [{"id": i, "name": n} for i, n in zip(COCO_CATEGORY_IDS, COCO_CLASSES)]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_own_predictions_score_100_and_perturbed_less(seg, photo, photo_wide, tmp_path: Path) -> None:
    exact = evaluate_coco(seg, _dataset(seg, [photo, photo_wide], tmp_path / "a"), tmp_path / "a" / "images",
                          json_path=tmp_path / "ap.json", progress=False)  # fmt: skip
    assert exact["images"] == 2 and exact["instances"] >= 6
    assert exact["segm"]["AP"] == pytest.approx(100.0, abs=0.01)
    assert exact["bbox"]["AP"] == pytest.approx(100.0, abs=0.01)
    assert json.loads((tmp_path / "ap.json").read_text())["segm"]["AP"] == pytest.approx(100.0, abs=0.01)
    perturbed = _dataset(seg, [photo, photo_wide], tmp_path / "b", perturb=True)
    moved = evaluate_coco(seg, perturbed, tmp_path / "b" / "images", progress=False)
    assert moved["segm"]["AP"] < 60.0 and moved["bbox"]["AP"] < 60.0
    assert moved["segm"]["AP50"] == pytest.approx(100.0, abs=0.01), "IoU 0.6 still counts at the 0.5 threshold"
    one = evaluate_coco(seg, tmp_path / "a" / "instances.json", tmp_path / "a" / "images", max_images=1, progress=False)
    assert one["images"] == 1


def test_bad_datasets_fail_cleanly(seg, photo, tmp_path: Path) -> None:
    ann = _dataset(seg, [photo], tmp_path, keep=2)
    with pytest.raises(FileNotFoundError, match="no such image folder"):
        evaluate_coco(seg, ann, tmp_path / "nowhere", progress=False)
    data = json.loads(ann.read_text())
    data["annotations"][0]["image_id"] = 99
    bad_ids = tmp_path / "bad_ids.json"
    bad_ids.write_text(json.dumps(data))
    out = tmp_path / "never.json"
    with pytest.raises(ValueError, match="unknown image id"):
        evaluate_coco(seg, bad_ids, tmp_path / "images", json_path=out, progress=False)
    assert not out.exists(), "nothing half-written"
    data = json.loads(ann.read_text())
    data["categories"] = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="80 classes but the dataset has 2"):
        evaluate_coco(seg, other, tmp_path / "images", progress=False)


def test_category_mapping() -> None:
    cats = [{"id": 7, "name": "b"}, {"id": 3, "name": "a"}]
    assert category_mapping(("a", "b"), cats) == [3, 7]
    assert category_mapping(("x", "y"), cats) == [3, 7], "falls back to sorted category-id order"


def test_eval_command(seg, tiny_checkpoints, photo, tmp_path: Path, capsys) -> None:
    from fastinst_rt.cli import main

    ann = _dataset(seg, [photo], tmp_path)
    out = tmp_path / "ap.json"
    argv = ["eval", str(tiny_checkpoints[TEST_VARIANTS[0]]), "--coco-json", str(ann), "--images",
            str(tmp_path / "images"), "--conf", "0.045", "--json", str(out), "-q"]  # fmt: skip
    assert main(argv) == 0
    assert "segm (masks): AP 100.0" in capsys.readouterr().out
    assert json.loads(out.read_text())["bbox"]["AP"] == pytest.approx(100.0, abs=0.01)
    assert main(["eval", str(tiny_checkpoints[TEST_VARIANTS[0]]), "--coco-json", str(ann), "--images", "nope"]) == 2
    assert "no such image folder" in capsys.readouterr().err
