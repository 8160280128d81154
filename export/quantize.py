"""INT8 explicit quantization of an exported FP32 graph: Q/DQ nodes calibrated on real images.

The quantized graph is ONNX with ``QuantizeLinear``/``DequantizeLinear`` pairs (the QDQ format): ONNX Runtime runs
it on the CPU (it fuses each DQ -> Conv -> Q into an integer convolution) and TensorRT builds it with explicit
quantization (strongly typed networks on TensorRT 11; no calibrator, the scales are in the graph). What TensorRT
needs is written in: symmetric int8 everywhere (zero points 0), per-output-channel weight scales on axis 0,
per-tensor activation scales, opset >= 13 (``checks.check_int8`` lints it).

What is quantized is chosen by measurement (``benchmarks/README.md``, result 6; ``sensitivity`` reruns it): the
convolutions of the backbone and the pixel decoder, where the compute is. Left in float32: the query-selection
convolutions (their logits pick the queries by a top-k over near-ties), the transformer decoder (Gemm/MatMul,
attention softmax, LayerNorm) and the prediction heads — a few percent of the FLOPs, and where INT8 moved the
selected instances most. Some weights need more in float32: the exporter then leaves regions of convolutions
(``conv_regions``) in float32 one by one until its gate passes (``export.onnx_export._quantize``).

Calibration (onnxruntime's calibrators, ``calibrate``): activation ranges from the 99.999th percentile of their
histograms over the calibration images (min-max lets one outlier set the scale; measured worse, see result 6), or
``entropy``: TensorRT's KL-divergence threshold search, over 2048 histogram bins into 128 quantized ones. (What
``quantize_static`` calls entropy searches 128 bins into 128, whose only candidate is the full range: min-max.)
The ranges are written once to a file that ``quantize_onnx`` reads, so an export that tries several graphs
calibrates once.
Needs onnxruntime (the ``onnx`` extra); torch-free.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import tempfile
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx

from fastinst_rt.artifact import ArtifactMeta, read_onnx_meta
from fastinst_rt.log import bar_disabled, progress_logger

from .checks import check_int8

__all__ = [
    "quantize_onnx", "calibration_feeds", "quantizable_convs", "quantizable_nodes", "check_int8", "CALIB_METHODS",
    "SENSITIVE", "conv_regions", "calibrate", "float_convs_read_float",
]  # fmt: skip

CALIB_METHODS = ("percentile", "entropy", "minmax")
# Regions left in float32, as parameter-name prefixes of the convolutions' weights (measured: result 6).
SENSITIVE = ("model.decoder.",)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_PERCENTILE = 99.999
# Float biases: TensorRT's parser takes only float inputs to DequantizeLinear (an int32 bias DQ is refused), and
# ONNX Runtime fuses the integer convolution with a float bias just the same (measured: 26 QLinearConv either way).
QUANTIZE_BIAS = False
# 7-bit weights (range [-64, 64], still symmetric int8 for TensorRT). ONNX Runtime's integer convolution on x86
# CPUs without VNNI (AVX2, AVX-512F) sums u8 x s8 products pairwise in int16, which saturates past 32767: with
# 8-bit weights, 255 x 127 x 2 does. Measured on the bundled model on an AVX2-only EPYC: the fused graph's top-10
# scores moved 0.059 from FP32 against 0.022 for the same Q/DQ graph computed in float, and the export gate refused
# it; with 7-bit weights 0.022 fused or not (benchmarks/README.md, result 8).
REDUCE_RANGE = True
# quantize_static reads calibration files (calibration_cache_path) from onnxruntime 1.27 on.
_MIN_ORT = (1, 27)


class _OncePerMessage(logging.Filter):
    """Passes each distinct message once: onnxruntime's quantizer repeats the same warning for every try."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


@contextmanager
def quiet_repeats() -> Iterator[None]:
    """Within the block, each message onnxruntime's quantization logs (through the root logger) appears once."""
    root, once = logging.getLogger(), _OncePerMessage()  # one per block: each export shows a warning once
    root.addFilter(once)
    try:
        yield
    finally:
        root.removeFilter(once)


_log = progress_logger(__name__)


def calibration_images(folder: str | os.PathLike, num_images: int) -> list[Path]:
    """The first ``num_images`` images of ``folder`` (recursive, sorted by path); ValueError if there are none."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"calibration folder {root} does not exist")
    if num_images < 1:
        raise ValueError(f"--calib-images must be positive, got {num_images}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in calibration folder {root}")
    return files[:num_images]


def calibration_feeds(
    files: Sequence[Path], meta: ArtifactMeta, progress: bool = True
) -> Iterator[dict[str, np.ndarray]]:
    """One graph feed per image, pre-processed exactly as the runtime does (test-size resize, padding).

    Args:
        files: image paths. meta: the graph's metadata (test size, fixed size).
    Yields:
        ``{"images": (1, 3, H, W) uint8, "sizes": (1, 2) int64}``; (H, W) the fixed size, else padded to /32.
    """
    from tqdm import tqdm

    from fastinst_rt.runtime.preprocess import load_image

    for path in tqdm(files, desc="calibration", disable=bar_disabled(progress)):
        batch, sizes = runtime_input([load_image(path, "rgb")], meta)
        yield {"images": batch, "sizes": sizes}


def _reader(files: Sequence[Path], meta: ArtifactMeta, progress: bool) -> object:
    """An onnxruntime ``CalibrationDataReader`` over ``calibration_feeds``."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = calibration_feeds(files, meta, progress)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    return Reader()


