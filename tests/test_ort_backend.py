"""The ONNX Runtime backend: metadata round trip, no torch at run time, clear errors, fixed-batch handling, and the
end-to-end post-processing (selected pairs) against the raw one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fastinst_rt import Segmenter
from fastinst_rt.export import export_onnx
from fastinst_rt.runtime.backends import open_backend
from fastinst_rt.runtime.backends.ort import OnnxRuntimeBackend
from fastinst_rt.runtime.postprocess import instances_from_outputs, instances_from_pairs

from .conftest import TEST_VARIANTS

R50, DCN = "fastinst-test-r50-d2", "fastinst-test-r50vd-dcn-d1"
assert {R50, DCN} <= set(TEST_VARIANTS)


@pytest.fixture(scope="module")
def e2e_b2(tiny_checkpoints: dict[str, Path], tmp_path_factory) -> Path:
    """A static end-to-end graph with a fixed batch of 2 (TorchScript exporter, opset 17: fast to make)."""
    out = tmp_path_factory.mktemp("ort") / "e2e_b2.onnx"
    return export_onnx(tiny_checkpoints[R50], out, batch=2, opset=17, progress=False)


def test_metadata_round_trip(e2e_b2: Path) -> None:
    seg = Segmenter(e2e_b2)  # no backend, size or class argument: all from the file
    info = seg.backend.info
    assert seg.backend.kind == "onnxruntime" and info.name == R50 and info.test_size == (320, 427)
    assert info.fixed_size == (320, 448) and info.max_batch == 2 and len(info.class_names) == 80
    assert (seg.min_size, seg.max_size) == (320, 427)
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(e2e_b2)).metadata_props}
    for key in ("format", "model", "class_names", "test_size", "inputs", "outputs", "max_det", "fixed_size",
                "dynamic", "batch", "mean", "std", "precision", "opset", "exporter", "fastinst_rt_version",
                "source_sha256", "size_divisibility"):  # fmt: skip
        assert key in meta, key
    assert meta["inputs"][0]["dtype"] == "uint8" and meta["inputs"][1]["dtype"] == "int64"
    assert meta["precision"] == "fp32" and meta["opset"] == 17 and meta["dynamic"] is False
    assert len(meta["source_sha256"]) == 64 and meta["mean"] == pytest.approx([123.675, 116.28, 103.53])
    d = seg.backend.describe()
    assert d["outputs"] == "e2e" and d["providers"] == ["CPUExecutionProvider"] and d["batch"] == 2


def test_fixed_batch_graph_takes_any_batch(e2e_b2: Path, photo: np.ndarray, photo_wide: np.ndarray) -> None:
    """Batches of 1 and 3 on a batch-2 graph: padded, then split; each image's result as if alone."""
    seg = Segmenter(e2e_b2, conf=0.0)
    single = [seg.predict(im, color="rgb") for im in (photo, photo_wide, photo)]
    triple = seg.predict_batch([photo, photo_wide, photo], color="rgb")
    for a, b in zip(single, triple):
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.masks, b.masks)
    out = seg.backend.infer(np.zeros((3, 3, 320, 448), np.uint8), np.full((3, 2), [320, 448]))
    assert out["scores"].shape == (3, 100) and out["masks"].shape == (3, 100, 40, 56) and out["query"].shape == (3, 100)
    assert out["labels"].dtype == np.int64


