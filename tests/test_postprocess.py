"""The fast post-processing against the official order (numpy/cv2 and torch references), and cv2 against torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastinst_rt.runtime.masks import CropMasks
from fastinst_rt.runtime.postprocess import boxes_from_masks, instances_from_outputs, upsample_mask_logits


def _resize_cv2(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(n, h, w) float32 -> (n, H, W), one cv2 call per map (no channel limit, no layout tricks)."""
    return np.stack([cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for m in maps])


def _resize_torch(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = F.interpolate(torch.from_numpy(maps)[None], size=size, mode="bilinear", align_corners=False)
    return t[0].numpy()


def official_reference(logits, low, resized, padded, orig, topk=100, resize=_resize_cv2):
    """The official order (spec §4): upsample all Q masks, crop, resize to orig, then top-k over Q*K pairs.

    Returns (scores, labels, masks, queries) sorted like the fast path: score descending, ties in pair order
    (class probability descending, then flat index).
    """
    num_classes = logits.shape[1] - 1
    up = resize(low, padded)[:, : resized[0], : resized[1]]
    masks = resize(np.ascontiguousarray(up), orig)  # (Q, H, W) logits
    e = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    probs = (e / e.sum(axis=1, keepdims=True))[:, :num_classes].reshape(-1)
    idx = np.argsort(-probs, kind="stable")[: min(topk, probs.size)]
    queries, labels = idx // num_classes, idx % num_classes
    mask_logits = masks[queries].astype(np.float64)
    binary = mask_logits > 0
    mask_scores = (1 / (1 + np.exp(-mask_logits)) * binary).sum((1, 2)) / (binary.sum((1, 2)) + 1e-6)
    scores = probs[idx] * mask_scores
    order = np.argsort(-scores, kind="stable")
    return scores[order], labels[order], binary[order], queries[order]


def _random_outputs(seed, q, k, low_hw, empty_query=None):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(q, k + 1)) * 2.5).astype(np.float32)
    # Smooth blobs: a coarse random field upsampled, shifted negative so masks cover part of the image.
    coarse = rng.normal(size=(q, max(2, low_hw[0] // 4), max(2, low_hw[1] // 4))).astype(np.float32)
    low = (_resize_cv2(coarse, low_hw) * 6 - 2).astype(np.float32)
    if empty_query is not None:
        low[empty_query] = -np.abs(low[empty_query]) - 0.1  # an all-negative mask: mask score 0
        logits[empty_query, 0] = 20.0  # and a top class probability, so it is surely kept
    return logits, low


CASES = [
    # (Q, K, low (h, w), padded, resized, orig, max_det)
    (20, 6, (8, 12), (64, 96), (60, 90), (45, 67), 30),  # orig smaller than resized
    (20, 6, (8, 12), (64, 96), (60, 90), (123, 181), 30),  # orig larger than resized
    (12, 5, (10, 10), (80, 80), (80, 77), (80, 77), 40),  # no second resize needed in one direction
    (4, 3, (6, 8), (48, 64), (41, 64), (30, 47), 100),  # max_det > Q*K clamps to 12
]


@pytest.mark.parametrize("case", CASES)
def test_fast_path_matches_official_order(case):
    q, k, low_hw, padded, resized, orig, max_det = case
    logits, low = _random_outputs(0, q, k, low_hw, empty_query=3)
    scores, labels, crops = instances_from_outputs(logits, low, resized, padded, orig, max_det=max_det)
    r_scores, r_labels, r_masks, r_queries = official_reference(logits, low, resized, padded, orig, topk=max_det)
    n = min(max_det, q * k)
    assert isinstance(crops, CropMasks)
    masks = crops.dense()
    assert scores.shape == (n,) and labels.shape == (n,) and masks.shape == crops.shape == (n, *orig)
    assert scores.dtype == np.float32 and labels.dtype == np.int64 and masks.dtype == bool
    assert len(np.unique(r_queries)) < n, "the case must keep some query with several classes"
    np.testing.assert_allclose(scores, r_scores, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(labels, r_labels)
    np.testing.assert_array_equal(masks, r_masks)
    assert np.all(np.diff(scores) <= 0)
    assert scores[-1] == 0.0 and not masks[-1].any(), "the all-negative mask scores 0 and comes last"


def test_conf_filters_like_official():
    logits, low = _random_outputs(1, 30, 8, (8, 12))
    args = ((60, 90), (64, 96), (70, 105))
    scores, labels, masks = instances_from_outputs(logits, low, *args, conf=0.3, max_det=50)
    masks = masks.dense()
    r_scores, r_labels, r_masks, _ = official_reference(logits, low, *args, topk=50)
    keep = r_scores >= 0.3
    assert 0 < keep.sum() < 50
    np.testing.assert_allclose(scores, r_scores[keep], atol=1e-6)
    np.testing.assert_array_equal(labels, r_labels[keep])
    np.testing.assert_array_equal(masks, r_masks[keep])
    empty = instances_from_outputs(logits, low, *args, conf=1.01)
    assert empty[0].shape == (0,) and empty[1].dtype == np.int64 and empty[2].shape == (0, 70, 105)


def test_many_unique_queries():
    # More unique queries than one multi-channel cv2.resize takes (128 channels in OpenCV 5).
    logits, low = _random_outputs(2, 300, 2, (4, 6))
    args = ((30, 48), (32, 48), (25, 40))
    scores, labels, masks = instances_from_outputs(logits, low, *args, max_det=600)
    masks = masks.dense()
    r_scores, r_labels, r_masks, r_queries = official_reference(logits, low, *args, topk=600)
    assert len(np.unique(r_queries)) == 300
    np.testing.assert_allclose(scores, r_scores, atol=1e-6)
    np.testing.assert_array_equal(labels, r_labels)
    np.testing.assert_array_equal(masks, r_masks)


def test_conf_results_are_a_subset_of_all_results():
    # A query's mask and score must not depend on which other queries are kept.
    logits, low = _random_outputs(8, 100, 80, (20, 28))
    args = ((160, 213), (160, 224), (150, 200))
    scores, labels, masks = instances_from_outputs(logits, low, *args)
    for conf in (0.2, 0.5):
        c_scores, c_labels, c_masks = instances_from_outputs(logits, low, *args, conf=conf)
        n = int((scores >= conf).sum())
        assert 0 < len(c_scores) == n < 100
        np.testing.assert_array_equal(c_scores, scores[:n])
        np.testing.assert_array_equal(c_labels, labels[:n])
        np.testing.assert_array_equal(c_masks.dense(), masks[:n].dense())


def test_matches_torch_official_pipeline():
    """Against the official arithmetic with torch (F.interpolate, softmax, topk, float32 sums), COCO-like sizes."""
    logits, low = _random_outputs(3, 100, 80, (20, 28))
    padded, resized, orig = (160, 224), (160, 213), (120, 160)
    scores, labels, masks = instances_from_outputs(logits, low, resized, padded, orig)
    masks = masks.dense()

    t_masks = F.interpolate(torch.from_numpy(low)[None], size=padded, mode="bilinear", align_corners=False)
    t_masks = F.interpolate(t_masks[:, :, : resized[0], : resized[1]], size=orig, mode="bilinear", align_corners=False)
    t_probs = F.softmax(torch.from_numpy(logits), dim=-1)[:, :-1]
    t_top, t_idx = t_probs.flatten().topk(100, sorted=False)
    t_pred = t_masks[0][t_idx // 80]
    t_bin = (t_pred > 0).float()
    t_ms = (t_pred.sigmoid().flatten(1) * t_bin.flatten(1)).sum(1) / (t_bin.flatten(1).sum(1) + 1e-6)
    t_scores, t_labels, t_bin = (t_top * t_ms).numpy(), (t_idx % 80).numpy(), t_bin.numpy().astype(bool)

    assert len(scores) == 100
    np.testing.assert_allclose(scores, np.sort(t_scores)[::-1], atol=5e-5)
    # Near-equal scores may swap places, so match each instance to an unused torch pair of the same class and score.
    # torch computes bilinear source coordinates in float32 (logits off by ~1e-3 on this data), cv2/IPP in double:
    # the mean sigmoid moves by up to ~2e-5.
    unused = set(range(100))
    for score, label, mask in zip(scores, labels, masks):
        candidates = [j for j in unused if t_labels[j] == label and abs(t_scores[j] - score) < 5e-5]
        assert candidates, f"no torch pair for class {label} score {score}"
        j = min(candidates, key=lambda j: int((t_bin[j] != mask).sum()))
        assert (t_bin[j] != mask).mean() < 1e-3  # only pixels with |logit| ~ 1e-3 may flip
        unused.remove(j)


def test_low_res_crop_is_exact_fuzz():
    rng = np.random.default_rng(9)
    for _ in range(200):
        h8, w8 = (int(v) for v in rng.integers(1, 20, size=2))
        hr, wr = int(rng.integers(max(1, 8 * h8 - 31), 8 * h8 + 1)), int(rng.integers(1, 8 * w8 + 1))
        orig = tuple(int(v) for v in rng.integers(1, 120, size=2))
        low = (rng.normal(size=(1, h8, w8)) * 10).astype(np.float32)
        args = ((hr, wr), (8 * h8, 8 * w8), orig)
        np.testing.assert_array_equal(upsample_mask_logits(low, *args), upsample_mask_logits(low, *args, crop=False))


@pytest.mark.parametrize(
    "low_hw, padded, resized, orig",
    [
        ((8, 12), (64, 96), (60, 90), (45, 67)),
        ((8, 12), (64, 96), (64, 96), (45, 67)),
        ((8, 12), (64, 96), (5, 3), (9, 9)),  # tiny crop: one low-res row/column suffices
        ((80, 108), (640, 864), (640, 853), (480, 640)),  # the 640 config on a 480x640 image
        ((72, 96), (576, 768), (576, 768), (480, 640)),  # the 576 config: no padding
        ((9, 10), (40, 40), (37, 31), (50, 50)),  # non-integer factor: no crop possible, same path
    ],
)
def test_low_res_crop_is_exact(low_hw, padded, resized, orig):
    rng = np.random.default_rng(4)
    low = rng.normal(size=(5, *low_hw)).astype(np.float32) * 8
    cropped = upsample_mask_logits(low, resized, padded, orig, crop=True)
    full = upsample_mask_logits(low, resized, padded, orig, crop=False)
    assert cropped.shape == (5, *orig) and cropped.dtype == np.float32
    np.testing.assert_array_equal(cropped, full)
    # and both are the two-step official resize
    ref = _resize_cv2(np.ascontiguousarray(_resize_cv2(low, padded)[:, : resized[0], : resized[1]]), orig)
    np.testing.assert_array_equal(full, ref)


@pytest.mark.parametrize(
    "src, dst",
    [
        ((80, 108), (640, 864)),  # the x8 upsample
        ((640, 853), (480, 640)),  # the second resize of the 640 config on a COCO image
        ((80, 108), (37, 51)),
        ((60, 90), (123, 181)),
        ((60, 90), (45, 67)),
        ((7, 9), (8, 8)),
    ],
)
def test_cv2_linear_matches_torch_bilinear(src, dst):
    rng = np.random.default_rng(5)
    maps = (rng.normal(size=(3, *src)) * 10).astype(np.float32)
    ours = upsample_mask_logits(maps, dst, dst, dst)  # one resize: padded == resized == orig
    theirs = _resize_torch(maps, dst)
    assert np.abs(ours - theirs).max() < 1e-4 * np.ptp(maps)


def test_boxes_from_masks():
    rng = np.random.default_rng(6)
    masks = np.zeros((5, 37, 53), bool)
    masks[0, 3:10, 4:20] = True
    masks[1, 0, 0] = True
    masks[2, 36, 52] = True
    masks[3] = rng.random((37, 53)) > 0.995
    boxes = boxes_from_masks(masks)
    assert boxes.dtype == np.float32 and boxes.shape == (5, 4)
    for m, box in zip(masks[:4], boxes):
        ys, xs = np.nonzero(m)
        np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    np.testing.assert_array_equal(boxes[0], [4, 3, 20, 10])
    np.testing.assert_array_equal(boxes[4], [0, 0, 0, 0])
    assert boxes_from_masks(np.zeros((0, 4, 4), bool)).shape == (0, 4)


def test_bad_inputs_raise():
    logits, low = _random_outputs(7, 4, 3, (6, 8))
    with pytest.raises(ValueError, match="pred_masks"):
        instances_from_outputs(logits, low[:3], (40, 60), (48, 64), (40, 60))
    with pytest.raises(ValueError, match="sizes"):
        instances_from_outputs(logits, low, (50, 60), (48, 64), (40, 60))
    with pytest.raises(ValueError, match="pred_logits"):
        instances_from_outputs(logits[:, :1], low, (40, 60), (48, 64), (40, 60))


def test_runtime_modules_do_not_import_torch():
    code = (
        "import sys; import fastinst_rt.runtime.preprocess, fastinst_rt.runtime.postprocess, "
        "fastinst_rt.runtime.results, fastinst_rt.runtime.masks, fastinst_rt.runtime.upsample; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo)
    assert proc.returncode == 0, proc.stderr
