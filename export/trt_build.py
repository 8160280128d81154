"""Build a TensorRT engine from a fastinst-rt ONNX export, on the GPU that will run it.

One builder for TensorRT 8.6 through 11.x: the calls are the subset every version has
(``OnnxParser``, ``build_serialized_network``, ``set_memory_pool_limit``, optimization profiles, timing
caches) and differences are found by probing the module, not by comparing version strings:

* network creation: ``EXPLICIT_BATCH`` is required on 8.6, ignored on 10.x, gone on 11.x;
* FP16: an FP16 ONNX (``fastinst-rt export --fp16``) is built as a strongly typed network where
  ``STRONGLY_TYPED`` exists (TensorRT 11 has no ``BuilderFlag.FP16``); an FP32 ONNX with ``fp16=True`` uses
  the FP16 builder flag where it still exists and is refused where it does not. Only a strongly typed build keeps
  what the FP16 graph computes in float32 (norms, softmaxes, heads, and the regions its export's gate left in
  float32, ``fp16.float32_regions``) in float32; TensorRT 8.6 builds it weakly typed with the FP16 flag and may
  pick FP16 kernels there too (not measured: no TensorRT here);
* INT8: an INT8 ONNX (``fastinst-rt export --int8``) carries its scales as Q/DQ nodes (explicit quantization,
  no calibrator): strongly typed where ``STRONGLY_TYPED`` exists (10.x+; on 11 the only way), else with the INT8
  builder flag, which TensorRT 8.6 needs to honour Q/DQ;
* progress: ``IProgressMonitor`` where it exists (10.x+), otherwise phase messages only.

CI type-checks this file (``.ci/typecheck``, mypy) against tensorrt-stubs 10.13.0.35.1, which describe TensorRT 10.13
only. What differs on 8.6 is therefore probed at run time, never taken from the stubs: ``STRONGLY_TYPED`` (9.0+) and
``IProgressMonitor`` with ``config.progress_monitor`` (10.0+) are absent on 8.6, and ``EXPLICIT_BATCH`` is required
there; ``BuilderFlag.FP16`` and ``EXPLICIT_BATCH``, in the 10.13 stubs, are gone on 11.x. The other calls need no
probe: ``OnnxParser``, ``build_serialized_network``, ``set_memory_pool_limit`` and ``init_libnvinfer_plugins`` are
the subset common to 8.5 through 11.x, and 8.6 has optimization profiles, timing caches and ``get_plugin_creator``.

Beside ``X.engine`` goes ``X.engine.json`` (``fastinst_rt.artifact.EngineSidecar``): the ONNX metadata plus the
TensorRT version, GPU, precision and profile, so that the runtime can refuse an engine from another TensorRT
version or GPU before deserializing. ``build_engine`` is a plan (``plan_build``, every refusal before minutes in the
builder), then parse, configure, build and write.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fastinst_rt.artifact import (
    ArtifactError,
    ArtifactMeta,
    EngineSidecar,
    parse_version,
    read_onnx_meta,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from fastinst_rt.io.outputs import atomic_path
from fastinst_rt.log import progress_logger

if TYPE_CHECKING:  # for annotations; TensorRT is imported where it is used, most installs have none
    import tensorrt as trt

__all__ = [
    "build_engine", "plan_build", "BuildPlan", "build_key", "check_build_target", "engine_sidecar",
    "engine_up_to_date", "parse_shape", "default_profile", "requested_profile", "default_engine_path",
]  # fmt: skip

Profile = dict[str, tuple[tuple[int, ...], ...]]


_log = progress_logger(__name__)


def check_build_target(trt_version: str, compute_capability: str, dcn: str, has_deform_plugin: bool) -> None:
    """Refuse combinations that cannot work, before spending minutes in the builder.

    Args:
        trt_version: e.g. "10.4.0". compute_capability: e.g. "7.0" (V100), "7.5" (T4), "8.7" (Orin).
        dcn: the graph's DCN form from its metadata: "none", "onnx" (DeformConv op) or "trt-plugin".
        has_deform_plugin: whether the plugin registry has ``ModulatedDeformConv2d``.
    """
    version = parse_version(trt_version)
    if compute_capability == "7.0" and version >= (10, 5):
        raise ValueError(f"TensorRT {trt_version} dropped Volta (V100, sm 7.0) in 10.5: use TensorRT <= 10.4 on V100")
    if version < (8, 6):
        raise ValueError(f"TensorRT {trt_version} is older than the supported 8.6")
    if dcn == "onnx" and version < (10, 1):
        raise ValueError(
            f"this graph has ONNX DeformConv nodes, which TensorRT parses from 10.1 on (this is {trt_version}): "
            "export it with --dcn-plugin (opset 17, the built-in ModulatedDeformConv2d plugin) for TensorRT 8.6"
        )
    if dcn == "trt-plugin" and not has_deform_plugin:
        raise ValueError(f"this graph uses the ModulatedDeformConv2d plugin, which TensorRT {trt_version} lacks")


def parse_shape(text: str) -> tuple[int, ...]:
    """trtexec-style "1x3x576x800" -> (1, 3, 576, 800)."""
    if not re.fullmatch(r"\d+(x\d+)*", text.strip()):
        raise ValueError(f"bad shape {text!r}; expected e.g. 1x3x576x800")
    return tuple(int(v) for v in text.strip().split("x"))


def _ceil32(v: float) -> int:
    return int(math.ceil(v / 32) * 32)


def default_profile(test_size: tuple[int, int], max_batch: int = 1) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shapes of ``images`` and ``sizes`` for a dynamic graph, from its test size (short, long).

    opt is one landscape image at the test size; max takes ``max_batch`` images of either orientation;
    min is half the short side (and at least 160 px, which the 100-query selection at 1/16 needs).
    """
    short, long = (int(v) for v in test_size)
    lo = max(160, _ceil32(short / 2))
    opt_hw, max_side = (_ceil32(short), _ceil32(long)), _ceil32(long)
    images = ((1, 3, lo, lo), (1, 3, *opt_hw), (max_batch, 3, max_side, max_side))
    sizes = ((1, 2), (1, 2), (max_batch, 2))
    return {"images": images, "sizes": sizes}


