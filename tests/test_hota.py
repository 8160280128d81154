"""HOTA against TrackEval's own MOTChallenge evaluator, the Tracker protocol, and the trackers package's algorithms.

Real TrackEval, real trackers, the bundled model on a synthetic video; no mocks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fastinst_rt import Segmenter
from fastinst_rt.cli import main
from fastinst_rt.tracking import ByteTracker, Tracker
from fastinst_rt.tracking.hota import hota_metrics
from fastinst_rt.tracking.mot import read_mot, track_metrics
from fastinst_rt.training.synth_video import make_synthetic_video

trackeval = pytest.importorskip("trackeval", reason="HOTA needs TrackEval (the metrics extra)")
pytest.importorskip("av", reason="video decoding needs PyAV (the video extra)")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_synthetic_video(tmp_path_factory.mktemp("hota"), frames=40, seed=41)


def _perturbed(gt: dict, seed: int) -> list[str]:
    """A flawed tracker's MOT lines from the ground truth: jittered boxes, missed and false boxes, and ids that
    switch halfway (so HOTA, DetA and AssA are all well below 1)."""
    rng = np.random.default_rng(seed)
    lines = []
    for frame, (ids, boxes) in sorted(gt.items()):
        for tid, (x1, y1, x2, y2) in zip(ids.tolist(), boxes.tolist()):
            if rng.random() < 0.1:
                continue  # missed
            w, h = x2 - x1, y2 - y1
            x1, y1 = x1 + rng.normal(0, 0.08 * w), y1 + rng.normal(0, 0.08 * h)
            pid = tid + (1000 if frame > 20 and tid % 2 else 0)
            lines.append(f"{frame},{pid},{x1:.2f},{y1:.2f},{w:.2f},{h:.2f},0.9,-1,-1,-1")
        if rng.random() < 0.3:
            lines.append(f"{frame},999,{rng.uniform(0, 200):.2f},{rng.uniform(0, 150):.2f},30.00,30.00,0.5,-1,-1,-1")
    return lines


def _trackeval_layout(root: Path, gt_lines: list[str], pred_lines: list[str], frames: int) -> dict:
    """The MOTChallenge layout TrackEval's MotChallenge2DBox reads: gt/MOT17-train/seq/{gt/gt.txt, seqinfo.ini} and
    trackers/MOT17-train/ours/data/seq.txt; returns its dataset config."""
    seq = root / "gt" / "MOT17-train" / "seq"
    (seq / "gt").mkdir(parents=True)
    (seq / "gt" / "gt.txt").write_text("\n".join(gt_lines) + "\n")
    (seq / "seqinfo.ini").write_text(f"[Sequence]\nname=seq\nseqLength={frames}\nimWidth=320\nimHeight=256\n")
    data = root / "trackers" / "MOT17-train" / "ours" / "data"
    data.mkdir(parents=True)
    (data / "seq.txt").write_text("\n".join(pred_lines) + "\n")
    return {"GT_FOLDER": str(root / "gt"), "TRACKERS_FOLDER": str(root / "trackers"), "BENCHMARK": "MOT17",
            "SPLIT_TO_EVAL": "train", "SEQ_INFO": {"seq": frames}, "PRINT_CONFIG": False}  # fmt: skip


def _run_trackeval(config: dict) -> dict:
    evaluator = trackeval.Evaluator({"USE_PARALLEL": False, "PRINT_RESULTS": False, "PRINT_CONFIG": False,
                                     "OUTPUT_SUMMARY": False, "OUTPUT_DETAILED": False, "PLOT_CURVES": False,
                                     "TIME_PROGRESS": False})  # fmt: skip
    metrics = [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR(), trackeval.metrics.Identity()]
    res, _ = evaluator.evaluate([trackeval.datasets.MotChallenge2DBox(config)], metrics)
    return res["MotChallenge2DBox"]["ours"]["seq"]["pedestrian"]


@pytest.mark.parametrize("source", ["perturbed", "tracked"])
def test_hota_matches_trackevals_mot_challenge_evaluator(clip, tmp_path, source) -> None:
    # TrackEval's MOT17 preprocessing keeps class-1 boxes flagged 1 only: the ground truth is written so.
    gt_lines = [
        ",".join(line.split(",")[:6] + ["1", "1", "1"]) for line in (clip.parent / "gt.txt").read_text().split()
    ]
    gt = read_mot(clip.parent / "gt.txt")
    if source == "perturbed":
        pred_lines = _perturbed(gt, seed=5)
    else:  # the real tracker on the real video
        from fastinst_rt.tracking.mot import mot_lines

        pred_lines = [line for r in Segmenter("fastinst-demo", device="cpu").track(str(clip))
                      for line in mot_lines(r, r.frame.index + 1)]  # fmt: skip
    reference = _run_trackeval(_trackeval_layout(tmp_path, gt_lines, pred_lines, 40))
    (tmp_path / "pred.txt").write_text("\n".join(pred_lines) + "\n")
    ours = track_metrics(clip.parent / "gt.txt", tmp_path / "pred.txt")
    for key, (metric, field) in {"hota": ("HOTA", "HOTA"), "deta": ("HOTA", "DetA"), "assa": ("HOTA", "AssA"),
                                 "loca": ("HOTA", "LocA")}.items():  # fmt: skip
        assert ours[key] == pytest.approx(float(np.mean(reference[metric][field])), abs=1e-3), key
    assert 0.2 < ours["hota"] < 0.95, "a test sequence that scores neither nothing nor everything"
    # py-motmetrics' MOTA and IDF1 (what `track --gt` always reported) agree with TrackEval's CLEAR and Identity.
    assert ours["mota"] == pytest.approx(reference["CLEAR"]["MOTA"], abs=1e-3)
    assert ours["idf1"] == pytest.approx(reference["Identity"]["IDF1"], abs=1e-3)


def test_hota_edge_cases() -> None:
    box = np.array([[10.0, 10.0, 50.0, 50.0]])
    gt = {1: (np.array([1]), box), 2: (np.array([1]), box + 2)}
    assert hota_metrics(gt, gt)["hota"] == pytest.approx(1.0)
    assert hota_metrics(gt, {})["hota"] == 0.0
    swapped = {1: (np.array([7]), box), 2: (np.array([8]), box + 2)}  # perfect boxes, the id changes once
    m = hota_metrics(gt, swapped)
    assert m["deta"] == pytest.approx(1.0) and m["assa"] == pytest.approx(0.5)


def test_track_cli_prints_hota(clip, tmp_path, capsys) -> None:
    assert main(["track", str(clip), "-m", "fastinst-demo", "--device", "cpu", "-q", "--mot",
                 str(tmp_path / "pred.txt"), "--gt", str(clip.parent / "gt.txt")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "HOTA 0." in out and "DetA" in out and "AssA" in out and "MOTA" in out


def test_bytetracker_satisfies_the_protocol_and_resets() -> None:
    tracker = ByteTracker()
    assert isinstance(tracker, Tracker)
    from fastinst_rt import Results

    masks = np.zeros((1, 64, 96), bool)
    masks[0, 20:40, 10:30] = True
    frame = Results(masks, np.array([0.9], np.float32), np.zeros(1, np.int64), ["square"])
    assert tracker.update(frame).track_ids.tolist() == [1] and tracker.update(frame).track_ids.tolist() == [1]
    tracker.reset()
    assert tracker.tracks == [] and tracker.update(frame).track_ids.tolist() == [1]


@pytest.mark.parametrize("name", ["sort", "bytetrack", "ocsort"])
def test_trackers_package_runs_behind_the_protocol(clip, tmp_path, name) -> None:
    pytest.importorskip("trackers", reason="the trackers extra (Python >= 3.10)")
    from fastinst_rt.integrations.trackers import TrackersAdapter
    from fastinst_rt.tracking.mot import mot_lines

    tracker = TrackersAdapter(name)
    assert isinstance(tracker, Tracker)
    seg = Segmenter("fastinst-demo", device="cpu")
    results = list(seg.track(str(clip), tracker=tracker))
    assert len(results) == 40 and all(r.track_ids is not None and r.frame is not None for r in results)
    assert all((np.diff(r.scores) <= 0).all() for r in results), "by decreasing score, like ByteTracker"
    assert tracker.trails() and set(tracker.trails()) == set(results[-1].track_ids.tolist())
    (tmp_path / "pred.txt").write_text("\n".join(line for r in results for line in mot_lines(r, r.frame.index + 1)))
    m = track_metrics(clip.parent / "gt.txt", tmp_path / "pred.txt")
    assert m["hota"] > 0.5 and m["mota"] > 0.4, m
    tracker.reset()
    assert tracker.trails() == {}
