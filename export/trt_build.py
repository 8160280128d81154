"""Build a TensorRT engine from a fastinst-rt ONNX export, on the GPU that will run it.

One builder for TensorRT 8.6 through 11.x: the calls are the subset every version has
(``OnnxParser``, ``build_serialized_network``, ``set_memory_pool_limit``, optimization profiles, timing
caches) and differences are found by probing the module, not by comparing version strings:

* network creation: ``EXPLICIT_BATCH`` is required on 8.6, ignored on 10.x, gone on 11.x;
* FP16: an FP16 ONNX (``fastinst-rt export --fp16``) is built as a strongly typed network where
  ``STRONGLY_TYPED`` exists (TensorRT 11 has no ``BuilderFlag.FP16``); an FP32 ONNX with ``fp16=True`` uses
  the FP16 builder flag where it still exists and is refused where it does not;
* progress: ``IProgressMonitor`` where it exists (10.x+), otherwise phase messages only.

Beside ``X.engine`` goes ``X.engine.json``: the ONNX metadata plus the TensorRT version, GPU, precision and
profile, so that the runtime can refuse an engine from another TensorRT version or GPU before deserializing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import time
from pathlib import Path

from fastinst_rt.runtime.backends.ort import read_metadata
from fastinst_rt.runtime.backends.trt import ENGINE_FORMAT, check_build_target, parse_version, sidecar_path

__all__ = ["build_engine", "parse_shape", "default_profile", "default_engine_path"]


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"[build] {msg}", file=sys.stderr, flush=True)


def parse_shape(text: str) -> tuple[int, ...]:
    """trtexec-style "1x3x576x800" -> (1, 3, 576, 800)."""
    if not re.fullmatch(r"\d+(x\d+)*", text.strip()):
        raise ValueError(f"bad shape {text!r}; expected e.g. 1x3x576x800")
    return tuple(int(v) for v in text.strip().split("x"))


def _ceil32(v: float) -> int:
    return int(math.ceil(v / 32) * 32)


def default_profile(meta: dict, max_batch: int = 1) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shapes of ``images`` and ``sizes`` for a dynamic graph, from its test size.

    opt is one landscape image at the test size; max takes ``max_batch`` images of either orientation;
    min is half the short side (and at least 160 px, which the 100-query selection at 1/16 needs).
    """
    short, long = (int(v) for v in meta["test_size"])
    lo = max(160, _ceil32(short / 2))
    opt_hw, max_side = (_ceil32(short), _ceil32(long)), _ceil32(long)
    images = ((1, 3, lo, lo), (1, 3, *opt_hw), (max_batch, 3, max_side, max_side))
    sizes = ((1, 2), (1, 2), (max_batch, 2))
    return {"images": images, "sizes": sizes}