def default_engine_path(onnx_path: Path, trt_version: str, gpu: str, precision: str) -> Path:
    """Cache name encoding what an engine is tied to: ``model.<gpu>.trt<version>.<precision>.engine``."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    return onnx_path.with_name(f"{onnx_path.stem}.{slug}.trt{trt_version}.{precision}.engine")


def _progress_monitor(progress: bool) -> trt.IProgressMonitor | None:
    import tensorrt as trt

    if not progress or not hasattr(trt, "IProgressMonitor"):  # 10.0+
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


@dataclass(frozen=True)
class BuildPlan:
    """What one build makes, decided before the builder runs."""

    onnx_path: Path
    meta: ArtifactMeta
    output: Path
    trt_version: str
    gpu: dict  # {"name", "compute_capability"} of the build device
    precision: str  # of the engine: the graph's "int8"/"fp16", "fp16" when the FP16 flag is used, else "fp32"
    fp16_flag: bool  # FP16 kernels for an FP32 graph (weakly typed builders)
    strongly_typed: bool  # an FP16 graph built in its own types (where TensorRT offers it)
    onnx_sha256: str
    workspace_gb: float
    profile: Profile | None
    max_batch: int
    timing_cache: Path | None


def plan_build(
    onnx_path: Path, output: str | os.PathLike | None, gpu: dict, *, fp16: bool, workspace_gb: float,
    profile: Profile | None, max_batch: int, timing_cache: str | os.PathLike | None,
) -> BuildPlan:  # fmt: skip
    """Read and validate the ONNX file and decide the engine's precision and path (arguments as ``build_engine``)."""
    import onnx
    import tensorrt as trt

    if not onnx_path.is_file():
        raise FileNotFoundError(f"no such ONNX file: {onnx_path}")
    meta = read_onnx_meta(onnx.load(str(onnx_path), load_external_data=False), onnx_path)
    version = trt.__version__
    graph_fp16 = meta.precision == "fp16"
    typed = meta.precision in ("fp16", "int8")  # the graph's own types say what runs in reduced precision
    strongly_typed = typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    fp16_flag = fp16 and not graph_fp16
    if fp16_flag and not hasattr(trt.BuilderFlag, "FP16"):
        raise ValueError(f"TensorRT {version} has no FP16 builder flag (strongly typed networks only): export an "
                         "FP16 graph with `fastinst-rt export --fp16` and build from it")  # fmt: skip
    precision = "int8" if meta.precision == "int8" else "fp16" if (graph_fp16 or fp16_flag) else "fp32"
    out = Path(output) if output else default_engine_path(onnx_path, version, gpu["name"], precision)
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    cache = Path(timing_cache) if timing_cache is not None else None
    return BuildPlan(onnx_path, meta, out, version, gpu, precision, fp16_flag, strongly_typed, sha, workspace_gb,
                     profile, max_batch, cache)  # fmt: skip


