"""Sources and the pipelined stream on real videos (encoded here from the synthetic generator) and the demo model."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from fastinst_rt import Segmenter
from fastinst_rt.runtime.sources import open_source
from fastinst_rt.runtime.stream import Stage, StreamError, StreamStats, segment_stream
from fastinst_rt.training.synth_video import make_synthetic_video

pytest.importorskip("av", reason="video decoding needs PyAV (the video extra)")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A real 24-frame H.264 video of moving shapes, 128x160."""
    return make_synthetic_video(tmp_path_factory.mktemp("clip"), frames=24, seed=11, size=(128, 160))


@pytest.fixture(scope="module")
def seg() -> Segmenter:
    # The bundled model at a small test size, so each frame takes milliseconds.
    return Segmenter("fastinst-demo", backend="torch", device="cpu", min_size=128, max_size=160)


def _stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("stream-")]


def _same(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.frame.index == y.frame.index and x.frame.timestamp == y.frame.timestamp
        assert np.array_equal(x.masks, y.masks) and np.array_equal(x.scores, y.scores)
        assert np.array_equal(x.labels, y.labels) and np.array_equal(x.boxes, y.boxes)


def test_video_source_has_timestamps_and_count(clip: Path) -> None:
    src = open_source(clip)
    assert src.kind == "video" and not src.live and src.count == 24 and src.fps == pytest.approx(25.0)
    frames = list(src.frames(vid_stride=5))
    src.close()
    assert [f.index for f in frames] == [0, 5, 10, 15, 20]
    assert [f.timestamp for f in frames] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    assert frames[0].image.shape == (128, 160, 3) and frames[0].image.dtype == np.uint8
    assert src.stopped is None


# Containers PyAV writes here, each with a codec it ships: MPEG-TS (H.264 and MPEG-2), M2TS (MPEG-TS muxer, H.264),
# MPEG-PS (.mpg, MPEG-1) and WebM (VP8).
@pytest.mark.parametrize(
    "suffix, container, codec",
    [(".ts", "mpegts", "h264"), (".ts", "mpegts", "mpeg2video"), (".m2ts", "mpegts", "h264"),
     (".mpg", "mpeg", "mpeg1video"), (".webm", "webm", "libvpx")],
)  # fmt: skip
def test_more_video_containers_are_videos(seg: Segmenter, clip: Path, tmp_path: Path, suffix, container, codec) -> None:
    import av

    src = open_source(clip)
    images = [f.image for f in src.frames()][:6]
    src.close()
    path = tmp_path / f"clip{suffix}"
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 128, "yuv420p"
        for image in images:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    src = open_source(path)
    assert src.kind == "video" and not src.live
    frames = list(src.frames())
    src.close()
    assert [f.index for f in frames] == list(range(6)) and frames[0].name == "clip_000000"
    for frame, image in zip(frames, images):  # lossy codecs: the same pictures, roughly
        assert np.abs(frame.image.astype(int) - image).mean() < 12
    results = list(seg.stream(str(path)))
    assert [r.frame.index for r in results] == list(range(6)) and results[0].orig_shape == (128, 160)


@pytest.mark.parametrize("batch", [1, 3])
def test_pipeline_equals_sequential(seg: Segmenter, clip: Path, batch: int) -> None:
    piped = list(seg.stream(str(clip), batch=batch))
    sequential = list(seg.stream(str(clip), batch=batch, pipeline=False))
    assert [r.frame.index for r in piped] == list(range(24))
    _same(piped, sequential)
    if batch == 1:  # batch 1 is predict() frame by frame
        one_by_one = [seg.predict(r.frame.image, color="rgb") for r in piped]
        for a, b in zip(piped, one_by_one):
            # A stream leaves a core to its other work (stream.PIPELINE_RESERVED_CORES) and predict() takes every
            # core: PyTorch's convolutions then sum in another order, so scores agree to float rounding; at the same
            # thread count they are identical (test_camera_rate.py).
            assert np.array_equal(a.labels, b.labels) and np.allclose(a.scores, b.scores, rtol=0, atol=1e-5)
            assert np.mean(a.masks != b.masks) < 1e-4
    assert sum(len(r) for r in piped) > 24, "the demo model should find the shapes"
    assert not _stream_threads()


class _Faulty(Segmenter):
    """The demo model with one step that fails at a chosen frame (counted in calls of that step)."""

    fail_step, fail_at, calls = "", 0, 0

    def _maybe_fail(self, step: str) -> None:
        if step == self.fail_step:
            self.calls += 1
            if self.calls == self.fail_at + 1:
                raise RuntimeError(f"injected {step} failure")

    def preprocess(self, images, color="bgr"):
        self._maybe_fail("preprocess")
        return super().preprocess(images, color)

    def infer(self, prepared):
        self._maybe_fail("inference")
        return super().infer(prepared)

    def postprocess(self, out, prepared, conf=None):
        self._maybe_fail("postprocess")
        return super().postprocess(out, prepared, conf)


def _frames_then_fail(images: list[np.ndarray], fail_at: int):
    for i, im in enumerate(images):
        if i == fail_at:
            raise OSError("injected decode failure")
        yield im


@pytest.fixture(scope="module")
def faulty() -> _Faulty:
    return _Faulty("fastinst-demo", backend="torch", device="cpu", min_size=128, max_size=160)


@pytest.mark.parametrize("pipeline", [True, False])
@pytest.mark.parametrize("stage", ["decode", "preprocess", "inference", "postprocess"])
def test_exception_in_each_stage_ends_cleanly(faulty: _Faulty, clip: Path, stage: str, pipeline: bool) -> None:
    faulty.fail_step, faulty.fail_at, faulty.calls = stage, 6, 0
    src = open_source(clip)
    images = [f.image for f in src.frames()]
    src.close()
    got = []
    source = _frames_then_fail(images, 6) if stage == "decode" else images
    with pytest.raises(StreamError) as info:
        for res in faulty.stream(source, color="rgb", pipeline=pipeline):
            got.append(res.frame.index)
    assert info.value.stage == stage and info.value.frame_index == 6
    assert f"{stage} failed at frame 6" in str(info.value) and "injected" in str(info.value.__cause__)
    assert got == list(range(6)), "the frames before the failure are delivered"
    assert not _stream_threads()


@pytest.mark.parametrize("pipeline", [True, False])
def test_exception_in_a_later_stage_ends_cleanly(seg: Segmenter, clip: Path, pipeline: bool) -> None:
    # A stage after post-processing, as the jobs add them (tracking, drawing and encoding).
    def draw(frames, results):
        if frames[0].index == 4:
            raise OSError("disk full")
        return results

    got = []
    with pytest.raises(StreamError, match="draw failed at frame 4: OSError: disk full") as info:
        for frame, _ in segment_stream(seg, clip, pipeline=pipeline, extra_stages=[Stage("draw", draw)]):
            got.append(frame.index)
    assert info.value.stage == "draw" and got == [0, 1, 2, 3] and not _stream_threads()


def test_exception_in_the_consumer_and_early_close_stop_the_decoder(seg: Segmenter, clip: Path) -> None:
    produced, closed = [], []
    src = open_source(clip)
    images = [f.image for f in src.frames()]
    src.close()

    def endless():
        try:
            while True:
                produced.append(1)
                yield images[len(produced) % len(images)]
        finally:
            closed.append(True)

    gen = seg.stream(endless(), color="rgb", queue_size=2)
    for _ in range(3):
        next(gen)
    gen.close()
    assert closed == [True] and not _stream_threads()
    assert len(produced) <= 3 + 2 * 4 + 2, "back-pressure: the decoder ran only a few frames ahead"

    closed.clear()
    with pytest.raises(KeyError):
        for res in seg.stream(endless(), color="rgb"):
            if res.frame.index == 2:
                raise KeyError("consumer failure")
    assert closed == [True] and not _stream_threads()


class _Slow(Segmenter):
    def infer(self, prepared):
        time.sleep(0.05)
        return super().infer(prepared)


@pytest.mark.parametrize("pipeline", [True, False], ids=["pipelined", "sequential"])
def test_realtime_mode_keeps_the_newest_frame_and_counts_drops(clip: Path, pipeline: bool) -> None:
    slow = _Slow("fastinst-demo", backend="torch", device="cpu", min_size=128, max_size=160)
    src = open_source(clip)
    images = [f.image for f in src.frames()] * 4  # 96 frames
    src.close()

    def paced():
        for im in images:
            time.sleep(0.005)  # a camera delivering faster than the model keeps up
            yield im

    stats = StreamStats()
    stream = segment_stream(slow, paced(), color="rgb", realtime=True, pipeline=pipeline, stats=stats)
    frames = [f for f, _ in stream]
    indices = [f.index for f in frames]
    assert indices == sorted(indices) and len(indices) < len(images)
    assert stats.dropped > 0 and len(indices) + stats.dropped == len(images)
    assert frames[-1].dropped == stats.dropped
    never_drop = [f.index for f, _ in segment_stream(slow, images[:20], color="rgb", realtime=False, pipeline=pipeline)]
    assert never_drop == list(range(20))


def test_frame_size_change_mid_stream(seg: Segmenter, clip: Path) -> None:
    src = open_source(clip)
    images = [f.image for f in src.frames()][:6]
    src.close()
    frames = images[:3] + [cv2.resize(im, (240, 192)) for im in images[3:]]
    shapes = [r.orig_shape for r in seg.stream(frames, color="rgb", batch=2)]
    assert shapes == [(128, 160)] * 3 + [(192, 240)] * 3


def test_live_source_fails_within_its_timeout() -> None:
    # A server on loopback that accepts the connection and never answers: the open must give up, not hang.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    held: list = []
    threading.Thread(target=lambda: [held.append(server.accept()) for _ in range(2)], daemon=True).start()
    try:
        for url in (f"http://127.0.0.1:{port}/live", f"rtsp://127.0.0.1:{port}/live"):
            start = time.monotonic()
            with pytest.raises(ConnectionError, match=r"could not open stream .* within 1 s"):
                open_source(url, timeout=1.0)
            assert time.monotonic() - start < 8.0
    finally:
        server.close()
    with pytest.raises(ConnectionError, match="camera 99 could not be opened"):
        open_source(99)


def test_truncated_video_is_reported_with_the_frame_index(tmp_path: Path, clip: Path) -> None:
    src = open_source(clip)
    images = [f.image for f in src.frames()]
    src.close()
    avi = tmp_path / "cut.avi"
    writer = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 128))
    for im in images:
        writer.write(im[:, :, ::-1].copy())
    writer.release()
    data = avi.read_bytes()
    avi.write_bytes(data[: len(data) * 2 // 3])
    src = open_source(avi)
    with pytest.warns(RuntimeWarning, match="decoding stopped at frame"):
        n = sum(1 for _ in src.frames())
    src.close()
    assert 0 < n < 24 and src.stopped == f"decoding stopped at frame {n} of the 24 the header declares"
