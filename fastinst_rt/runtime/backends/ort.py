"""ONNX Runtime backend: runs an ONNX file written by ``fastinst-rt export``. Never imports torch.

Everything the runtime needs (classes, test size, fixed input size, batch, output kind) is read from the file's
``metadata_props`` (``fastinst_rt.artifact.ArtifactMeta``, validated), so ``Segmenter("model.onnx")`` needs no other
argument. Execution providers: TensorRT and CUDA when the device is CUDA and this onnxruntime has them, else CPU.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ...artifact import ArtifactMeta, cache_dir
from ..padding import padding_caveat
from .base import Backend, BackendInfo, cpu_cores

__all__ = ["OnnxRuntimeBackend"]

# Off for every session. The quantizer writes one Q per consumer of a tensor; ONNX Runtime's common-subexpression
# elimination merges them into one Q feeding two DQs (a bottleneck's input feeds conv1 and the shortcut or the
# residual Add); its int8-to-uint8 rewrite skips a Q with two consumers, and the x86 integer convolution takes only
# uint8 activations. On fastinst-r50-d1 that left 22 of 64 quantized convolutions (every 1x1 conv1/shortcut) as
# float convolutions between Q/DQ; with it off all 64 fuse (benchmarks/README.md, result 8). On FP32 and FP16
# exports the pass finds nothing to merge (onnxslim has already): the optimized graphs have the same nodes with or
# without it (365 on fastinst-r50-d1; on the demo 456 static, 641 dynamic, 557 and 678 in FP16, 496 with
# --no-simplify), so one session serves every precision and the file is opened once.
DISABLED_OPTIMIZERS = ["CommonSubexpressionElimination"]


def _providers(device: str | None, available: list[str]) -> list:
    """Execution providers for ``device``: CUDA devices get TensorRT then CUDA (those available) before CPU."""
    dev = (device or "").lower()
    if dev in ("", "auto"):
        dev = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    if dev == "cpu":
        return ["CPUExecutionProvider"]
    if not dev.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}; expected cpu, cuda or cuda:N")
    if "CUDAExecutionProvider" not in available:
        raise RuntimeError(
            f"device {device!r} requested but this onnxruntime has no CUDA provider (available: {available}); "
            "install onnxruntime-gpu or use device='cpu'"
        )
    index = int(dev.partition(":")[2] or 0)
    providers: list = []
    if "TensorrtExecutionProvider" in available:
        cache = cache_dir() / "ort-trt"
        providers.append(("TensorrtExecutionProvider", {"device_id": index, "trt_engine_cache_enable": True,
                                                        "trt_engine_cache_path": str(cache)}))  # fmt: skip
    providers.append(("CUDAExecutionProvider", {"device_id": index}))
    providers.append("CPUExecutionProvider")
    return providers


class OnnxRuntimeBackend(Backend):
    """A fastinst-rt ONNX export on ONNX Runtime.

    Args:
        path: the ``.onnx`` file.
        device: "cpu", "cuda", "cuda:N"; default CUDA when this onnxruntime has it.
        providers: explicit ONNX Runtime providers (overrides ``device``).

    Outputs as ``Backend`` describes them; a raw graph's pairs are selected in numpy. A fixed-batch graph takes
    any batch: smaller ones are padded, larger ones split.
    """

    kind = "onnxruntime"

    def __init__(self, path: str | os.PathLike, device: str | None = None, providers: list | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("the onnxruntime backend needs onnxruntime: pip install 'fastinst-rt[onnx]'") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no such ONNX file: {self.path}")
        self._providers = providers or _providers(device, ort.get_available_providers())
        self.session = self._open(ort, _options(ort, 0), self._providers)
        self.meta = ArtifactMeta.from_props(self.session.get_modelmeta().custom_metadata_map, self.path)
        self.meta.check_io(_dims(self.session.get_inputs()), _dims(self.session.get_outputs()), self.path)
        super().__init__(BackendInfo.from_meta(self.meta, self.meta.batch, fixed_batch=True))

    def _apply_reserve(self, cores: int) -> None:
        """A new session (the same file and providers) whose intra-op pool leaves ``cores`` cores free and does not
        spin; ONNX Runtime fixes both when a session is created. Only where the CPU provider runs the graph."""
        import onnxruntime as ort

        if self.providers[0] == "CPUExecutionProvider":
            self.session = self._open(ort, _options(ort, cores), self._providers)

    def _open(self, ort: Any, opts: Any, providers: list) -> Any:
        """An ONNX Runtime session of ``self.path``; ValueError with the cause when it cannot be loaded."""
        try:
            return ort.InferenceSession(
                os.fspath(self.path), opts, providers=providers, disabled_optimizers=DISABLED_OPTIMIZERS
            )
        except Exception as e:  # ORT raises its own exception types (InvalidProtobuf, Fail, NotImplemented, ...)
            raise ValueError(self._load_error(e)) from None

    def _load_error(self, e: Exception) -> str:
        text = str(e)
        if "ModulatedDeformConv2d" in text:
            return (
                f"{self.path} holds TensorRT plugin nodes (exported with --dcn-plugin): build a TensorRT engine from it"
            )
        if "DeformConv" in text:
            return f"{self.path} uses ONNX DeformConv, which needs onnxruntime >= 1.25: {text}"
        if "protobuf" in text.lower() or "parsing" in text.lower():
            return f"{self.path} is not a valid ONNX file (corrupt or truncated): {text}"
        return f"cannot load {self.path} with onnxruntime: {text}"

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def _run(self, batch: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {"images": np.ascontiguousarray(batch), "sizes": np.ascontiguousarray(sizes, dtype=np.int64)}
        values = self.session.run(None, feeds)
        return dict(zip(self.meta.output_names, values))

    def _release(self) -> None:
        self.session = None

    def _threads(self) -> dict:
        """The session's intra-op threads (0: ONNX Runtime's default, one per physical core) and spinning."""
        opts = self.session.get_session_options()
        spin = opts.get_session_config_entry("session.intra_op.allow_spinning") if self.reserved_cores else "1"
        return {"intra_op_threads": opts.intra_op_num_threads, "spinning": spin != "0"}

    def describe(self) -> dict:
        d = super().describe()
        m = self.meta
        d.update(
            file=str(self.path), providers=self.providers, **self._threads(), precision=m.precision, opset=m.opset,
            outputs=m.outputs,
            max_det=m.max_det, dynamic=m.dynamic, fixed_size=list(m.fixed_size) if m.fixed_size else None,
            batch=m.batch, dcn=m.dcn, exporter=m.exporter, source=m.source, source_sha256=m.source_sha256,
            fastinst_rt_version=m.fastinst_rt_version,
            inputs={i.name: f"{i.type} {i.shape}" for i in self.session.get_inputs()},
            graph_outputs={o.name: f"{o.type} {o.shape}" for o in self.session.get_outputs()},
        )  # fmt: skip
        if m.fixed_size is not None:  # what an image of another aspect ratio meets in a static graph
            d["padding"] = padding_caveat(m)
        if m.precision != "fp32":  # what the export's gate left in float32 for these weights
            reduced = m.extra.get("fp16" if m.precision == "fp16" else "quantization", {})
            d["float32_regions"] = reduced.get("float32_regions", []) if isinstance(reduced, dict) else []
        return d


def _options(ort: Any, reserve: int) -> Any:
    """Session options; with ``reserve`` cores left to other threads, an intra-op pool of the other cores (at least
    1) that sleeps instead of spinning when idle (``Backend.reserve_cores``)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
    if reserve:
        opts.intra_op_num_threads = max(1, cpu_cores() - reserve)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def _dims(values: list) -> dict[str, list]:
    """{name: dims} of ONNX Runtime I/O (a dim an int, or a symbol name / None when dynamic)."""
    return {v.name: list(v.shape) for v in values}