def build_engine(
    onnx_path: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    fp16: bool = False,
    workspace_gb: float = 4.0,
    profile: Profile | None = None,
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
    try:
        import tensorrt as trt

        from fastinst_rt.runtime.backends import cuda_rt
    except ImportError as e:
        raise RuntimeError(
            f"building engines needs TensorRT and cuda-python: pip install 'fastinst-rt[trt]' ({e})"
        ) from None
    cuda_rt.set_device(device)
    gpu = cuda_rt.device_properties(device)
    plan = plan_build(Path(onnx_path), output, gpu, fp16=fp16, workspace_gb=workspace_gb, profile=profile,
                      max_batch=max_batch, timing_cache=timing_cache)  # fmt: skip
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    check_build_target(plan.trt_version, gpu["compute_capability"], plan.meta.dcn, _has_deform_plugin())
    if not force and engine_up_to_date(plan):
        _log(progress, f"{plan.output} is up to date (same ONNX, TensorRT {plan.trt_version}, {gpu['name']}, "
                       f"{plan.precision}, builder flags and profile)")  # fmt: skip
        return plan.output
    builder = trt.Builder(logger)
    network, parser = _parse(builder, logger, plan, progress)
    config, shapes = _configure(builder, network, plan, progress)
    serialized, seconds = _build(builder, network, config, plan, progress)
    return _write(plan, serialized, shapes, seconds, progress)


def _has_deform_plugin() -> bool:
    import tensorrt as trt

    registry = trt.get_plugin_registry()
    return any(registry.get_plugin_creator("ModulatedDeformConv2d", v, "") for v in ("1", "2"))


def requested_profile(plan: BuildPlan) -> Profile | None:
    """The optimization profile a graph with dynamic inputs is built with; None for a static graph, whose shapes
    are the ONNX file's own (and so part of its hash)."""
    if plan.meta.fixed_size is not None and plan.meta.batch is not None:
        return None
    return plan.profile or default_profile(plan.meta.test_size, plan.max_batch)


def build_key(plan: BuildPlan) -> dict:
    """Everything an engine is tied to: the cache key of ``engine_up_to_date`` (JSON-like, as the sidecar holds it).

    ONNX hash, TensorRT version, GPU, precision, the builder flags that choose kernels, and the optimization profile
    (min/opt/max shapes; the max batch is its largest first dimension)."""
    profile = requested_profile(plan)
    return {
        "onnx_sha256": plan.onnx_sha256, "tensorrt": plan.trt_version, "gpu": plan.gpu["name"],
        "precision": plan.precision, "fp16_flag": plan.fp16_flag, "strongly_typed": plan.strongly_typed,
        "profile": None if profile is None else {k: [list(s) for s in v] for k, v in sorted(profile.items())},
    }  # fmt: skip


def _sidecar_key(old: EngineSidecar) -> dict:
    """``build_key`` as an existing engine's sidecar records it (None where an older sidecar lacks a field)."""
    profile = {k: [list(s) for s in v] for k, v in sorted(old.profile.items())} if old.profile else None
    return {
        "onnx_sha256": old.build.get("onnx_sha256"), "tensorrt": old.tensorrt, "gpu": old.gpu,
        "precision": old.precision, "fp16_flag": old.build.get("fp16_flag"),
        "strongly_typed": old.build.get("strongly_typed"), "profile": profile if old.build.get("dynamic") else None,
    }  # fmt: skip


def engine_up_to_date(plan: BuildPlan) -> bool:
    """Whether ``plan.output`` is an engine with ``plan``'s ``build_key``: same ONNX, TensorRT, GPU, precision,
    builder flags and profile. Another ``--max-batch`` or profile is a rebuild, not a cache hit."""
    if not (plan.output.is_file() and sidecar_path(plan.output).is_file()):
        return False
    try:
        old = read_sidecar(plan.output)
    except ArtifactError:
        return False  # an unreadable sidecar: rebuild and overwrite it
    return _sidecar_key(old) == build_key(plan)


def _parse(
    builder: trt.Builder, logger: trt.ILogger, plan: BuildPlan, progress: bool
) -> tuple[trt.INetworkDefinition, trt.OnnxParser]:
    import tensorrt as trt

    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and parse_version(plan.trt_version) < (10,):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if plan.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    gpu = plan.gpu
    _log(progress, f"parsing {plan.onnx_path.name} (TensorRT {plan.trt_version}, {gpu['name']} sm "
                   f"{gpu['compute_capability']})")  # fmt: skip
    if not parser.parse_from_file(str(plan.onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {plan.onnx_path}: {errors}")
    return network, parser  # the parser must outlive the network's use


def _configure(
    builder: trt.Builder, network: trt.INetworkDefinition, plan: BuildPlan, progress: bool
) -> tuple[trt.IBuilderConfig, Profile]:
    """The builder config (workspace, precision, profile, timing cache, progress) and the profile's shapes."""
    import tensorrt as trt

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(plan.workspace_gb * 2**30))
    if plan.fp16_flag or (plan.meta.precision == "fp16" and not plan.strongly_typed):
        config.set_flag(trt.BuilderFlag.FP16)  # weakly typed builders need the flag to pick FP16 kernels
    if plan.meta.precision == "int8" and not plan.strongly_typed:
        config.set_flag(trt.BuilderFlag.INT8)  # TensorRT 8.6 runs Q/DQ layers in INT8 only with the flag
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    shapes: Profile = {t.name: (tuple(t.shape),) * 3 for t in inputs}
    if any(-1 in tuple(t.shape) for t in inputs):
        shapes = plan.profile or default_profile(plan.meta.test_size, plan.max_batch)
        opt_profile = builder.create_optimization_profile()
        for t in inputs:
            if t.name not in shapes:
                raise ValueError(f"the profile has no shapes for input {t.name!r}")
            opt_profile.set_shape(t.name, *shapes[t.name])
        config.add_optimization_profile(opt_profile)
    if plan.timing_cache is not None:
        blob = plan.timing_cache.read_bytes() if plan.timing_cache.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(blob), False)
    monitor = _progress_monitor(progress)
    if monitor is not None:
        config.progress_monitor = monitor
    return config, shapes


def _build(
    builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig, plan: BuildPlan, progress: bool
) -> tuple[trt.IHostMemory, float]:
    _log(progress, f"building a {plan.precision} engine (this takes minutes; the timing cache makes rebuilds faster)")
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the TensorRT log above)")
    if plan.timing_cache is not None:
        with atomic_path(plan.timing_cache) as tmp:
            tmp.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return serialized, time.perf_counter() - start


