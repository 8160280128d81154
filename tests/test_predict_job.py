"""Runs that lose nothing, through the real CLI on real files: bad images, truncated videos, Ctrl-C, failing
stages, outputs that would overwrite inputs, name collisions, and the annotated video."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from fastinst_rt.cli import main
from fastinst_rt.jobs.predict import predict_source
from fastinst_rt.runtime.sources import open_source
from fastinst_rt.training.synth_video import make_synthetic_video

from .test_stream import _Faulty

av = pytest.importorskip("av", reason="video decoding needs PyAV (the video extra)")

FAST = ["-m", "fastinst-demo", "--backend", "torch", "--device", "cpu", "--min-size", "128", "--max-size", "160", "-q"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_synthetic_video(tmp_path_factory.mktemp("clip"), frames=24, seed=31, size=(128, 160))


@pytest.fixture(scope="module")
def frames(clip: Path) -> list[np.ndarray]:
    src = open_source(clip)
    out = [f.image for f in src.frames()]
    src.close()
    return out


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_bad_image_is_reported_and_skipped_and_names_never_collide(frames, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), frames[0][:, :, ::-1])
    cv2.imwrite(str(folder / "a.png"), frames[1][:, :, ::-1])
    cv2.imwrite(str(folder / "c.png"), frames[2][:, :, ::-1])
    good = (folder / "a.jpg").read_bytes()
    (folder / "b.jpg").write_bytes(good[: len(good) // 3])  # a truncated JPEG
    cv2.imwrite(str(folder / "thin.png"), np.full((1, 3000, 3), 90, np.uint8))  # readable, but the model refuses it
    out, res = tmp_path / "out", tmp_path / "res.json"
    assert main(["predict", str(folder), "--save", str(out), "--json", str(res), *FAST]) == 1
    err = capsys.readouterr().err
    assert "2 image(s) could not be read" in err and "b.jpg: could not decode" in err and "thin.png: image of" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "a.png", "c.png"]
    assert {r["file_name"] for r in json.loads(res.read_text())} == {"a.jpg", "a.png", "c.png"}

    # The same file name from two folders: the second is renamed, not overwritten.
    other = tmp_path / "other"
    other.mkdir()
    cv2.imwrite(str(other / "a.jpg"), frames[3][:, :, ::-1])
    both = tmp_path / "both"
    seg = _Faulty("fastinst-demo", backend="torch", device="cpu", min_size=128, max_size=160)
    summary = predict_source(seg, [folder / "a.jpg", other / "a.jpg"], both, progress=False)
    assert summary.complete and sorted(p.name for p in both.iterdir()) == ["a.jpg", "a_1.jpg"]


def test_save_refuses_the_input_folder_and_outputs_that_are_inputs(clip: Path, frames, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "x.jpg"), frames[0][:, :, ::-1])
    video = folder / "clip.mp4"
    video.write_bytes(clip.read_bytes())
    before = _digest(folder)
    assert main(["predict", str(folder), "--save", str(folder), *FAST]) == 2
    assert main(["predict", str(video), "--save", str(folder), *FAST]) == 2
    assert main(["predict", str(folder / "x.jpg"), "--json", str(folder / "x.jpg"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "holds the input" in err and "is an input: it would be overwritten" in err
    assert len([line for line in err.splitlines() if line.strip()]) == 3, "one line per refusal"
    assert _digest(folder) == before


def test_truncated_video_is_reported_and_the_frames_before_are_kept(frames, tmp_path: Path, capsys) -> None:
    avi = tmp_path / "cut.avi"
    writer = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 128))
    for im in frames:
        writer.write(im[:, :, ::-1].copy())
    writer.release()
    data = avi.read_bytes()
    avi.write_bytes(data[: len(data) * 2 // 3])
    res = tmp_path / "res.jsonl"
    with pytest.warns(RuntimeWarning):
        assert main(["predict", str(avi), "--json", str(res), *FAST]) == 1
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in res.read_text().splitlines()]
    n = len(lines)
    assert 0 < n < 24 and [r["frame"] for r in lines] == list(range(n))
    assert f"decoding stopped at frame {n} of the 24 the header declares" in err


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_ctrl_c_keeps_the_results_done_so_far(tmp_path: Path, suffix: str) -> None:
    video = make_synthetic_video(tmp_path / "long", frames=400, seed=5, size=(128, 160))
    res = tmp_path / f"res{suffix}"
    cmd = [sys.executable, "-m", "fastinst_rt.cli", "predict", str(video), "--json", str(res), *FAST]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    # JSON Lines grow every frame; the COCO file is rewritten every 50 frames, so wait for the first rewrite.
    while time.monotonic() < deadline and proc.poll() is None:
        if res.exists() and (len(res.read_text().splitlines()) >= 3 if suffix == ".jsonl" else res.stat().st_size > 2):
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted; results up to frame" in err and "Traceback" not in err
    if suffix == ".jsonl":
        frames = [json.loads(line)["frame"] for line in res.read_text().splitlines()]
    else:
        frames = sorted({r["image_id"] for r in json.loads(res.read_text())})
    assert 3 <= len(frames) < 400 and frames == list(range(len(frames)))


def test_a_failing_stage_keeps_the_work_done_before(clip: Path, tmp_path: Path) -> None:
    seg = _Faulty("fastinst-demo", backend="torch", device="cpu", min_size=128, max_size=160)
    seg.fail_step, seg.fail_at = "inference", 10
    out, res = tmp_path / "out", tmp_path / "res.jsonl"
    summary = predict_source(seg, clip, out, res, progress=False)
    assert "inference failed at frame 10" in summary.error and summary.last_frame == 9 and not summary.complete
    assert [json.loads(line)["frame"] for line in res.read_text().splitlines()] == list(range(10))
    with av.open(str(out / "video.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 10


def test_annotated_video_is_h264_at_the_source_rate_and_pipeline_matches_sequential(clip: Path, tmp_path: Path):
    runs = {}
    for mode in ("pipe", "seq"):
        extra = ["--no-pipeline"] if mode == "seq" else []
        out, res = tmp_path / mode, tmp_path / f"{mode}.json"
        assert main(["predict", str(clip), "--save", str(out), "--json", str(res), *FAST, *extra]) == 0
        runs[mode] = json.loads(res.read_text())
    assert runs["pipe"] == runs["seq"] and len({r["image_id"] for r in runs["pipe"]}) > 20
    with av.open(str(tmp_path / "pipe" / "video.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and float(stream.average_rate) == pytest.approx(25.0)
        assert sum(1 for _ in container.decode(stream)) == 24
    assert main(["predict", str(clip), "--save", str(tmp_path / "s"), "--vid-stride", "2", *FAST]) == 0
    with av.open(str(tmp_path / "s" / "video.mp4")) as container:
        assert float(container.streams.video[0].average_rate) == pytest.approx(12.5)


def test_track_command_writes_mot_and_scores_it(clip: Path, tmp_path: Path, capsys) -> None:
    mot, out = tmp_path / "pred.txt", tmp_path / "out"
    argv = ["track", str(clip), "--mot", str(mot), "--gt", str(clip.parent / "gt.txt"), "--save", str(out), "--trails"]
    assert main([*argv, *FAST]) == 0
    printed = capsys.readouterr().out
    assert "MOTA " in printed and "IDF1 " in printed and "over 24 frames" in printed
    rows = [line.split(",") for line in mot.read_text().splitlines()]
    assert rows and all(len(r) == 10 and 1 <= int(r[0]) <= 24 and int(r[1]) >= 1 for r in rows)
    assert (out / "video.mp4").stat().st_size > 0
    assert main(["predict", str(clip), "--mot", str(mot), *FAST]) == 2  # predict has no --mot


def test_video_writer_mp4v_fallback_and_size_changes(frames, tmp_path: Path) -> None:
    from fastinst_rt.io.video_out import VideoWriter

    with VideoWriter(tmp_path / "v.mp4", 12.0, codec="mp4v") as writer:
        for im in frames[:5] + [cv2.resize(im, (200, 150)) for im in frames[5:8]]:
            writer.write(im)
    assert writer.codec == "mp4v" and writer.frames == 8
    cap = cv2.VideoCapture(str(tmp_path / "v.mp4"))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(12.0) and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 8
    ok, first = cap.read()
    assert ok and first.shape == (128, 160, 3), "later frames of another size are resized to the first"