def calibrate(
    model: onnx.ModelProto,
    files: Sequence[Path],
    ranges: str | os.PathLike,
    method: str = "percentile",
    op_types: Sequence[str] = ("Conv", "Add"),
    progress: bool = True,
) -> Path:
    """Activation ranges of an FP32 graph over ``files``, written to ``ranges`` (onnxruntime's JSON calibration cache,
    which ``quantize_onnx`` reads); returns its path."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    meta = read_onnx_meta(model, "the graph to calibrate")
    # Percentile and min-max as quantize_static sets them up; entropy with TensorRT's bin counts (module docstring).
    options = {"percentile": {"percentile": _PERCENTILE}, "entropy": {"num_bins": 2048, "num_quantized_bins": 128},
               "minmax": {}}[method]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "fp32.onnx")
        onnx.save(model, src)
        augmented = os.path.join(tmp, "augmented.onnx")
        calibrator = create_calibrator(src, list(op_types), augmented, calibrate_method=_calibration_method(method),
                                       extra_options=options)  # fmt: skip
        calibrator.collect_data(_reader(files, meta, progress))
        save_tensors_data(calibrator.compute_data(), ranges)
    return Path(ranges)


def runtime_input(rgb: list[np.ndarray], meta: ArtifactMeta) -> tuple[np.ndarray, np.ndarray]:
    """(B, 3, H, W) uint8 batch and (B, 2) int64 valid sizes, as ``Segmenter`` feeds a graph with this metadata."""
    from fastinst_rt.runtime.preprocess import prepare

    batch, sizes, _ = prepare(rgb, *meta.test_size, meta.size_divisibility, meta.fixed_size)
    return batch, sizes


def quantizable_convs(model: onnx.ModelProto, sensitive: Sequence[str] = SENSITIVE) -> list[str]:
    """Names of the Conv nodes to quantize: those whose weight is a named model parameter outside ``sensitive``."""
    inits = {init.name for init in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "Conv"
        and len(node.input) > 1
        and node.input[1] in inits
        and node.input[1].startswith("model.")
        and not node.input[1].startswith(tuple(sensitive))
    ]


def quantizable_nodes(
    model: onnx.ModelProto, sensitive: Sequence[str] = SENSITIVE, keep_float: Collection[str] = ()
) -> list[str]:
    """``quantizable_convs`` but those named in ``keep_float``, plus the Adds fed directly by one of them (residual
    and FPN sums).

    Without a quantized Add, a convolution whose output feeds a float Add has no Q after it, and ONNX Runtime
    cannot fuse it into an integer convolution (measured on fastinst-r50-d1: 22 of 64 quantized convolutions stayed
    float); TensorRT fuses such an Add into the convolution when both its inputs carry Q/DQ.
    """
    floats = set(keep_float)
    convs = [name for name in quantizable_convs(model, sensitive) if name not in floats]
    picked = set(convs)
    outputs = {o for n in model.graph.node if n.name in picked for o in n.output}
    adds = [n.name for n in model.graph.node if n.op_type == "Add" and any(i in outputs for i in n.input)]
    return convs + adds


def quantize_onnx(
    model: onnx.ModelProto,
    files: Sequence[Path],
    *,
    method: str = "percentile",
    nodes: Sequence[str] | None = None,
    op_types: Sequence[str] = ("Conv", "Add"),
    float_regions: Sequence[str] = (),
    ranges: str | os.PathLike | None = None,
    images: int | None = None,
    progress: bool = True,
) -> onnx.ModelProto:
    """The INT8 Q/DQ form of an FP32 fastinst-rt graph, calibrated on ``files``; metadata copied, precision int8.

    Args:
        model: an FP32 export (its ``metadata_props`` say how to pre-process the images).
        files: calibration images (see ``calibration_images``).
        method: one of ``CALIB_METHODS``.
        nodes: the nodes to quantize (default ``quantizable_nodes(model)``).
        op_types: the op types ``nodes`` may hold (the sensitivity pass also tries Gemm and MatMul).
        float_regions: the ``conv_regions`` that ``nodes`` leaves in float32, recorded in the metadata.
        ranges: a ``calibrate`` file of the same ``method`` (default: calibrate on ``files`` first).
        images: the calibration images ``ranges`` came from, for the metadata (default ``len(files)``).
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    meta = read_onnx_meta(model, "the graph to quantize")
    if meta.precision != "fp32":
        raise ValueError(f"INT8 quantization starts from an FP32 graph, this one is {meta.precision}")
    nodes = list(quantizable_nodes(model) if nodes is None else nodes)
    calib = _calibration_method(method)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        if ranges is None:
            ranges = calibrate(model, files, os.path.join(tmp, "ranges.json"), method, op_types, progress)
        onnx.save(model, src)
        # Symmetric int8 activations and weights (zero point 0): the only form TensorRT's explicit quantization
        # takes; per-channel weight scales keep the convolutions' accuracy.
        quantize_static(
            src, dst, None, quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8, per_channel=True, reduce_range=REDUCE_RANGE,
            op_types_to_quantize=list(op_types), nodes_to_quantize=nodes, calibrate_method=calib,
            calibration_cache_path=ranges,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": QUANTIZE_BIAS,
                           "DedicatedQDQPair": True},
        )  # fmt: skip
        out = onnx.load(dst)
    float_convs_read_float(out)
    del out.metadata_props[:]
    quant = {"method": method, "calibration_images": len(files) if images is None else images,
             "quantized_nodes": len(nodes), "float32_regions": list(float_regions), "tool": _tool()}  # fmt: skip
    int8 = dataclasses.replace(meta, precision="int8", extra={**meta.extra, "quantization": quant})
    for key, value in int8.to_props().items():
        out.metadata_props.add(key=key, value=value)
    _log(progress, f"quantized {len(nodes)} nodes to INT8 ({method} calibration on {len(files)} images)")
    return out


