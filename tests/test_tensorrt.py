"""TensorRT: the version/GPU rules run everywhere; building and running engines needs TensorRT and a GPU.

Engines can only be built and executed where TensorRT and an NVIDIA GPU exist, so those tests skip elsewhere with
the reason; the decisions the builder and the runtime make before touching TensorRT are checked on any machine.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from fastinst_rt.artifact import (
    ENGINE_FORMAT,
    EngineMismatchError,
    check_engine_compat,
    parse_version,
    read_sidecar,
    sidecar_path,
)
from fastinst_rt.export.trt_build import check_build_target, default_engine_path, default_profile, parse_shape

from .conftest import TEST_VARIANTS


def test_parse_version() -> None:
    assert parse_version("10.4.0.26") == (10, 4, 0, 26)
    assert parse_version("8.6.1.post1") == (8, 6, 1)
    assert parse_version("11.4.0") > parse_version("10.16.1")


@pytest.mark.parametrize(
    "version, cc, dcn, plugin, message",
    [
        ("10.5.0", "7.0", "none", True, "dropped Volta"),
        ("11.4.0", "7.0", "none", True, "dropped Volta"),
        ("8.6.1", "7.5", "onnx", True, "DeformConv"),
        ("10.0.1", "8.7", "onnx", True, "DeformConv"),
        ("8.6.1", "7.5", "trt-plugin", False, "lacks"),
        ("8.5.2", "7.2", "none", True, "older than the supported 8.6"),
    ],
)
def test_impossible_build_targets_are_refused(version, cc, dcn, plugin, message) -> None:
    with pytest.raises(ValueError, match=message):
        check_build_target(version, cc, dcn, plugin)


@pytest.mark.parametrize(
    "version, cc, dcn, plugin",
    [
        ("10.4.0", "7.0", "none", True),
        ("8.6.1", "7.0", "trt-plugin", True),
        ("10.3.0", "8.7", "onnx", True),
        ("11.4.0", "7.5", "onnx", True),
    ],  # fmt: skip
)
def test_possible_build_targets_pass(version, cc, dcn, plugin) -> None:
    check_build_target(version, cc, dcn, plugin)


def _engine(tmp_path: Path, **sidecar) -> Path:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not really an engine")
    meta = {"format": "fastinst-rt", "class_names": ["a"], "test_size": [320, 427], "outputs": "e2e"}
    base = {"format": ENGINE_FORMAT, "meta": meta,
            "tensorrt": "10.4.0.26", "gpu": "Tesla T4", "compute_capability": "7.5"}  # fmt: skip
    sidecar_path(engine).write_text(json.dumps({**base, **sidecar}))
    return engine


def test_engines_from_another_version_or_gpu_are_refused(tmp_path: Path) -> None:
    side = read_sidecar(_engine(tmp_path))
    check_engine_compat(side, "10.4.0.26", "Tesla T4", "7.5")
    check_engine_compat(side, "10.4.0.30", "Tesla T4", "7.5")  # a rebuild of the same release loads the same plans
    with pytest.raises(EngineMismatchError, match="built with TensorRT 10.4.0.26 but this is TensorRT 10.3.0"):
        check_engine_compat(side, "10.3.0", "Tesla T4", "7.5")
    with pytest.raises(EngineMismatchError, match="built for Tesla T4"):
        check_engine_compat(side, "10.4.0.26", "NVIDIA A100-SXM4-40GB", "8.0")


def test_sidecar_problems_are_explained(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_sidecar(tmp_path / "absent.engine")
    lonely = tmp_path / "lonely.engine"
    lonely.write_bytes(b"x")
    with pytest.raises(ValueError, match="no lonely.engine.json"):
        read_sidecar(lonely)
    engine = _engine(tmp_path, format="something-else")
    with pytest.raises(ValueError, match="not a fastinst-rt engine sidecar"):
        read_sidecar(engine)
    sidecar_path(engine).write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_sidecar(engine)


def test_profiles_shapes_and_cache_names() -> None:
    prof = default_profile((576, 777), max_batch=4)
    assert prof["images"] == ((1, 3, 288, 288), (1, 3, 576, 800), (4, 3, 800, 800))
    assert prof["sizes"] == ((1, 2), (1, 2), (4, 2))
    assert default_profile((320, 427))["images"][0] == (1, 3, 160, 160)
    assert parse_shape("1x3x576x800") == (1, 3, 576, 800)
    with pytest.raises(ValueError, match="bad shape"):
        parse_shape("1,3,576")
    name = default_engine_path(Path("/m/r50.onnx"), "10.4.0", "Tesla V100-SXM2-16GB", "fp16").name
    assert name == "r50.tesla-v100-sxm2-16gb.trt10.4.0.fp16.engine"


def _gpu_and_trt() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install 'fastinst-rt[trt]' on a machine with an NVIDIA GPU)"
    try:
        from fastinst_rt.runtime.backends import cuda_rt

        cuda_rt.device_properties(0)
    except Exception as e:  # no cuda-python, no driver, or no device
        return f"no usable CUDA device: {e}"
    return None


needs_trt = pytest.mark.skipif(_gpu_and_trt() is not None, reason=str(_gpu_and_trt()))


@pytest.fixture(scope="module")
def tiny_onnx(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    from fastinst_rt.export.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("trt")
    ckpt = tiny_checkpoints[TEST_VARIANTS[0]]
    dcn = tiny_checkpoints[next(name for name in TEST_VARIANTS if "dcn" in name)]
    return {
        "static": export_onnx(ckpt, root / "static.onnx", imgsz=(320, 448), progress=False),
        "fp16": export_onnx(ckpt, root / "fp16.onnx", imgsz=(320, 448), fp16=True, progress=False),
        "dcn-dynamic": export_onnx(dcn, root / "dcn.onnx", dynamic=True, progress=False),
    }


@pytest.mark.trt
@needs_trt
def test_engine_matches_onnxruntime(tiny_onnx, photo_wide, tmp_path: Path) -> None:
    from fastinst_rt import Segmenter
    from fastinst_rt.export.trt_build import build_engine

    engine = build_engine(tiny_onnx["static"], tmp_path / "tiny.engine", progress=False)
    ort = Segmenter(tiny_onnx["static"], device="cpu", conf=0.0, max_det=20).predict(photo_wide, color="rgb")
    for cuda_graph in (False, True):
        from fastinst_rt.runtime.backends.trt import TensorRTBackend

        seg = Segmenter(TensorRTBackend(engine, cuda_graph=cuda_graph), conf=0.0, max_det=20)
        for _ in range(2):  # the second call replays the captured graph
            res = seg.predict(photo_wide, color="rgb")
        np.testing.assert_allclose(res.scores, ort.scores, rtol=1e-2, atol=1e-4)
        ious = [np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1) for a, b in zip(res.masks, ort.masks)]
        assert np.median(ious) > 0.98
    # The cache: the same ONNX on the same GPU and TensorRT is not rebuilt.
    mtime = engine.stat().st_mtime
    assert build_engine(tiny_onnx["static"], engine, progress=False).stat().st_mtime == mtime


@pytest.mark.trt
@needs_trt
def test_dcn_engine_with_dynamic_shapes_matches_onnxruntime(tiny_onnx, photo, photo_wide, tmp_path: Path) -> None:
    """ONNX DeformConv as TensorRT's native layer (>= 10.1), two input sizes through one dynamic profile."""
    import tensorrt as trt

    from fastinst_rt import Segmenter
    from fastinst_rt.export.trt_build import build_engine

    if parse_version(trt.__version__) < (10, 1):
        pytest.skip(f"TensorRT {trt.__version__} has no DeformConv layer (>= 10.1); its DCN path is --dcn-plugin")

    engine = build_engine(tiny_onnx["dcn-dynamic"], tmp_path / "dcn.engine", progress=False)
    for image in (photo, photo_wide):
        ort = Segmenter(tiny_onnx["dcn-dynamic"], device="cpu", conf=0.0, max_det=20).predict(image, color="rgb")
        res = Segmenter(engine, conf=0.0, max_det=20).predict(image, color="rgb")
        np.testing.assert_allclose(res.scores, ort.scores, rtol=1e-2, atol=1e-4)
        assert res.masks.shape == ort.masks.shape


