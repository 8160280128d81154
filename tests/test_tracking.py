"""Tracking: the assignment solver against scipy, the tracker on a real synthetic video scored by py-motmetrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from fastinst_rt import Results, Segmenter
from fastinst_rt.tracking import ByteTracker
from fastinst_rt.tracking.assignment import linear_assignment, match
from fastinst_rt.tracking.detections import body_box, suppress_duplicates
from fastinst_rt.tracking.mot import mot_lines, read_mot, track_metrics
from fastinst_rt.training.synth_video import make_synthetic_video

pytest.importorskip("av", reason="video decoding needs PyAV (the video extra)")


@pytest.mark.parametrize("shape", [(5, 5), (3, 7), (8, 2), (1, 1), (12, 12)])
def test_linear_assignment_is_optimal_like_scipy(shape) -> None:
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(sum(shape))
    for _ in range(20):
        cost = rng.uniform(0, 1, size=shape)
        if rng.random() < 0.3:
            cost = np.round(cost, 1)  # ties
        rows, cols = linear_assignment(cost)
        ref_rows, ref_cols = linear_sum_assignment(cost)
        assert len(rows) == min(shape) and len(set(cols.tolist())) == len(cols)
        assert cost[rows, cols].sum() == pytest.approx(cost[ref_rows, ref_cols].sum())


def test_match_respects_the_cost_limit() -> None:
    cost = np.array([[0.1, 0.9], [0.95, 0.85]])
    pairs, rows, cols = match(cost, 0.5)
    assert pairs == [(0, 0)] and rows == [1] and cols == [1]


def test_detections_are_deduplicated_and_boxed_around_their_body() -> None:
    masks = np.zeros((3, 60, 80), bool)
    masks[0, 10:30, 10:30] = True
    masks[0, 55, 75] = True  # a stray pixel far away
    masks[1, 10:30, 11:30] = True  # the same object again, lower score
    masks[2, 40:50, 40:60] = True
    res = Results(masks, np.array([0.9, 0.6, 0.8], np.float32), np.array([0, 1, 2]), ["a", "b", "c"])
    assert suppress_duplicates(res, 0.7).tolist() == [0, 2]
    assert res.boxes[0].tolist() == [10, 10, 76, 56]
    crop, box = res.crop_masks.crop(0)
    assert body_box(crop, np.array(box), 0.2).tolist() == [10, 10, 30, 30]


@pytest.fixture(scope="module")
def tracked_clip(tmp_path_factory) -> tuple[Path, list[Results]]:
    root = tmp_path_factory.mktemp("track")
    video = make_synthetic_video(root, frames=40, seed=23)
    seg = Segmenter("fastinst-demo", backend="torch", device="cpu")
    return video, list(seg.track(str(video)))


def test_track_on_a_synthetic_video_with_ground_truth(tracked_clip, tmp_path: Path) -> None:
    video, results = tracked_clip
    assert len(results) == 40 and all(r.track_ids is not None for r in results)
    lines = [line for r in results for line in mot_lines(r, r.frame.index + 1)]
    pred = tmp_path / "pred.txt"
    pred.write_text("\n".join(lines) + "\n")
    first = lines[0].split(",")
    assert len(first) == 10 and first[0] == "1" and first[7:] == ["-1", "-1", "-1"]
    m = track_metrics(video.parent / "gt.txt", pred)
    assert m["num_frames"] == 40
    # A short clip, so the bar is lower than the acceptance run's (300 frames, benchmarks/track_quality.py).
    assert m["mota"] > 0.5 and m["idf1"] > 0.6, m
    # The COCO ground truth has the same visible masks and ids as gt.txt.
    coco = json.loads((video.parent / "annotations.json").read_text())
    gt = read_mot(video.parent / "gt.txt")
    ann = [a for a in coco["annotations"] if a["image_id"] == 1]
    assert sorted(a["track_id"] for a in ann) == sorted(gt[1][0].tolist())
    m0 = mask_utils.decode(ann[0]["segmentation"]).astype(bool)
    ys, xs = np.nonzero(m0)
    assert ann[0]["bbox"] == [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]


def test_ids_persist_and_drawing_shows_them(tracked_clip) -> None:
    _, results = tracked_clip
    seen = [set(r.track_ids.tolist()) for r in results]
    assert len(seen[10] & seen[11]) >= 2, "most ids carry over between consecutive frames"
    r = results[20]
    sub = r[[0]]
    assert sub.track_ids.tolist() == [int(r.track_ids[0])] and sub.frame is r.frame
    image = r.frame.image
    trails = {int(r.track_ids[0]): [(10.0, 10.0), (60.0, 40.0), (100.0, 90.0)]}
    plain, with_trails = r.draw(image, color="rgb"), r.draw(image, color="rgb", trails=trails)
    assert (plain != image).any() and (with_trails != plain).any()
    assert r.to_dict()["track_ids"] == r.track_ids.tolist()


def test_tracker_keeps_an_id_through_a_missed_frame() -> None:
    tracker = ByteTracker()
    names = ["square"]
    for x in range(0, 40, 4):
        masks = np.zeros((1, 64, 96), bool)
        if x != 20:  # missed once
            masks[0, 20:40, x + 10 : x + 30] = True
        n = 1 if x != 20 else 0
        res = Results(masks[:n], np.full(n, 0.9, np.float32), np.zeros(n, np.int64), names)
        out = tracker.update(res)
        assert out.track_ids.tolist() == ([1] if n else [])