def default_engine_path(onnx_path: Path, trt_version: str, gpu: str, precision: str) -> Path:
    """Cache name encoding what an engine is tied to: ``model.<gpu>.trt<version>.<precision>.engine``."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    return onnx_path.with_name(f"{onnx_path.stem}.{slug}.trt{trt_version}.{precision}.engine")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _progress_monitor(trt, progress: bool):
    if not progress or not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                _log(True, f"{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            pass

    return Monitor()


def build_engine(
    onnx_path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    fp16: bool = False,
    workspace_gb: float = 4.0,
    profile: dict[str, tuple[tuple[int, ...], ...]] | None = None,
    max_batch: int = 1,
    timing_cache: str | os.PathLike | None = None,
    device: int = 0,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Parse ``onnx_path``, build and serialize an engine for this GPU, and write its sidecar.

    Args:
        output: the engine path; default ``default_engine_path`` beside the ONNX, reused (not rebuilt) when an
            engine with a matching sidecar is already there, unless ``force``.
        fp16: FP16 kernels for an FP32 graph (TensorRT < 11); an FP16 graph is always built in its own types.
        profile: {"images": (min, opt, max), "sizes": (...)} for dynamic graphs; default ``default_profile``.
        max_batch: largest batch of the default profile of a dynamic-batch graph.
        timing_cache: a file to read layer timings from and write them back to (faster rebuilds).
    Returns:
        The engine path.
    """
    import onnx

    try:
        import tensorrt as trt
    except ImportError:
        raise ImportError("building engines needs TensorRT: pip install 'fastinst-rt[trt]'") from None
    from fastinst_rt.runtime.backends import cuda_rt

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"no such ONNX file: {onnx_path}")
    proto = onnx.load(str(onnx_path), load_external_data=False)
    meta = read_metadata({p.key: p.value for p in proto.metadata_props}, onnx_path)
    cuda_rt.set_device(device)
    gpu = cuda_rt.device_properties(device)
    version = trt.__version__
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    registry = trt.get_plugin_registry()
    has_plugin = any(registry.get_plugin_creator("ModulatedDeformConv2d", v, "") for v in ("1", "2"))
    check_build_target(version, gpu["compute_capability"], str(meta.get("dcn", "none")), has_plugin)

    graph_fp16 = meta.get("precision") == "fp16"
    strongly_typed = graph_fp16 and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    use_fp16_flag = fp16 and not graph_fp16
    if use_fp16_flag and not hasattr(trt.BuilderFlag, "FP16"):
        raise ValueError(f"TensorRT {version} has no FP16 builder flag (strongly typed networks only): export an "
                         "FP16 graph with `fastinst-rt export --fp16` and build from it")  # fmt: skip
    precision = "fp16" if (graph_fp16 or use_fp16_flag) else "fp32"
    out = Path(output) if output else default_engine_path(onnx_path, version, gpu["name"], precision)
    onnx_sha = _sha256(onnx_path)
    if not force and out.is_file() and sidecar_path(out).is_file():
        old = json.loads(sidecar_path(out).read_text())
        if (old.get("onnx_sha256"), old.get("tensorrt"), old.get("gpu"), old.get("precision")) == (
            onnx_sha, version, gpu["name"], precision,
        ):  # fmt: skip
            _log(progress, f"{out} is up to date (same ONNX, TensorRT {version}, {gpu['name']}, {precision})")
            return out

    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and parse_version(version) < (10,):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    builder = trt.Builder(logger)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    _log(progress, f"parsing {onnx_path.name} (TensorRT {version}, {gpu['name']} sm {gpu['compute_capability']})")
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * 2**30))
    if use_fp16_flag or (graph_fp16 and not strongly_typed):
        config.set_flag(trt.BuilderFlag.FP16)  # weakly typed builders need the flag to pick FP16 kernels
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    dynamic = any(-1 in tuple(t.shape) for t in inputs)
    shapes = {t.name: (tuple(t.shape),) * 3 for t in inputs}
    if dynamic:
        shapes = profile or default_profile(meta, max_batch)
        opt_profile = builder.create_optimization_profile()
        for t in inputs:
            if t.name not in shapes:
                raise ValueError(f"the profile has no shapes for input {t.name!r}")
            opt_profile.set_shape(t.name, *shapes[t.name])
        config.add_optimization_profile(opt_profile)
    cache = None
    if timing_cache is not None:
        blob = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, False)
    monitor = _progress_monitor(trt, progress)
    if monitor is not None:
        config.progress_monitor = monitor

    _log(progress, f"building a {precision} engine (this takes minutes; the timing cache makes rebuilds faster)")
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the TensorRT log above)")
    seconds = time.perf_counter() - start
    if timing_cache is not None:
        Path(timing_cache).write_bytes(memoryview(config.get_timing_cache().serialize()))

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(memoryview(serialized))
    max_b = max(s[2][0] for s in shapes.values())
    sidecar = {
        "format": ENGINE_FORMAT, "meta": meta, "tensorrt": version, "gpu": gpu["name"],
        "compute_capability": gpu["compute_capability"], "precision": precision,
        "strongly_typed": strongly_typed, "profile": {k: [list(s) for s in v] for k, v in shapes.items()},
        "max_batch": int(max_b), "dynamic_batch": dynamic and meta.get("batch") is None,
        "onnx": onnx_path.name, "onnx_sha256": onnx_sha, "workspace_gb": workspace_gb,
        "build_seconds": round(seconds, 1), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }  # fmt: skip
    sidecar_path(out).write_text(json.dumps(sidecar, indent=2))
    _log(
        progress, f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB) in {seconds:.0f} s and {sidecar_path(out).name}"
    )
    return out
