"""Camera-resolution work: the ``resize`` option (validated, shown by info and bench), the backend's thread pool
beside a pipeline's stages, and the RLE of ``--json`` made in the pipeline, not on the consumer's thread."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fastinst_rt import Results, Segmenter
from fastinst_rt.cli import main
from fastinst_rt.jobs.predict import predict_source
from fastinst_rt.runtime.backends.base import cpu_cores
from fastinst_rt.runtime.segmenter import DEFAULT_RESIZE
from fastinst_rt.runtime.stream import PIPELINE_RESERVED_CORES, segment_stream
from fastinst_rt.training.synth_video import make_synthetic_video

av = pytest.importorskip("av", reason="video decoding needs PyAV (the video extra)")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_synthetic_video(tmp_path_factory.mktemp("clip"), frames=12, seed=41, size=(128, 160))


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    from fastinst_rt.export.onnx_export import export_onnx

    return export_onnx("fastinst-demo", tmp_path_factory.mktemp("onnx") / "demo.onnx", imgsz="128x160",
                       min_size=128, max_size=160, progress=False)  # fmt: skip


def test_resize_option_is_checked_shown_and_used(capsys) -> None:
    with pytest.raises(ValueError, match="resize must be one of exact, fast, got 'area'"):
        Segmenter("no-such-model", resize="area")  # refused before the model is looked up
    exact = Segmenter("fastinst-demo", backend="torch", device="cpu", resize="exact")
    fast = Segmenter(exact.backend)
    assert fast.resize == DEFAULT_RESIZE == "fast" and "resize='exact'" in repr(exact)
    frame = cv2.resize(cv2.imread(str(Path(__file__).parents[1] / "fastinst_rt/assets/astronaut.jpg")), (1920, 1080))
    a, b = exact.preprocess([frame]).batch, fast.preprocess([frame]).batch
    assert a.shape == b.shape and not np.array_equal(a, b), "a 1080p frame shrinks 5.6x: the fast path differs"
    assert main(["info", "fastinst-demo", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["resize"] == {"predict, track, serve, bench": "fast", "eval": "exact"} and info["threads"] >= 1
    assert main(["predict", "x.jpg", "-m", "fastinst-demo", "--resize", "area"]) == 2
    assert "invalid choice: 'area'" in capsys.readouterr().err


def test_bench_table_and_json_name_the_resize(tmp_path: Path, capsys) -> None:
    out = tmp_path / "b.json"
    argv = ["bench", "fastinst-demo", "--device", "cpu", "--iters", "1", "--warmup", "0", "--resize", "exact"]
    assert main([*argv, "--json", str(out)]) == 0
    assert "| input | resize |" in capsys.readouterr().out
    assert json.loads(out.read_text())["runs"][0]["resize"] == "exact"


class _ThreadsSeen(Segmenter):
    """The demo model, noting PyTorch's thread count where inference runs (the stream's inference thread)."""

    seen: list[int]

    def infer(self, prepared):
        self.seen.append(torch.get_num_threads())
        return super().infer(prepared)


def test_torch_backend_leaves_the_pipelines_cores_and_takes_them_back(clip: Path) -> None:
    seg = _ThreadsSeen("fastinst-demo", backend="torch", device="cpu", min_size=128, max_size=160)
    default = torch.get_num_threads()
    seg.seen = []
    piped = list(seg.stream(str(clip)))
    assert set(seg.seen) == {max(1, cpu_cores() - PIPELINE_RESERVED_CORES)}
    assert seg.backend.reserved_cores == PIPELINE_RESERVED_CORES
    seg.seen = []
    sequential = list(seg.stream(str(clip), pipeline=False))  # the codecs' threads run beside inference here too
    assert set(seg.seen) == {max(1, cpu_cores() - PIPELINE_RESERVED_CORES)}
    for a, b in zip(piped, sequential):  # the same thread count in both modes: the same results, bit for bit
        assert np.array_equal(a.scores, b.scores) and a.crop_masks.to_rle() == b.crop_masks.to_rle()
    seg.seen = []
    one = seg.predict(piped[0].frame.image, color="rgb")  # a call of its own takes every core back
    assert seg.seen == [default] and seg.backend.reserved_cores == 0 and torch.get_num_threads() == default
    # oneDNN's convolutions split their sums by thread count: the same instances, scores equal to float rounding.
    assert np.array_equal(one.labels, piped[0].labels) and np.allclose(one.scores, piped[0].scores, atol=1e-5)
    with pytest.raises(ValueError, match="cores must be an integer >= 0"):
        seg.backend.reserve_cores(-1)


def test_onnxruntime_backend_stops_spinning_beside_a_pipeline(clip: Path, demo_onnx: Path) -> None:
    seg = Segmenter(demo_onnx, device="cpu")
    assert seg.backend.describe()["spinning"] is True
    frame = next(iter(seg.stream(str(clip), pipeline=False))).frame.image
    before = seg.predict(frame, color="rgb")
    stats = list(segment_stream(seg, str(clip)))  # pipelined: the session is made again with fewer threads
    described = seg.backend.describe()
    assert described["spinning"] is False and seg.backend.reserved_cores == PIPELINE_RESERVED_CORES
    assert described["intra_op_threads"] == max(1, cpu_cores() - PIPELINE_RESERVED_CORES)
    assert len(stats) == 12
    after = seg.predict(frame, color="rgb")
    assert seg.backend.describe()["spinning"] is True
    assert np.array_equal(before.scores, after.scores) and np.array_equal(before.masks, after.masks)


@pytest.mark.parametrize("pipeline", [True, False], ids=["pipelined", "sequential"])
def test_rle_is_made_in_the_pipeline_not_by_the_consumer(clip: Path, tmp_path: Path, monkeypatch, pipeline) -> None:
    # A spy around the real Results.to_coco (it still runs): which thread makes each frame's RLE.
    threads: list[str] = []
    real = Results.to_coco

    def to_coco(self, *args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Results, "to_coco", to_coco)
    seg = Segmenter("fastinst-demo", backend="torch", device="cpu", min_size=128, max_size=160)
    summary = predict_source(seg, clip, None, tmp_path / "r.jsonl", pipeline=pipeline, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert summary.complete and len(lines) == len(threads) == 12 and "rle" in summary.speed
    consumer = threading.main_thread().name
    assert set(threads) == ({"stream-rle"} if pipeline else {consumer})
    assert sum(len(line["instances"]) for line in lines) > 12
