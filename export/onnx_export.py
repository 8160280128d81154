"""Export FastInst to ONNX: the deploy wrapper traced, checked, optionally simplified, verified, with metadata.

Exporter choice: opset >= 18 goes through the dynamo exporter
(``dynamo=True``, ``dynamic_shapes``), which is needed for ONNX ``DeformConv`` (opset 19); opset <= 17 (the
TensorRT 8.x artifact) goes through the TorchScript exporter (``dynamo=False``), because the dynamo exporter's
down-conversion to 17 fails on this model (no Pad/Reduce adapters) and would leave opset 18. The TorchScript path is
static-only: its tracer bakes sizes read off tensors into constants (measured: a "dynamic" opset-17 graph fails at
any other size). Either way the opset actually written is asserted afterwards, and ``check_graph`` must find no
problem; the graph is then checked against the torch wrapper on ONNX Runtime (except plugin graphs, which ORT
cannot run).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from fastinst_rt import __version__
from fastinst_rt.artifact import ArtifactMeta
from fastinst_rt.checkpoint import ModelInfo, load_checkpoint
from fastinst_rt.coco import COCO_CLASSES
from fastinst_rt.io.outputs import check_writable, write_atomic
from fastinst_rt.log import progress_logger
from fastinst_rt.modeling.fastinst import SIZE_DIVISIBILITY, FastInst
from fastinst_rt.modeling.layers import DeformConv
from fastinst_rt.runtime.padding import static_padding_note
from fastinst_rt.runtime.preprocess import MAX_TEST_SIZE, check_test_size
from fastinst_rt.zoo import DEFAULT_TEST_SIZE

from . import quantize
from .checks import Agreement, check_graph, graph_opset
from .deploy import MASK_STRIDE, DeployModel, fp16_regions
from .int8_export import INT8_JUDGED, Calibration, quantize_within_gate
from .padding import COMPONENTS as PADDING_COMPONENTS
from .verify import SIMPLIFY_TOL, gate_inputs, judge_half, simplify_graph, verify_graph, verify_reduced

__all__ = ["export_onnx", "plan_export", "ExportPlan", "parse_imgsz", "default_imgsz"]

_FP16_FALLBACK_REGIONS = 2  # regions an FP16 graph may leave in float32 to pass its gate

DEFAULT_OPSET = 19  # ONNX DeformConv; TensorRT >= 10.1 and ONNX Runtime >= 1.25
PLUGIN_OPSET = 17  # TensorRT 8.6's parser reads opset <= 17
MAX_OPSET = 21


def _ceil32(v: int) -> int:
    return int(math.ceil(v / SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY)


def default_imgsz(test_size: tuple[int, int]) -> tuple[int, int]:
    """The fixed input of a static export: the test resize's landscape bounds rounded up to /32 (576/777 ->
    576x800, 640/853 -> 640x864). Portrait images are shrunk to fit by the runtime."""
    return _ceil32(test_size[0]), _ceil32(test_size[1])


def parse_imgsz(imgsz: int | str | tuple[int, int] | list[int]) -> tuple[int, int]:
    """ "HxW", "N" (square), N or (H, W) -> (H, W), each rounded up to a multiple of 32; sides <= MAX_TEST_SIZE."""
    if isinstance(imgsz, str):
        parts = imgsz.lower().replace(",", "x").split("x")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"--imgsz must be HxW or N, got {imgsz!r}") from None
    elif isinstance(imgsz, int):
        values = [imgsz]
    else:
        values = [int(v) for v in imgsz]
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < SIZE_DIVISIBILITY or max(values) > MAX_TEST_SIZE:
        raise ValueError(f"input size must be two sides in {SIZE_DIVISIBILITY}..{MAX_TEST_SIZE}, got {imgsz!r}")
    return _ceil32(values[0]), _ceil32(values[1])


_log = progress_logger(__name__)


@dataclass(frozen=True)
class ExportPlan:
    """What one export writes, decided and validated before anything is traced."""

    info: ModelInfo
    test_size: tuple[int, int]  # (short side, long-side cap) written into the metadata
    size: tuple[int, int]  # the fixed padded input (H, W), or the tracing example's size when dynamic
    dynamic: bool
    batch: int
    precision: str  # "fp32" or "fp16"
    raw: bool
    opset: int
    max_det: int
    dcn: str  # "none", "onnx" or "trt-plugin" (artifact.DCN_FORMS)
    simplify: bool
    progress: bool
    padding: tuple[str, ...] = ()  # masked components of the extra padding (export.padding), static graphs only

    @property
    def exporter(self) -> str:
        return "dynamo" if self.opset >= 18 else "torchscript"

    @property
    def runnable(self) -> bool:
        """Whether ONNX Runtime can run the graph (it has no kernel for the TensorRT plugin node)."""
        return self.dcn != "trt-plugin"


def _load(model: FastInst | str | os.PathLike, info: ModelInfo | None, progress: bool) -> tuple[FastInst, ModelInfo]:
    if not isinstance(model, FastInst):
        return load_checkpoint(model, "cpu")
    if info is None:  # a bare module (e.g. built in a test): generic metadata
        _log(progress, "no info= given with the module: generic metadata (default test size, COCO or classN names)")
        k = model.num_classes
        names = COCO_CLASSES if k == len(COCO_CLASSES) else tuple(f"class{i}" for i in range(k))
        info = ModelInfo("fastinst", None, tuple(names), DEFAULT_TEST_SIZE)  # type: ignore[arg-type]
    return model.eval(), info


def plan_export(
    net: FastInst, info: ModelInfo, *, imgsz: int | str | tuple[int, int] | None, dynamic: bool,
    min_size: int | None, max_size: int | None, batch: int, fp16: bool, raw: bool, opset: int | None, max_det: int,
    dcn_plugin: bool, simplify: bool, progress: bool, mask_padding: bool = True,
) -> ExportPlan:  # fmt: skip
    """Check the options against each other and the model (arguments as ``export_onnx``); ValueError if they clash."""
    has_dcn = any(isinstance(m, DeformConv) for m in net.modules())
    if dcn_plugin and not has_dcn:
        _log(progress, "the model has no deformable convolution: --dcn-plugin changes nothing")
    dcn = ("trt-plugin" if dcn_plugin else "onnx") if has_dcn else "none"
    opset = int(opset) if opset is not None else (PLUGIN_OPSET if dcn == "trt-plugin" else DEFAULT_OPSET)
    if not PLUGIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset {opset} is not supported: use {PLUGIN_OPSET}..{MAX_OPSET}")
    if dcn == "onnx" and opset < 19:
        raise ValueError(f"ONNX DeformConv needs opset >= 19, got {opset}; for TensorRT 8.6 use --dcn-plugin")
    if dynamic and opset < 18:
        # The TorchScript tracer bakes sizes read off tensors (the top-k gathers) into constants: measured, a dynamic
        # opset-17 graph fails at any other input size. TensorRT 8.6 engines are built per size anyway.
        raise ValueError(f"dynamic shapes need opset >= 18 (the dynamo exporter); opset {opset} graphs are static")
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    if max_det < 1:
        raise ValueError(f"max_det must be positive, got {max_det}")
    test_size = (int(min_size or info.test_size[0]), int(max_size or info.test_size[1]))
    check_test_size(*test_size)  # the runtime's bound: the longest resized side is at most MAX_TEST_SIZE
    size = parse_imgsz(imgsz) if imgsz is not None else default_imgsz(test_size)
    q = net.decoder.num_queries
    if (size[0] // 16) * (size[1] // 16) < q:
        raise ValueError(f"input {size[0]}x{size[1]} is too small to select {q} queries at 1/16")
    # A static graph masks the padding beyond each image's /32 size, which the official model never sees
    # (benchmarks/README.md, result 12); a dynamic one gets only that padding, so it needs no mask.
    padding = PADDING_COMPONENTS if mask_padding and not dynamic else ()
    return ExportPlan(info, test_size, size, dynamic, batch, "fp16" if fp16 else "fp32", raw, opset,
                      min(int(max_det), q * net.num_classes), dcn, simplify, progress, padding)  # fmt: skip


def export_onnx(
    model: FastInst | str | os.PathLike,
    output: str | os.PathLike,
    *,
    info: ModelInfo | None = None,
    imgsz: int | str | tuple[int, int] | None = None,
    dynamic: bool = False,
    min_size: int | None = None,
    max_size: int | None = None,
    batch: int = 1,
    fp16: bool = False,
    raw: bool = False,
    opset: int | None = None,
    max_det: int = 100,
    dcn_plugin: bool = False,
    simplify: bool = True,
    int8: bool = False,
    calib: str | os.PathLike | None = None,
    calib_images: int = 32,
    calib_method: str = "percentile",
    calib_cache: str | os.PathLike | None = None,
    progress: bool = True,
    mask_padding: bool = True,
) -> Path:
    """Export a FastInst checkpoint (path or zoo name) or module to an ONNX file; returns the written path.

    Args:
        model: checkpoint path, zoo name, or a ``FastInst`` module.
        output: the ``.onnx`` path to write.
        info: the module's ``ModelInfo`` (names, test size, provenance) when ``model`` is a module, e.g. from
            ``checkpoint.load_checkpoint``; default generic metadata (COCO or "classN" names). Ignored for paths.
        imgsz: fixed padded input (H, W) of a static graph, "HxW" or N; default ``default_imgsz(test size)``.
        dynamic: batch, height and width dynamic (``imgsz`` then only sets the tracing example).
        min_size, max_size: the test-time resize written into the metadata (default: the model's).
        batch: the fixed batch of a static graph.
        fp16: FP16-mixed graph (``deploy.make_exportable``); I/O stay uint8/int64 in, float32 out.
        raw: outputs ``pred_logits``/``pred_masks`` instead of the end-to-end top-``max_det`` pairs.
        opset: default 19 (17 with ``dcn_plugin``); <= 17 uses the TorchScript exporter (static shapes only),
            >= 18 the dynamo one.
        max_det: pairs kept by the end-to-end graph (TopK's constant k).
        dcn_plugin: write DCN layers as TensorRT ``ModulatedDeformConv2d`` plugin nodes (for TensorRT 8.6); such a
            graph does not run in ONNX Runtime, so it is linted but not verified.
        simplify: run onnxslim when installed, keeping the result only if ONNX Runtime gives the same outputs.
        int8: quantize the verified FP32 graph to INT8 Q/DQ (``export.quantize``), calibrated on ``calib``.
        calib: folder of calibration images (real images of the deployment's domain); needed with ``int8``.
        calib_images: how many of them (sorted by path) to calibrate on.
        calib_method: activation-range calibration, one of ``quantize.CALIB_METHODS``.
        calib_cache: with ``calib``, write the calibration here (``export.calibration_cache``); without it, rebuild
            the INT8 graph from this file alone, byte for byte the one the calibrated export wrote.
        progress: print the steps to stderr.
        mask_padding: a static graph masks each image's padding beyond its valid size rounded up to /32, so that
            it gives the dynamic graph's instances on any aspect ratio (``export.padding``); False only to measure
            the unmasked graph (benchmarks/static_padding.py).

    FP16 and INT8 graphs are judged on their final instances against the FP32 model (``verify.verify_reduced``)
    and refused past ``checks.TOLERANCES``; nothing is written then. Before that, either falls back to leaving up to
    two regions of the network in float32 when its weights need it (``_fp16_float32_regions``, ``int8_export``); the
    metadata names them (``fp16.float32_regions``, ``quantization.float32_regions``).
    """
    start = time.perf_counter()
    output = check_writable(output, "output")  # before the model is loaded and traced
    if int8 and (fp16 or dcn_plugin or (calib is None and calib_cache is None)):
        raise ValueError("--int8 quantizes an FP32 ONNX Runtime graph: it needs --calib DIR (or --calib-cache FILE) "
                         "and excludes --fp16 and "
                         "--dcn-plugin")  # fmt: skip
    if int8 and calib_method not in quantize.CALIB_METHODS:
        raise ValueError(f"unknown calibration method {calib_method!r}; expected one of {quantize.CALIB_METHODS}")
    # Checked before the long trace. Up to 4 images beyond the calibration ones judge the INT8 graph (in the
    # deployment's domain: an INT8 graph is only calibrated for it); without them, the last calibration images.
    files = quantize.calibration_images(calib, calib_images + INT8_JUDGED) if int8 and calib is not None else []
    net, info = _load(model, info, progress)
    plan = plan_export(net, info, imgsz=imgsz, dynamic=dynamic, min_size=min_size, max_size=max_size, batch=batch,
                       fp16=fp16, raw=raw, opset=opset, max_det=max_det, dcn_plugin=dcn_plugin, simplify=simplify,
                       progress=progress, mask_padding=mask_padding)  # fmt: skip
    # Dynamic export traces batch 2: torch.export specializes an example dimension of size 1.
    images, sizes = _example_inputs(2 if dynamic else batch, plan.size)
    dcn = plan.dcn if plan.dcn != "none" else "onnx"
    # The FP32 network that FP16 graphs are judged against, built once for the judgements before and after the trace.
    reference = (
        DeployModel(net, raw=raw, max_det=plan.max_det, padding=plan.padding).eval() if fp16 and plan.runnable else None
    )
    # Judged before the long trace: which regions, if any, the float16 network needs in float32 for these weights.
    regions = _fp16_float32_regions(net, reference, plan, (images, sizes), dcn) if reference is not None else ()
    wrapper = DeployModel(net, raw=raw, max_det=plan.max_det, fp16=fp16, dcn=dcn, float32_regions=regions,
                          padding=plan.padding)  # fmt: skip
    proto = _trace(wrapper, images, sizes, plan)
    if plan.simplify:
        feeds = {"images": images.numpy(), "sizes": sizes.numpy()} if plan.runnable else None
        proto = simplify_graph(proto, feeds, SIMPLIFY_TOL, progress)
    _add_metadata_and_lint(proto, _metadata(plan, wrapper), plan)
    if plan.runnable:
        if reference is not None:
            _check_fp16(proto, reference, (images, sizes), plan)
        else:
            verify_graph(proto, wrapper, images, sizes, progress)
        if int8:
            calibration = Calibration(files, calib_images, calib_method, Path(calib_cache) if calib_cache else None)
            proto = quantize_within_gate(proto, wrapper, (images, sizes), plan, calibration)
    else:
        _log(
            progress, "not verified: ONNX Runtime cannot run the TensorRT plugin nodes (checked by the graph lint only)"
        )
    return _save(proto, output, progress, start)


def _check_fp16(proto: onnx.ModelProto, reference: DeployModel, example: tuple, plan: ExportPlan) -> None:
    """The FP16 graph's instances on ONNX Runtime against the FP32 ``reference``'s (the float16 network itself was
    judged by ``_fp16_float32_regions``)."""
    inputs = gate_inputs(example, None if plan.dynamic else plan.size, plan.test_size)
    verify_reduced(proto, reference, inputs, "fp16", plan.progress)


def _fp16_float32_regions(
    net: FastInst, reference: DeployModel, plan: ExportPlan, example: tuple, dcn: str
) -> tuple[str, ...]:
    """The regions (``deploy.fp16_regions``) that the FP16-mixed network leaves in float32: none when PyTorch
    float16 passes the gate on the shipped photo, else one more at a time, the one breaking the fewest tolerances
    with the smallest mean score difference, up to ``_FP16_FALLBACK_REGIONS``; RuntimeError if it still fails.

    As for INT8, where float16 hurts is a property of the weights: fine-tuning the bundled model made res3 and res4
    sensitive where its parent was not (benchmarks/README.md, result 11). A float32 region costs the FP16 speed of
    its layers only; the rest of the network stays float16.
    """
    images, sizes = gate_inputs(example, None if plan.dynamic else plan.size, plan.test_size)[-1]
    images, sizes = images[:1], sizes[:1]  # the photo, once

    def attempt(kept: tuple[str, ...], progress: bool) -> tuple[Agreement, list[str], tuple[str, ...]]:
        half = DeployModel(net, raw=plan.raw, max_det=plan.max_det, fp16=True, dcn=dcn, float32_regions=kept,
                           padding=plan.padding).eval()  # fmt: skip
        agreement, problems = judge_half(reference, half, images, sizes, progress)
        if kept:
            _log(plan.progress, f"fp16 with {', '.join(kept)} in float32: score diff {agreement.score_diff:.4f}, "
                                f"mean {agreement.mean_score_diff:.4f}, {len(problems)} broken")  # fmt: skip
        return agreement, problems, kept

    candidates = fp16_regions(net)
    _, problems, kept = attempt((), plan.progress)
    while problems and len(kept) < min(_FP16_FALLBACK_REGIONS, len(candidates)):
        _log(plan.progress, "fp16 breaks its tolerances (" + "; ".join(problems) + "): trying each region in float32")
        tries = [attempt((*kept, r), False) for r in candidates if r not in kept]
        _, problems, kept = min(tries, key=lambda t: (len(t[1]), t[0].mean_score_diff))
    if problems:
        also = f"; also with {', '.join(kept)} left in float32" if kept else ""
        raise RuntimeError("the fp16 graph loses accuracy against FP32: " + "; ".join(problems) + also)
    if kept:
        _log(plan.progress, f"fp16: {', '.join(kept)} left in float32 to pass the gate")
    return kept


def _trace(wrapper: DeployModel, images: torch.Tensor, sizes: torch.Tensor, plan: ExportPlan) -> onnx.ModelProto:
    """The exporter's graph, its opset asserted, with the I/O contract's shapes written in."""
    s, b = plan.size, plan.batch
    _log(plan.progress, f"tracing {plan.info.name} ({plan.exporter} exporter, opset {plan.opset}, "
                        f"{'dynamic Bx3xHxW' if plan.dynamic else f'static {b}x3x{s[0]}x{s[1]}'}, {plan.precision}, "
                        f"{'raw' if plan.raw else 'e2e'} outputs)")  # fmt: skip
    t = time.perf_counter()
    proto = _export(wrapper, images, sizes, plan.opset, plan.dynamic, plan.exporter, plan.progress)
    _log(plan.progress, f"exported {len(proto.graph.node)} nodes in {time.perf_counter() - t:.1f} s")
    if graph_opset(proto) != plan.opset:
        raise RuntimeError(f"the exporter wrote opset {graph_opset(proto)} instead of the requested {plan.opset}")
    _set_io_shapes(proto, wrapper, batch=None if plan.dynamic else b, size=None if plan.dynamic else s)
    return proto


def _add_metadata_and_lint(proto: onnx.ModelProto, meta: ArtifactMeta, plan: ExportPlan) -> None:
    props = meta.to_props()
    ArtifactMeta.from_props(props, "the export")  # never write what the runtime would refuse to load
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    problems = check_graph(proto, opset=plan.opset, fixed=not plan.dynamic)
    if problems:
        raise RuntimeError("the exported graph is not deployable:\n  " + "\n  ".join(problems))


def _save(proto: onnx.ModelProto, output: Path, progress: bool, start: float) -> Path:
    write_atomic(output, proto.SerializeToString())  # the file appears whole or not at all
    mb = output.stat().st_size / 2**20
    _log(progress, f"wrote {output} ({mb:.1f} MB) in {time.perf_counter() - start:.1f} s")
    return output


def _example_inputs(batch: int, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    # A smooth synthetic image (gradients and stripes): realistic-enough activations for tracing and verification.
    h, w = size
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    planes = [255 * xx, 255 * yy, 127.5 * (1 + torch.sin(12 * xx + 7 * yy))]
    img = torch.stack(planes).clamp(0, 255).to(torch.uint8)
    images = img[None].repeat(batch, 1, 1, 1)
    # Unequal valid sizes so the padding mask is exercised: the last image leaves a margin bottom/right.
    sizes = torch.tensor([[h, w]] * batch, dtype=torch.int64)
    sizes[-1] = torch.tensor([h - h // 8, w - w // 8])
    return images, sizes


def _export(
    wrapper: DeployModel,
    images: torch.Tensor,
    sizes: torch.Tensor,
    opset: int,
    dynamic: bool,
    exporter: str,
    progress: bool,
) -> onnx.ModelProto:
    names_in, names_out = list(wrapper.input_names), list(wrapper.output_names)
    sink = sys.stderr if progress else io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), tempfile.TemporaryDirectory() as tmp:
        # The exporters' deprecation and tracer warnings are about their own internals, not about this model.
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            with torch.no_grad():
                if exporter == "dynamo":
                    dyn = None
                    if dynamic:
                        b = torch.export.Dim("batch", min=1, max=1024)
                        hd = SIZE_DIVISIBILITY * torch.export.Dim("h32", min=2, max=1024)
                        wd = SIZE_DIVISIBILITY * torch.export.Dim("w32", min=2, max=1024)
                        dyn = {"images": {0: b, 2: hd, 3: wd}, "sizes": {0: b}}
                    program = torch.onnx.export(
                        wrapper, (images, sizes), None, dynamo=True, opset_version=opset, input_names=names_in,
                        output_names=names_out, dynamic_shapes=dyn, verbose=False, optimize=True,
                    )  # fmt: skip
                    return program.model_proto
                path = os.path.join(tmp, "model.onnx")
                # Static shapes only (checked by the caller). autograd_inlining=False keeps the DCN autograd.Function
                # one node for its symbolic.
                torch.onnx.export(
                    wrapper, (images, sizes), path, dynamo=False, opset_version=opset, input_names=names_in,
                    output_names=names_out, do_constant_folding=True, autograd_inlining=False,
                )  # fmt: skip
                return onnx.load(path)
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _set_io_shapes(
    proto: onnx.ModelProto, wrapper: DeployModel, *, batch: int | None, size: tuple[int, int] | None
) -> None:
    """Write the I/O contract's shapes (exporters leave internal symbol names such as "4*s39")."""
    b = batch if batch is not None else "batch"
    h, w = size if size is not None else ("height", "width")
    mh, mw = (h // MASK_STRIDE, w // MASK_STRIDE) if size is not None else ("mask_height", "mask_width")
    q, k1, n = wrapper.model.decoder.num_queries, wrapper.model.num_classes + 1, wrapper.max_det
    shapes = {
        "images": [b, 3, h, w], "sizes": [b, 2], "pred_logits": [b, q, k1], "pred_masks": [b, q, mh, mw],
        "scores": [b, n], "labels": [b, n], "query": [b, n], "masks": [b, n, mh, mw],
    }  # fmt: skip
    for vi in list(proto.graph.input) + list(proto.graph.output):
        dims = vi.type.tensor_type.shape.dim
        del dims[:]
        for d in shapes[vi.name]:
            dims.add().CopyFrom(
                onnx.TensorShapeProto.Dimension(**({"dim_value": d} if isinstance(d, int) else {"dim_param": d}))
            )


def _metadata(plan: ExportPlan, wrapper: DeployModel) -> ArtifactMeta:
    """Everything the runtime needs, so that ``Segmenter("x.onnx")`` takes no other argument."""
    m, info = wrapper.model, plan.info
    return ArtifactMeta(
        model=info.name, class_names=tuple(info.class_names), test_size=plan.test_size,
        outputs="raw" if plan.raw else "e2e", size_divisibility=SIZE_DIVISIBILITY,
        fixed_size=None if plan.dynamic else plan.size, batch=None if plan.dynamic else plan.batch,
        dynamic=plan.dynamic, precision=plan.precision, max_det=None if plan.raw else wrapper.max_det,
        num_queries=m.decoder.num_queries, mask_stride=MASK_STRIDE,
        mean=tuple(float(v) for v in m.pixel_mean.flatten()), std=tuple(float(v) for v in m.pixel_std.flatten()),
        opset=plan.opset, exporter=f"torch.onnx {plan.exporter} (torch {torch.__version__}, onnx {onnx.__version__})",
        dcn=plan.dcn, source=os.path.basename(info.source) if info.source else "", source_sha256=info.sha256,
        fastinst_rt_version=__version__, config=info.config.to_dict() if info.config is not None else None,
        extra={**({"fp16": {"float32_regions": list(wrapper.float32_regions)}} if wrapper.fp16 else {}),
               **({} if plan.dynamic else {"padding": static_padding_note(plan.size, plan.padding)})},
    )  # fmt: skip
