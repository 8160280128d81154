"""TensorRT backend: runs an engine built by ``fastinst-rt build``. Never imports torch.

Written against the API subset common to TensorRT 8.6 through 11.x: I/O by tensor name
(``num_io_tensors``/``get_tensor_name``/``get_tensor_mode``), ``set_input_shape``, ``set_tensor_address`` and
``execute_async_v3`` on an explicit stream; device buffers through cuda-python, sized once from the
optimization profile's largest shapes. An engine only runs on the TensorRT version and GPU model it was
built for: the JSON sidecar written beside it records both, and a mismatch is refused with a clear message
before TensorRT is asked to deserialize it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .base import Backend, BackendInfo

__all__ = [
    "TensorRTBackend",
    "EngineMismatchError",
    "ENGINE_FORMAT",
    "sidecar_path",
    "read_sidecar",
    "check_engine_compat",
    "check_build_target",
    "parse_version",
]

ENGINE_FORMAT = "fastinst-rt-engine"


class EngineMismatchError(ValueError):
    """An engine built for another TensorRT version or GPU model than the one it is loaded on."""


def parse_version(text: str) -> tuple[int, ...]:
    """ "10.4.0.26" -> (10, 4, 0, 26); non-numeric parts are dropped ("8.6.1.post1" -> (8, 6, 1))."""
    out = []
    for part in str(text).split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


def sidecar_path(engine: str | os.PathLike) -> Path:
    """The metadata file beside an engine: ``model.engine`` -> ``model.engine.json``."""
    return Path(str(engine) + ".json")


def read_sidecar(engine: str | os.PathLike) -> dict:
    """The sidecar of ``engine``; clear errors when either file is missing or the sidecar is not ours."""
    engine = Path(engine)
    if not engine.is_file():
        raise FileNotFoundError(f"no such engine file: {engine}")
    side = sidecar_path(engine)
    if not side.is_file():
        raise ValueError(
            f"{engine} has no {side.name} beside it; rebuild it with `fastinst-rt build` (the sidecar records the "
            "classes, the input size, and the TensorRT version and GPU it was built for)"
        )
    try:
        data = json.loads(side.read_text())
    except ValueError as e:
        raise ValueError(f"{side} is not valid JSON: {e}") from e
    if data.get("format") != ENGINE_FORMAT or "meta" not in data:
        raise ValueError(f"{side} is not a fastinst-rt engine sidecar")
    return data


def check_engine_compat(sidecar: dict, trt_version: str, gpu_name: str, compute_capability: str) -> None:
    """Refuse an engine built with another TensorRT version or for another GPU model (engines are not portable)."""
    built, here = sidecar.get("tensorrt", "?"), trt_version
    if parse_version(built)[:3] != parse_version(here)[:3]:
        raise EngineMismatchError(
            f"the engine was built with TensorRT {built} but this is TensorRT {here}; engines do not move between "
            "TensorRT versions: rebuild it here with `fastinst-rt build` from the ONNX file"
        )
    if sidecar.get("gpu") != gpu_name or sidecar.get("compute_capability") != compute_capability:
        raise EngineMismatchError(
            f"the engine was built for {sidecar.get('gpu')} (sm {sidecar.get('compute_capability')}) but this GPU is "
            f"{gpu_name} (sm {compute_capability}); build engines on the GPU model that runs them"
        )


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


def _device_index(device: str | None) -> int:
    dev = (device or "cuda").lower()
    if dev == "cpu":
        raise ValueError("TensorRT engines run on CUDA devices only; use the .onnx file for CPU")
    if not dev.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}; expected cuda or cuda:N")
    return int(dev.partition(":")[2] or 0)


class TensorRTBackend(Backend):
    """A fastinst-rt engine on TensorRT.

    Args:
        path: the ``.engine`` file (its ``.engine.json`` sidecar must be beside it).
        device: "cuda" or "cuda:N".
        cuda_graph: capture the enqueue of each input shape in a CUDA graph and replay it.
    """

    kind = "tensorrt"

    def __init__(self, path: str | os.PathLike, device: str | None = None, cuda_graph: bool = False) -> None:
        try:
            import tensorrt as trt
        except ImportError:
            raise ImportError("the TensorRT backend needs TensorRT: pip install 'fastinst-rt[trt]'") from None
        from . import cuda_rt

        self.path, self.cuda_graph, self._cuda = Path(path), cuda_graph, cuda_rt
        sidecar = read_sidecar(self.path)
        index = _device_index(device)
        cuda_rt.set_device(index)
        props = cuda_rt.device_properties(index)
        check_engine_compat(sidecar, trt.__version__, props["name"], props["compute_capability"])
        self.sidecar, self.meta, self.device = sidecar, sidecar["meta"], f"cuda:{index}"

        self._logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self._logger, "")  # the DCN plugin lives in the plugin library
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ValueError(f"TensorRT could not deserialize {self.path} (see the TensorRT log above)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self._stream = cuda_rt.Stream()
        self._buffers = self._allocate()
        self._graph, self._graph_shapes = None, None
        max_batch, fixed_batch = int(self.sidecar["max_batch"]), not self.sidecar.get("dynamic_batch", False)
        super().__init__(BackendInfo.from_export_metadata(self.meta, self.path.stem, max_batch, fixed_batch))

    def _allocate(self) -> dict:
        """One device buffer per tensor, sized for the profile's largest input shapes."""
        for name in self.inputs:
            shape = tuple(self.engine.get_tensor_shape(name))
            if -1 in shape:
                shape = tuple(self.engine.get_tensor_profile_shape(name, 0)[2])  # (min, opt, max)
            self.context.set_input_shape(name, shape)
        buffers = {}
        for name in self.inputs + self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            buffers[name] = self._cuda.DeviceBuffer(int(np.prod(shape)) * self._dtypes[name].itemsize)
            self.context.set_tensor_address(name, buffers[name].ptr)
        return buffers

    def _infer(self, batch: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]:
        fixed = self.info.fixed_size
        if fixed is not None and tuple(batch.shape[2:]) != tuple(fixed):
            raise ValueError(f"this engine takes a fixed {fixed[0]}x{fixed[1]} input, got {batch.shape[2:]}")
        return self._split_batches(batch, sizes, self._run)

    def _run(self, batch: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]:
        cuda, stream = self._cuda, self._stream
        feeds = {"images": batch, "sizes": sizes.astype(self._dtypes["sizes"])}
        shapes = {name: feeds[name].shape for name in self.inputs}
        for name in self.inputs:
            self.context.set_input_shape(name, shapes[name])
            cuda.memcpy_htod(self._buffers[name], feeds[name], stream)
        if not self.cuda_graph:
            self._enqueue()
        else:
            if self._graph_shapes != shapes:
                # TensorRT needs one regular enqueue after a shape change before the work can be captured.
                self._enqueue()
                if self._graph is not None:
                    self._graph.close()
                self._graph, self._graph_shapes = cuda.CudaGraph(stream, self._enqueue), shapes
            self._graph.replay()
        out = {}
        for name in self.outputs:
            host = np.empty(tuple(self.context.get_tensor_shape(name)), self._dtypes[name])
            cuda.memcpy_dtoh(host, self._buffers[name], stream)
            out[name] = host
        stream.synchronize()
        return {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in out.items()}

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self._stream.handle):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")

    def close(self) -> None:
        if self._graph is not None:
            self._graph.close()
        for buf in self._buffers.values():
            buf.close()
        self._buffers = {}
        self._stream.close()
        self.context = self.engine = None

    def describe(self) -> dict:
        d = super().describe()
        s = self.sidecar
        d.update(file=str(self.path), device=self.device, precision=s.get("precision"), tensorrt=s.get("tensorrt"),
                 gpu=s.get("gpu"), compute_capability=s.get("compute_capability"), profile=s.get("profile"),
                 outputs=self.meta.get("outputs"), max_det=self.meta.get("max_det"), cuda_graph=self.cuda_graph,
                 onnx=s.get("onnx"), onnx_sha256=s.get("onnx_sha256"))  # fmt: skip
        return d