def test_no_torch_at_run_time(e2e_b2: Path) -> None:
    code = (
        "import sys, numpy as np\n"
        "from fastinst_rt import Segmenter\n"
        f"seg = Segmenter({str(e2e_b2)!r}, conf=0.0)\n"
        "img = (np.indices((240, 320)).sum(0)[..., None] * [1, 2, 3] % 256).astype(np.uint8)\n"
        "res = seg.predict(img)\n"
        "assert len(res) == 100 and res.masks.shape == (100, 240, 320), res\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok', seg.backend.kind)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok onnxruntime"


def test_corrupt_and_truncated_files_get_clear_errors(e2e_b2: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07this is not protobuf" * 50)
    with pytest.raises(ValueError, match="junk.onnx"):
        Segmenter(junk)
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(e2e_b2.read_bytes()[: e2e_b2.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut.onnx"):
        OnnxRuntimeBackend(cut)
    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        OnnxRuntimeBackend(tmp_path / "missing.onnx")


def test_foreign_onnx_is_refused(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "foreign", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, tmp_path / "foreign.onnx")
    with pytest.raises(ValueError, match="not a fastinst-rt export"):
        Segmenter(tmp_path / "foreign.onnx")
    # Claims to be ours but lacks what the runtime needs.
    model.metadata_props.add(key="format", value=json.dumps("fastinst-rt"))
    onnx.save(model, tmp_path / "partial.onnx")
    with pytest.raises(ValueError, match="incomplete fastinst-rt metadata"):
        Segmenter(tmp_path / "partial.onnx")


def test_wrong_inputs_get_clear_errors(e2e_b2: Path) -> None:
    backend = OnnxRuntimeBackend(e2e_b2)
    sizes = np.array([[320, 448]] * 2)
    with pytest.raises(ValueError, match="uint8"):
        backend.infer(np.zeros((2, 3, 320, 448), np.float32), sizes)
    with pytest.raises(ValueError, match="fixed 320x448"):
        backend.infer(np.zeros((2, 3, 320, 480), np.uint8), sizes)
    with pytest.raises(ValueError, match="multiple of 32"):
        backend.infer(np.zeros((2, 3, 320, 450), np.uint8), sizes)
    with pytest.raises(ValueError, match="sizes must be"):
        backend.infer(np.zeros((2, 3, 320, 448), np.uint8), sizes[:1])


def test_devices_and_half(e2e_b2: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(RuntimeError, match="no CUDA provider"):
            OnnxRuntimeBackend(e2e_b2, device="cuda")
    with pytest.raises(ValueError, match="unknown device"):
        OnnxRuntimeBackend(e2e_b2, device="tpu")
    with pytest.raises(ValueError, match="--fp16"):
        open_backend(e2e_b2, half=True)
    assert OnnxRuntimeBackend(e2e_b2, device="cpu").providers == ["CPUExecutionProvider"]


def test_plugin_graph_is_refused_with_a_pointer_to_tensorrt(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    path = export_onnx(tiny_checkpoints[DCN], tmp_path / "plugin.onnx", dcn_plugin=True, progress=False)
    with pytest.raises(ValueError, match="TensorRT plugin nodes"):
        Segmenter(path)


@pytest.mark.parametrize("conf", [0.0, 0.02])
def test_selected_pairs_give_the_raw_results(conf: float) -> None:
    """instances_from_pairs on the graph's top pairs == instances_from_outputs on the raw outputs."""
    rng = np.random.default_rng(3)
    q, k, h, w = 30, 7, 12, 16
    logits = (rng.normal(size=(q, k + 1)) * 3).astype(np.float32)
    low = (rng.normal(size=(q, h, w)) * 4 - 1).astype(np.float32)
    low[5] = -1.0  # an empty mask: mask score 0
    resized, padded, orig = (90, 120), (96, 128), (150, 200)
    ref = instances_from_outputs(logits, low, resized, padded, orig, conf=conf, max_det=40)
    # What the end-to-end graph returns: top-40 pairs by class probability, each with its query's mask.
    e = np.exp(logits - logits.max(1, keepdims=True))
    probs = (e / e.sum(1, keepdims=True))[:, :k].reshape(-1)
    top = np.argsort(-probs, kind="stable")[:40]
    got = instances_from_pairs(probs[top], top % k, top // k, low[top // k], resized, padded, orig, conf=conf)
    assert len(got[0]) == len(ref[0]) > 0 and (conf == 0.0 or len(ref[0]) < 40)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-6)
    assert np.array_equal(got[1], ref[1]) and np.array_equal(got[2], ref[2])
