"""ONNX Runtime backend: runs an ONNX file written by ``fastinst-rt export``. Never imports torch.

Everything the runtime needs (classes, test size, fixed input size, batch, output kind) is read from the file's
``metadata_props`` (JSON values, see ``export/onnx_export.py``), so ``Segmenter("model.onnx")`` needs no other
argument. Execution providers: TensorRT and CUDA when the device is CUDA and this onnxruntime has them, else CPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .base import Backend, BackendInfo

__all__ = ["OnnxRuntimeBackend", "METADATA_FORMAT", "OUTPUT_NAMES", "read_metadata"]

# The value of the "format" metadata entry that marks a fastinst-rt export.
METADATA_FORMAT = "fastinst-rt"
# Output names per output kind: "raw" head outputs, or "e2e" (the top max_det query x class pairs).
OUTPUT_NAMES = {"raw": ("pred_logits", "pred_masks"), "e2e": ("scores", "labels", "masks", "boxes")}
INPUT_NAMES = ("images", "sizes")


def read_metadata(custom: dict[str, str], path: str | os.PathLike = "model") -> dict:
    """Decode a fastinst-rt export's metadata map (string values holding JSON); ValueError if it is not one."""
    meta = {}
    for key, value in custom.items():
        try:
            meta[key] = json.loads(value)
        except ValueError:
            meta[key] = value
    if meta.get("format") != METADATA_FORMAT:
        raise ValueError(
            f"{path} is an ONNX model but not a fastinst-rt export (no fastinst-rt metadata); "
            "export it with `fastinst-rt export`"
        )
    missing = [k for k in ("class_names", "test_size", "outputs") if k not in meta]
    if missing or meta["outputs"] not in OUTPUT_NAMES:
        raise ValueError(f"{path}: incomplete fastinst-rt metadata (missing {missing or 'a valid outputs kind'})")
    return meta


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
        cache = Path(os.environ.get("FASTINST_RT_HOME", Path.home() / ".cache" / "fastinst_rt")) / "ort-trt"
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

    ``infer`` returns {"pred_logits", "pred_masks"} for a raw graph and {"scores", "labels", "masks", "boxes"}
    for an end-to-end graph. A fixed-batch graph takes any batch: smaller ones are padded, larger ones split.
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
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
        chosen = providers or _providers(device, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(os.fspath(self.path), opts, providers=chosen)
        except Exception as e:  # ORT raises its own exception types (InvalidProtobuf, Fail, NotImplemented, ...)
            raise ValueError(self._load_error(e)) from None
        self.meta = read_metadata(self.session.get_modelmeta().custom_metadata_map, self.path)
        names_in = tuple(i.name for i in self.session.get_inputs())
        names_out = tuple(o.name for o in self.session.get_outputs())
        self.outputs = self.meta["outputs"]
        if names_in != INPUT_NAMES or names_out != OUTPUT_NAMES[self.outputs]:
            raise ValueError(f"{self.path}: unexpected graph I/O {names_in} -> {names_out} for a {self.outputs} export")
        batch = int(self.meta["batch"]) if self.meta.get("batch") else None
        super().__init__(BackendInfo.from_export_metadata(self.meta, self.path.stem, batch, fixed_batch=True))

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

    def _infer(self, batch: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]:
        fixed = self.info.fixed_size
        if fixed is not None and tuple(batch.shape[2:]) != tuple(fixed):
            raise ValueError(
                f"this graph takes a fixed {fixed[0]}x{fixed[1]} input, got {batch.shape[2]}x{batch.shape[3]}"
            )
        return self._split_batches(batch, sizes, self._run)  # a fixed-batch graph: padded or split to its batch

    def _run(self, batch: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {"images": np.ascontiguousarray(batch), "sizes": np.ascontiguousarray(sizes, dtype=np.int64)}
        values = self.session.run(None, feeds)
        return dict(zip(OUTPUT_NAMES[self.outputs], values))

    def close(self) -> None:
        self.session = None

    def describe(self) -> dict:
        d = super().describe()
        m = self.meta
        d.update(
            file=str(self.path), providers=self.providers, precision=m.get("precision"), opset=m.get("opset"),
            outputs=self.outputs, max_det=m.get("max_det"), dynamic=m.get("dynamic"), fixed_size=m.get("fixed_size"),
            batch=m.get("batch"), dcn=m.get("dcn"), exporter=m.get("exporter"), source=m.get("source"),
            source_sha256=m.get("source_sha256"), fastinst_rt_version=m.get("fastinst_rt_version"),
            inputs={i.name: f"{i.type} {i.shape}" for i in self.session.get_inputs()},
            graph_outputs={o.name: f"{o.type} {o.shape}" for o in self.session.get_outputs()},
        )  # fmt: skip
        return d
