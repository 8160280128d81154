"""Masks as box + crop: the windowed upsampling, RLE and every consumer against the whole-image path, bit for bit.

The reference is the post-processing, encoding and drawing as they were with whole-image masks
(tests/dense_reference.py, kept verbatim).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from skimage import data

from fastinst_rt.runtime.masks import CropMasks, rle_counts
from fastinst_rt.runtime.postprocess import boxes_from_masks, instances_from_pairs, select_pairs
from fastinst_rt.runtime.results import Results, _part_contours
from fastinst_rt.runtime.upsample import MAX_WINDOW, _resize_window, exact, first_resize, upsample_parts
from fastinst_rt.serving.wire import results_from_json, results_to_json
from fastinst_rt.tracking.detections import clean_detections, suppress_duplicates

from .dense_reference import dense_draw, dense_instances_from_pairs, dense_rles

PARITY = Path(__file__).parent / "data" / "parity"


def _same_as_dense(low: np.ndarray, resized, padded, orig, conf: float = 0.0, seed: int = 0) -> CropMasks:
    """Run the crop and the whole-image post-processing on (n, h, w) logits; assert identical results."""
    rng = np.random.default_rng(seed)
    n = low.shape[0]
    probs = np.sort(rng.uniform(0.2, 1.0, n).astype(np.float32))[::-1]
    labels, query = rng.integers(0, 3, n), np.arange(n) // 2 * 2  # every query kept with two classes
    args = (probs, labels, query, low[query], resized, padded, orig)
    scores, labels_c, crops = instances_from_pairs(*args, conf=conf)
    r_scores, r_labels, r_masks = dense_instances_from_pairs(*args, conf=conf)
    np.testing.assert_array_equal(scores, r_scores)  # bit-equal float32, not close
    np.testing.assert_array_equal(labels_c, r_labels)
    assert isinstance(crops, CropMasks) and crops.shape == r_masks.shape
    np.testing.assert_array_equal(crops.boxes, boxes_from_masks(r_masks).astype(np.int64))
    np.testing.assert_array_equal(crops.dense(), r_masks)
    return crops


def test_the_emulated_resize_is_cv2_bit_for_bit() -> None:
    assert exact(), "the fast path would never run on this OpenCV build"
    rng = np.random.default_rng(0)
    for _ in range(300):
        src = tuple(int(v) for v in rng.integers(2, 60, 2))
        dst = tuple(int(v) for v in rng.integers(1, 400, 2))
        low = (rng.normal(size=src) * 8).astype(np.float32)
        ref = cv2.resize(low, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
        y1, x1 = int(rng.integers(0, dst[0])), int(rng.integers(0, dst[1]))
        y2, x2 = int(rng.integers(y1 + 1, dst[0] + 1)), int(rng.integers(x1 + 1, dst[1] + 1))
        for vertical in ("numpy", "cv2"):  # cv2's own vertical pass below zero rows, cut at a period
            got = _resize_window(low, (0, 0), src, dst, (x1, y1, x2, y2), vertical=vertical)
            np.testing.assert_array_equal(got, ref[y1:y2, x1:x2])
    for src, dst in [((192, 341), (1080, 1920)), ((192, 341), (2160, 3840)), ((60, 90), (45, 67))]:
        low = (rng.normal(size=src) * 8).astype(np.float32)
        ref = cv2.resize(low, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
        for y1 in range(0, dst[0] - 1, max(1, dst[0] // 13)):  # windows ending anywhere in the period
            y2, x1 = min(dst[0], y1 + 1 + y1 % 97), y1 % (dst[1] - 2)
            got = _resize_window(low, (0, 0), src, dst, (x1, y1, x1 + 2 + y1 % 50, y2), vertical="cv2")
            np.testing.assert_array_equal(got, ref[y1:y2, x1 : x1 + 2 + y1 % 50])
    for src, dst in [((72, 128), (576, 1024)), ((576, 1024), (1080, 1920)), ((576, 1024), (2160, 3840))]:
        low = (rng.normal(size=src) * 8).astype(np.float32)
        full = _resize_window(low, (0, 0), src, dst, (0, 0, dst[1], dst[0]))
        np.testing.assert_array_equal(full, cv2.resize(low, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR))


def test_random_logits_match_the_whole_image_path() -> None:
    rng = np.random.default_rng(1)
    for i in range(150):
        h8, w8 = (int(v) for v in rng.integers(1, 16, size=2))
        hr, wr = int(rng.integers(max(1, 8 * h8 - 31), 8 * h8 + 1)), int(rng.integers(1, 8 * w8 + 1))
        orig = tuple(int(v) for v in rng.integers(1, 160, size=2))  # smaller and larger than resized
        low = (rng.normal(size=(4, h8, w8)) * 6 - rng.uniform(0, 8)).astype(np.float32)
        _same_as_dense(low, (hr, wr), (8 * h8, 8 * w8), orig, conf=0.0 if i % 3 else 0.3, seed=i)


def _adversarial(h: int, w: int) -> np.ndarray:
    """(n, h, w) logits <= 0 except: 1-pixel lines, each border, corners, scattered pixels, one pixel, none."""
    rng = np.random.default_rng(h * w)
    maps = []
    for fill in ([(h // 2, slice(None))], [(slice(None), w // 3)], [(0, slice(None))], [(h - 1, slice(None))],
                 [(slice(None), 0)], [(slice(None), w - 1)], [(0, 0)], [(h - 1, w - 1)], [(0, w - 1), (h - 1, 0)],
                 [(h // 2, w // 2)], [], [(slice(1, h, 3), slice(1, w, 4))],
                 [(h // 2, 0), (h // 2 + h // 4, w - 1)], [(0, w // 2), (h - 1, w // 2)]):  # fmt: skip
        m = -rng.uniform(0.1, 5, (h, w)).astype(np.float32)
        for where in fill:
            m[where] = rng.uniform(1e-3, 5)
        maps.append(m)
    diag = -np.ones((h, w), np.float32)
    diag[np.arange(min(h, w)), np.arange(min(h, w))] = 0.5
    tiny = np.full((h, w), -1e-3, np.float32)
    tiny[h // 3, w // 3] = 1e-6  # a positive too small to survive interpolation anywhere
    return np.stack([*maps, diag, tiny])


@pytest.mark.parametrize(
    "low_hw, padded, resized, orig",
    [
        ((8, 12), (64, 96), (60, 90), (123, 181)),  # non-integer upscale
        ((8, 12), (64, 96), (60, 90), (45, 67)),  # downscale
        ((9, 10), (40, 40), (37, 31), (50, 50)),  # non-integer first resize (no x8)
        ((72, 128), (576, 1024), (576, 1024), (1080, 1920)),  # a 1080p frame at the 576 test size
        ((64, 80), (512, 640), (480, 640), (2160, 3840)),  # very large upscale
        ((10, 10), (80, 80), (80, 77), (80, 77)),  # no second resize
        ((1, 12), (8, 96), (8, 90), (30, 40)),  # a one-row map: OpenCV's other path, whole-map fallback
    ],
)
def test_adversarial_masks_match_the_whole_image_path(low_hw, padded, resized, orig) -> None:
    low = _adversarial(*low_hw)
    crops = _same_as_dense(low, resized, padded, orig)
    if min(low_hw) > 1:
        assert crops.areas().sum() > 0


def test_parity_outputs_match_the_whole_image_path() -> None:
    """The official raw outputs of tests/data/parity (real logits), selected and post-processed both ways."""
    for path in sorted(PARITY.glob("*.npz")):
        with np.load(path) as z:
            logits, pred_masks = z["pred_logits"], z["pred_masks"]
            resized, orig = tuple(int(v) for v in z["resized_shape"]), tuple(int(v) for v in z["mask_shape"][1:])
        pairs = select_pairs(logits, pred_masks, 100)
        padded = (pred_masks.shape[2] * 8, pred_masks.shape[3] * 8)
        args = tuple(pairs[k][0] for k in ("scores", "labels", "query", "masks")) + (resized, padded, orig)
        scores, labels, crops = instances_from_pairs(*args)
        r_scores, r_labels, r_masks = dense_instances_from_pairs(*args)
        assert len(scores) == 100, path.name
        np.testing.assert_array_equal(scores, r_scores)
        np.testing.assert_array_equal(labels, r_labels)
        np.testing.assert_array_equal(crops.dense(), r_masks)


def test_windows_cover_the_parts_and_large_ones_fall_back() -> None:
    rng = np.random.default_rng(3)
    low = -np.ones((72, 128), np.float32)
    low[30:34, 50:60] = 2.0
    low[60:63, 5:9] = 1.5  # a second part far from the first: two small windows, not one spanning box
    up = first_resize(low, (576, 1024), (576, 1024))
    found = upsample_parts(up, (1080, 1920))
    assert len(found) == 2
    for (x1, y1, x2, y2), logit in found:
        assert logit.shape == (y2 - y1, x2 - x1) and (logit > 0).any()
    assert sum(logit.size for _, logit in found) < 0.02 * 1080 * 1920, "small parts get small windows"
    scattered = np.where(rng.random((72, 128)) > 0.8, 1.0, -1.0).astype(np.float32)
    assert upsample_parts(first_resize(scattered, (576, 1024), (576, 1024)), (1080, 1920)) is None
    assert MAX_WINDOW < 1.0
    _same_as_dense(np.stack([scattered, low]), (576, 1024), (576, 1024), (1080, 1920))


def _masks(h: int, w: int, seed: int) -> np.ndarray:
    """(n, h, w) bool masks: random, empty, full, corners, full-height columns, a blob."""
    rng = np.random.default_rng(seed)
    m = np.zeros((8, h, w), bool)
    m[0] = rng.random((h, w)) > rng.random()
    m[2] = True
    m[3, 0, 0] = m[3, -1, -1] = True
    m[4, :, w // 3 :] = True  # runs continue from the bottom of a column to the top of the next
    m[5, h // 4 : h // 2 + 1, w // 4 : w // 2 + 1] = rng.random((h // 2 - h // 4 + 1, w // 2 - w // 4 + 1)) > 0.4
    m[6, -1, :] = True
    m[7, :, 0] = True
    return m


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (5, 6), (37, 53), (300, 451)])
def test_rle_is_byte_identical_to_pycocotools(shape) -> None:
    for seed in range(5):
        dense = _masks(*shape, seed)
        crops = CropMasks.from_dense(dense)
        ours, theirs = crops.to_rle(), dense_rles(dense)
        assert [r["counts"] for r in ours] == [r["counts"] for r in theirs]
        assert all(list(a["size"]) == list(b["size"]) == list(shape) for a, b in zip(ours, theirs))
        back = CropMasks.from_rle([{"size": r["size"], "counts": r["counts"].decode()} for r in theirs], shape)
        np.testing.assert_array_equal(back.dense(), dense)
        np.testing.assert_array_equal(back.boxes, crops.boxes)
    assert rle_counts(np.zeros((0, 0), bool), (0, 0, 0, 0), (4, 5)).tolist() == [20]
    with pytest.raises(ValueError, match="add up"):
        CropMasks.from_rle(
            [{"size": [4, 5], "counts": mask_utils.encode(np.ones((4, 4, 1), np.uint8, order="F"))[0]["counts"]}],
            (4, 5),
        )


def test_crop_masks_index_measure_and_pickle() -> None:
    dense = _masks(37, 53, 7)
    crops = CropMasks.from_dense(dense)
    assert len(crops) == 8 and crops.shape == dense.shape and crops.image_shape == (37, 53)
    assert sum(c.size for c in crops.crops) < dense.size // 2
    np.testing.assert_array_equal(crops.areas(), dense.sum((1, 2)))
    np.testing.assert_array_equal(crops.boxes, boxes_from_masks(dense))
    np.testing.assert_array_equal(crops.boxes[1], [0, 0, 0, 0])
    for index in (3, -1, slice(2, 5), np.array([6, 0, 6]), np.arange(8) % 3 == 0, np.array([], np.int64)):
        sub = crops[index]
        expected = dense[index] if not isinstance(index, int) else dense[index : index + 1 or None]
        np.testing.assert_array_equal(sub.dense(), expected)
    with pytest.raises(IndexError):
        crops[8]
    with pytest.raises(IndexError):
        crops[np.array([True, False])]
    crop, box = crops.crop(5)
    x1, y1, x2, y2 = box
    np.testing.assert_array_equal(crop, dense[5, y1:y2, x1:x2])
    np.testing.assert_array_equal(crops.region(5, (0, 0, 53, 37)), dense[5])
    np.testing.assert_array_equal(crops.region(5, (20, 3, 50, 30)), dense[5, 3:30, 20:50])
    inter = (dense[:, None] & dense[None]).sum((2, 3))
    union = (dense[:, None] | dense[None]).sum((2, 3))
    np.testing.assert_allclose(crops.iou(crops), np.where(union > 0, inter / np.maximum(union, 1), 0.0))
    both = CropMasks.concatenate([crops[:3], crops[3:]])
    np.testing.assert_array_equal(both.dense(), dense)
    again = pickle.loads(pickle.dumps(crops))
    np.testing.assert_array_equal(again.dense(), dense)
    with pytest.raises(ValueError, match="inside"):
        CropMasks([np.ones((2, 2), bool)], np.array([[52, 0, 54, 2]]), (37, 53))
    with pytest.raises(ValueError, match="crop must be bool"):
        CropMasks([np.ones((2, 3), bool)], np.array([[0, 0, 2, 2]]), (37, 53))


def _results(image: np.ndarray) -> Results:
    h, w = image.shape[:2]
    dense = _masks(h, w, 11)
    rng = np.random.default_rng(2)
    return Results(
        CropMasks.from_dense(dense), rng.random(8).astype(np.float32), rng.integers(0, 3, 8), ["a", "b", "c"]
    )


def test_results_keep_crops_and_match_the_dense_results() -> None:
    image = data.chelsea()  # (300, 451, 3) RGB
    res = _results(image)
    kept = pickle.loads(pickle.dumps(res.filter(0.3)[::-1]))
    assert res._dense is None and kept._dense is None, "indexing, filter and pickling build no dense masks"
    dense = res.masks  # built on first access, then kept
    assert dense.shape == (8, 300, 451) and dense.dtype == bool and res.masks is dense
    assert res._dense is dense and pickle.loads(pickle.dumps(res))._dense is None
    np.testing.assert_array_equal(res.boxes, boxes_from_masks(dense))
    np.testing.assert_array_equal(res.areas, dense.sum((1, 2)))
    np.testing.assert_array_equal(kept.masks, dense[res.scores >= 0.3][::-1])
    coco = json.loads(json.dumps(res.to_coco(image_id=3)))
    assert [d["segmentation"]["counts"] for d in coco] == [r["counts"].decode() for r in dense_rles(dense)]
    from_dense = Results(dense, res.scores, res.labels, res.class_names)  # a dense array is still accepted
    assert from_dense.masks is dense and from_dense.to_coco(3) == res.to_coco(3)


@pytest.mark.parametrize("color", ["rgb", "bgr"])
def test_draw_is_the_dense_drawing_pixel_for_pixel(color) -> None:
    image = np.ascontiguousarray(data.chelsea())
    res = _results(image)
    for alpha, labels in ((0.5, True), (0.0, False), (1.0, True), (0.37, False)):
        ours = res.draw(image, color=color, alpha=alpha, show_labels=labels)
        np.testing.assert_array_equal(ours, dense_draw(res, res.masks, image, color, alpha, labels))
    # Boxes that are not the masks' (a tracker's body boxes): the mask is drawn inside the given box, as before.
    shrunk = res.boxes.copy()
    shrunk[:, 2:] = np.maximum(shrunk[:, :2], shrunk[:, 2:] - 7)
    other = Results(res.crop_masks, res.scores, res.labels, res.class_names, boxes=shrunk)
    np.testing.assert_array_equal(other.draw(image, color=color), dense_draw(other, res.masks, image, color))
    assert other._dense is None


def test_tracker_and_wire_use_crops() -> None:
    image = data.chelsea()
    res = _results(image)
    dense = res.crop_masks.dense()
    kept = suppress_duplicates(res, 0.7)
    # the same greedy suppression on whole-image masks
    order, expected = np.argsort(-res.scores, kind="stable"), []
    for i in order:
        ious = [(dense[i] & dense[j]).sum() / max((dense[i] | dense[j]).sum(), 1) for j in expected]
        if not any(iou > 0.7 for iou in ious):
            expected.append(int(i))
    assert kept.tolist() == expected and len(expected) < len(res)
    cleaned = clean_detections(res)
    assert cleaned._dense is None and res._dense is None
    body = json.loads(json.dumps(results_to_json(res)))
    assert [i["mask"]["counts"] for i in body["instances"]] == [r["counts"].decode() for r in dense_rles(dense)]
    back = results_from_json(body, res.class_names)
    assert back._dense is None
    np.testing.assert_array_equal(back.crop_masks.boxes, res.crop_masks.boxes)
    np.testing.assert_array_equal(back.masks, dense)


def _assert_separated_cover(crops: CropMasks) -> None:
    """Every instance's part boxes are tight, pairwise separated by an empty row or column, and hold all its pixels."""
    dense = crops.dense()
    for i in range(len(crops)):
        parts = crops.part_boxes(i)
        inside = np.zeros(crops.image_shape, bool)
        for x1, y1, x2, y2 in parts.tolist():
            piece = dense[i, y1:y2, x1:x2]
            assert piece[0].any() and piece[-1].any() and piece[:, 0].any() and piece[:, -1].any(), "not tight"
            inside[y1:y2, x1:x2] = True
        assert not (dense[i] & ~inside).any(), "a pixel outside the parts"
        for a in range(len(parts)):
            for b in range(a + 1, len(parts)):
                (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = parts[a], parts[b]
                assert ax2 < bx1 or bx2 < ax1 or ay2 < by1 or by2 < ay1, f"parts {a} and {b} touch"


def test_part_boxes_are_separated_and_cover_the_masks() -> None:
    dense = _masks(300, 451, 5)
    dense[1, 10:20, 10:20] = dense[1, 200:210, 400:440] = dense[1, 15:18, 300:310] = True  # three parts
    crops = CropMasks.from_dense(dense)
    _assert_separated_cover(crops)
    assert len(crops.part_boxes(1)) == 3 and len(crops.part_boxes(2)) == 1
    # Known parts travel with indexing, concatenation and pickling; old pickles find them again.
    sub = CropMasks.concatenate([crops[[1, 3]], crops[5:]])
    np.testing.assert_array_equal(sub.part_boxes(0), crops.part_boxes(1))
    state = {k: v for k, v in pickle.loads(pickle.dumps(crops)).__dict__.items() if k != "_parts"}
    old = CropMasks.__new__(CropMasks)
    old.__setstate__(state)
    np.testing.assert_array_equal(old.part_boxes(1), crops.part_boxes(1))
    # The post-processing's parts (its windows' tight boxes) too, on masks of distant and side-by-side parts.
    low = _adversarial(72, 128)
    _, _, post = instances_from_pairs(np.ones(len(low), np.float32), np.zeros(len(low)), np.arange(len(low)), low,
                                      (576, 1024), (576, 1024), (1080, 1920))  # fmt: skip
    assert post._parts[0] is not None and max(len(post.part_boxes(i)) for i in range(len(post))) >= 2
    _assert_separated_cover(post)


def test_contours_found_part_by_part_are_the_whole_crops() -> None:
    rng = np.random.default_rng(4)
    several = 0
    for _ in range(60):
        coarse = rng.normal(size=(int(rng.integers(3, 9)), int(rng.integers(3, 9)))).astype(np.float32)
        crop = cv2.resize(coarse, (int(rng.integers(20, 200)), int(rng.integers(20, 200)))) > 0.8
        if not crop.any():
            continue
        masks = CropMasks.from_dense(crop[None])
        x1, y1 = masks.boxes[0, :2].tolist()
        whole = cv2.findContours(masks.crops[0].view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE,
                                 offset=(x1, y1))[0]  # fmt: skip
        res = Results(masks, np.ones(1, np.float32), np.zeros(1, np.int64), ["a"])
        image = rng.integers(0, 256, (*crop.shape, 3), dtype=np.uint8)
        np.testing.assert_array_equal(res.draw(image), dense_draw(res, crop[None], image))
        ours = _part_contours(masks, 0, masks.part_boxes(0).tolist())
        assert len(ours) == len(whole) and all(np.array_equal(a, b) for a, b in zip(ours, whole))
        several += len(masks.part_boxes(0)) > 1
    assert several > 10, "masks of several parts were tested"