def engine_sidecar(plan: BuildPlan, shapes: Profile, seconds: float) -> EngineSidecar:
    """The sidecar of an engine built by ``plan`` with the profile ``shapes``; it records ``build_key``'s fields."""
    return EngineSidecar(
        meta=plan.meta, tensorrt=plan.trt_version, gpu=plan.gpu["name"],
        compute_capability=plan.gpu["compute_capability"], precision=plan.precision,
        max_batch=int(max(s[2][0] for s in shapes.values())), dynamic_batch=plan.meta.batch is None,
        profile={k: [list(s) for s in v] for k, v in shapes.items()},
        build={"strongly_typed": plan.strongly_typed, "fp16_flag": plan.fp16_flag,
               "dynamic": requested_profile(plan) is not None, "onnx": plan.onnx_path.name,
               "onnx_sha256": plan.onnx_sha256, "workspace_gb": plan.workspace_gb, "build_seconds": round(seconds, 1),
               "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    )  # fmt: skip


def _write(plan: BuildPlan, serialized: trt.IHostMemory, shapes: Profile, seconds: float, progress: bool) -> Path:
    out = plan.output
    with atomic_path(out) as tmp:  # the engine appears whole or not at all
        tmp.write_bytes(memoryview(serialized))
    side = write_sidecar(out, engine_sidecar(plan, shapes, seconds))
    _log(progress, f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB) in {seconds:.0f} s and {side.name}")
    return out