@pytest.mark.trt
@needs_trt
def test_fp16_engine_is_finite(tiny_onnx, photo, tmp_path: Path) -> None:
    from fastinst_rt import Segmenter
    from fastinst_rt.export.trt_build import build_engine

    engine = build_engine(tiny_onnx["fp16"], tmp_path / "fp16.engine", progress=False)
    res = Segmenter(engine, conf=0.0, max_det=20).predict(photo, color="rgb")
    assert len(res) == 20 and np.isfinite(res.scores).all()
    side = json.loads(sidecar_path(engine).read_text())
    side["tensorrt"] = "1.0.0"
    sidecar_path(engine).write_text(json.dumps(side))
    with pytest.raises(EngineMismatchError, match="rebuild it here"):
        Segmenter(engine)


def _plan(tmp_path: Path, *, max_batch: int = 1, fp16_flag: bool = False, dynamic: bool = True):
    """A ``BuildPlan`` as ``plan_build`` makes it on a T4, without TensorRT (the cache logic needs none)."""
    from fastinst_rt.artifact import ArtifactMeta
    from fastinst_rt.export.trt_build import BuildPlan

    meta = ArtifactMeta("demo", ("a", "b"), (256, 341), fixed_size=None if dynamic else (256, 352),
                        batch=None if dynamic else 1, dynamic=dynamic)  # fmt: skip
    return BuildPlan(tmp_path / "m.onnx", meta, tmp_path / "m.engine", "10.4.0", {"name": "Tesla T4",
                     "compute_capability": "7.5"}, "fp16" if fp16_flag else "fp32", fp16_flag, False, "ab" * 32, 4.0,
                     None, max_batch, None)  # fmt: skip


