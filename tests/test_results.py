"""Tests of fastinst_rt.runtime.results.Results on a real photo with hand-made instances."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from skimage import data

from fastinst_rt.runtime.results import Results

NAMES = ["person", "cat", "cup"]


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return data.chelsea()  # (300, 451, 3) RGB


@pytest.fixture()
def res(image) -> Results:
    h, w = image.shape[:2]
    masks = np.zeros((4, h, w), bool)
    masks[0, 50:120, 60:200] = True
    yy, xx = np.mgrid[:h, :w]
    masks[1] = (yy - 200) ** 2 + (xx - 300) ** 2 < 40**2
    masks[2, 10:20, 400:451] = True
    masks[2, 250:260, 0:5] = True  # two parts: one box spanning both
    # masks[3] stays empty
    scores = np.array([0.9, 0.75, 0.4, 0.05], np.float32)
    labels = np.array([1, 0, 2, 1], np.int64)
    return Results(masks, scores, labels, NAMES, speed={"preprocess": 1.5, "inference": 7.25})


def test_attributes(res):
    assert len(res) == 4 and res.orig_shape == (300, 451)
    assert res.boxes.dtype == np.float32 and res.boxes.shape == (4, 4)
    np.testing.assert_array_equal(res.boxes[0], [60, 50, 200, 120])
    np.testing.assert_array_equal(res.boxes[1], [261, 161, 340, 240])
    np.testing.assert_array_equal(res.boxes[2], [0, 10, 451, 260])
    np.testing.assert_array_equal(res.boxes[3], [0, 0, 0, 0])
    assert res.names == ["cat", "person", "cup", "cat"]
    assert res.class_names == NAMES and res.speed["inference"] == 7.25
    assert repr(res).startswith("Results(n=4, orig_shape=(300, 451)") and "cat" in repr(res)


def test_indexing(res):
    one = res[1]
    assert isinstance(one, Results) and len(one) == 1 and one.names == ["person"]
    np.testing.assert_array_equal(one.masks[0], res.masks[1])
    assert res[-1].scores.tolist() == [pytest.approx(0.05)]
    assert res[1:3].names == ["person", "cup"]
    assert res[np.array([3, 0])].labels.tolist() == [1, 1]
    picked = res[np.array([True, False, True, False])]
    assert picked.scores.tolist() == pytest.approx([0.9, 0.4])
    np.testing.assert_array_equal(picked.boxes, res.boxes[[0, 2]])
    assert len(res[np.array([], dtype=np.int64)]) == 0
    with pytest.raises(IndexError):
        res[4]
    with pytest.raises(IndexError):
        res[np.array([True, False])]


def test_filter(res):
    kept = res.filter(0.4)
    assert kept.scores.tolist() == pytest.approx([0.9, 0.75, 0.4])
    assert len(res.filter(0.95)) == 0 and res.filter(0.95).orig_shape == (300, 451)


def test_validation(res):
    with pytest.raises(ValueError, match="bool"):
        Results(res.masks.astype(np.uint8), res.scores, res.labels, NAMES)
    with pytest.raises(ValueError, match="scores"):
        Results(res.masks, res.scores[:3], res.labels, NAMES)
    with pytest.raises(ValueError, match="labels"):
        Results(res.masks, res.scores, res.labels.astype(np.float32), NAMES)
    with pytest.raises(ValueError, match="labels must be in 0..1"):
        Results(res.masks, res.scores, res.labels, NAMES[:2])
    with pytest.raises(ValueError, match="boxes"):
        Results(res.masks, res.scores, res.labels, NAMES, boxes=np.zeros((4, 5)))
    converted = Results(res.masks, res.scores.astype(np.float64), res.labels.astype(np.int32), NAMES)
    assert converted.scores.dtype == np.float32 and converted.labels.dtype == np.int64


# pycocotools' decode trips a numpy 2 DeprecationWarning inside its Cython code; not ours to fix.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_to_coco_round_trip(res):
    coco_ids = [1, 17, 47]
    dets = res.to_coco(image_id=139, category_ids=coco_ids)
    assert len(dets) == 4
    text = json.dumps(dets)  # JSON-serialisable
    for det, mask, label, score, box in zip(json.loads(text), res.masks, res.labels, res.scores, res.boxes):
        assert det["image_id"] == 139 and det["category_id"] == coco_ids[label]
        assert det["score"] == pytest.approx(float(score))
        rle = {"size": det["segmentation"]["size"], "counts": det["segmentation"]["counts"].encode("ascii")}
        np.testing.assert_array_equal(mask_utils.decode([rle])[:, :, 0].astype(bool), mask)
        x, y, w, h = det["bbox"]
        assert [x, y, x + w, y + h] == box.tolist()
    assert res.to_coco(5)[1]["category_id"] == 0  # no mapping: the label itself
    assert res.filter(1.0).to_coco(5) == []
    with pytest.raises(ValueError, match="category_ids"):
        res.to_coco(1, category_ids=[1, 2])


def test_to_dict(res):
    d = json.loads(json.dumps(res.to_dict()))
    assert "masks" not in d
    assert d["names"] == ["cat", "person", "cup", "cat"] and d["labels"] == [1, 0, 2, 1]
    assert d["boxes"][0] == [60, 50, 200, 120] and d["scores"][0] == pytest.approx(0.9)
    assert d["orig_shape"] == [300, 451]


def test_draw(res, image):
    before = image.copy()
    out = res.draw(image, color="rgb", show_labels=False)
    np.testing.assert_array_equal(image, before)  # the input is untouched
    assert out.shape == image.shape and out.dtype == np.uint8 and out is not image
    inside = res.masks[0]
    assert np.abs(out[inside].astype(int) - image[inside]).mean() > 10
    # Away from every mask (contours are anti-aliased, so leave a margin) the image is unchanged.
    near = cv2.dilate(res.masks.any(axis=0).astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    np.testing.assert_array_equal(out[~near], image[~near])


def test_draw_labels_and_color_order(res, image):
    plain = res.draw(image, color="rgb", show_labels=False)
    labelled = res.draw(image, color="rgb")
    assert (labelled != plain).any()  # boxes and text were added
    # Drawing a BGR image in BGR gives the channel-swapped drawing of the RGB image.
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    np.testing.assert_array_equal(res.draw(bgr, color="bgr")[:, :, ::-1], labelled)
    # Each class gets its own colour, the same every time.
    solid = res.draw(np.zeros_like(image), color="rgb", alpha=1.0, show_labels=False)
    cat, person = solid[80, 100], solid[200, 300]
    assert (cat != person).any()
    np.testing.assert_array_equal(res[0].draw(np.zeros_like(image), "rgb", 1.0, False)[80, 100], cat)


def test_draw_refuses_wrong_image(res, image):
    with pytest.raises(ValueError, match=r"\(300, 451\)"):
        res.draw(image[:200])
    with pytest.raises(ValueError, match="color"):
        res.draw(image, color="hsv")