def _calibration_method(method: str) -> object:
    """onnxruntime's ``CalibrationMethod`` for one of ``CALIB_METHODS``; ValueError for another name, and a clear
    RuntimeError where onnxruntime is too old to read calibration files (1.27)."""
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod

    if method not in CALIB_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; expected one of {CALIB_METHODS}")
    if tuple(int(p) for p in re.findall(r"\d+", onnxruntime.__version__)[:2]) < _MIN_ORT:
        raise RuntimeError(f"INT8 export needs onnxruntime >= 1.27 (calibration files), this is "
                           f"{onnxruntime.__version__}: pip install -U onnxruntime")  # fmt: skip
    return {"percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy,
            "minmax": CalibrationMethod.MinMax}[method]  # fmt: skip


def float_convs_read_float(model: onnx.ModelProto) -> int:
    """Rewire each float32 convolution that reads a DequantizeLinear to that DQ's float source; returns how many.

    Where a tensor feeds a quantized convolution and a float one (res3's output, with res4 left in float32 and the
    pixel decoder's adapter quantized), ``quantize_static`` gives them one Q/DQ pair. The float convolution then
    reads int8-rounded values for nothing, and ONNX Runtime does not fuse the quantized one into an integer kernel
    (a DQ with a float consumer: benchmarks/README.md, result 11). A region left in float32 reads float32.
    """
    producer = {out: node for node in model.graph.node for out in node.output}

    def dequantized(tensor: str) -> onnx.NodeProto | None:
        node = producer.get(tensor)
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    rewired = 0
    for node in model.graph.node:
        dq = dequantized(node.input[0]) if node.op_type == "Conv" else None
        q = producer.get(dq.input[0]) if dq is not None else None
        if q is not None and q.op_type == "QuantizeLinear" and dequantized(node.input[1]) is None:
            node.input[0] = q.input[0]
            rewired += 1
    _drop_unread(model, ("QuantizeLinear", "DequantizeLinear"))
    return rewired


def _drop_unread(model: onnx.ModelProto, op_types: tuple[str, ...]) -> None:
    """Remove nodes of ``op_types`` whose outputs nothing reads (a Q/DQ pair left behind by a rewired reader)."""
    while True:
        read = {i for node in model.graph.node for i in node.input} | {o.name for o in model.graph.output}
        unread = [n for n in model.graph.node if n.op_type in op_types and not any(o in read for o in n.output)]
        if not unread:
            return
        for node in unread:
            model.graph.node.remove(node)


def _tool() -> str:
    import onnxruntime

    return f"onnxruntime.quantization {onnxruntime.__version__}"


def conv_regions(model: onnx.ModelProto) -> dict[str, list[str]]:
    """The convolutions ``quantizable_convs`` picks, by region (``regions``): the units an export may leave in float32
    when the INT8 graph fails its agreement gate."""
    convs = set(quantizable_convs(model))
    picked = {key: [n for n in nodes if n in convs] for key, nodes in regions(model).items()}
    return {key: nodes for key, nodes in picked.items() if nodes}


def regions(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Quantizable nodes grouped by where they are in the network (the sensitivity pass' units)."""
    inits = {init.name for init in model.graph.initializer}
    groups: dict[str, list[str]] = {}
    for node in model.graph.node:
        w = node.input[1] if len(node.input) > 1 else ""
        if node.op_type == "Conv" and w in inits and w.startswith("model."):
            parts = w.split(".")
            key = ".".join(parts[1:3]) if parts[1] in ("backbone", "decoder") else parts[1]
            key = re.sub(r"^backbone\.(stem|conv1|bn1)$", "backbone.stem", key)
        elif node.op_type == "Gemm":
            key = "decoder.linear (Gemm)"
        elif node.op_type == "MatMul":
            key = "matmul (attention products, PPM pooling)"
        else:
            continue
        groups.setdefault(key, []).append(node.name)
    return groups