def _fake_engine(plan) -> None:
    """An engine file and the sidecar ``build_engine`` writes for ``plan`` (the engine's bytes are never read here)."""
    from fastinst_rt.artifact import write_sidecar
    from fastinst_rt.export.trt_build import engine_sidecar, requested_profile

    plan.output.write_bytes(b"not an engine")
    shapes = requested_profile(plan) or {"images": ((1, 3, 256, 352),) * 3, "sizes": ((1, 2),) * 3}
    write_sidecar(plan.output, engine_sidecar(plan, shapes, 1.0))


def test_the_engine_cache_key_holds_the_profile_max_batch_and_flags(tmp_path: Path) -> None:
    from fastinst_rt.export.trt_build import engine_up_to_date

    _fake_engine(_plan(tmp_path, max_batch=1))
    assert engine_up_to_date(_plan(tmp_path, max_batch=1))
    assert not engine_up_to_date(_plan(tmp_path, max_batch=4))  # another --max-batch: another profile
    assert not engine_up_to_date(_plan(tmp_path, fp16_flag=True))
    custom = dataclasses.replace(_plan(tmp_path), profile={"images": ((1, 3, 160, 160), (1, 3, 256, 352),
                                 (2, 3, 352, 352)), "sizes": ((1, 2), (1, 2), (2, 2))})  # fmt: skip
    assert not engine_up_to_date(custom)
    _fake_engine(custom)
    assert engine_up_to_date(custom) and not engine_up_to_date(_plan(tmp_path))
    static = _plan(tmp_path, dynamic=False)
    _fake_engine(static)
    assert engine_up_to_date(static) and engine_up_to_date(_plan(tmp_path, dynamic=False, max_batch=8))
