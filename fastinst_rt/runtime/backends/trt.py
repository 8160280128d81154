"""TensorRT backend: runs an engine built by ``fastinst-rt build``. Never imports torch.

Written against the API subset common to TensorRT 8.6 through 11.x: I/O by tensor name
(``num_io_tensors``/``get_tensor_name``/``get_tensor_mode``), ``set_input_shape``, ``set_tensor_address`` and
``execute_async_v3`` on an explicit stream; device buffers through cuda-python, sized once from the
optimization profile's largest shapes. An engine only runs on the TensorRT version and GPU model it was
built for: the JSON sidecar written beside it (``fastinst_rt.artifact.EngineSidecar``) records both. The sidecar is
read and validated first, so a forged or mismatched engine is refused with a clear message before TensorRT is
imported or asked to deserialize it. CI type-checks this file against the TensorRT 10.13 stubs; every call in it is
the same on 8.6, so none is probed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...artifact import INPUT_NAMES, ArtifactError, check_engine_compat, read_sidecar
from ..padding import padding_caveat
from .base import Backend, BackendInfo

__all__ = ["TensorRTBackend"]


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
        self.path, self.cuda_graph = Path(path), cuda_graph
        self.sidecar = read_sidecar(self.path)  # validated before anything is imported or allocated
        self.meta = self.sidecar.meta
        try:
            import tensorrt as trt

            from . import cuda_rt
        except ImportError as e:
            raise RuntimeError(
                f"{self.path}: running a TensorRT engine needs TensorRT and cuda-python on a CUDA machine "
                f"(pip install 'fastinst-rt[trt]'; {e}); on CPU, run the .onnx file it was built from"
            ) from None
        index = _device_index(device)
        cuda_rt.set_device(index)
        props = cuda_rt.device_properties(index)
        check_engine_compat(self.sidecar, trt.__version__, props["name"], props["compute_capability"])
        self.device = f"cuda:{index}"
        self._load_engine()
        fixed_batch = not self.sidecar.dynamic_batch
        super().__init__(BackendInfo.from_meta(self.meta, self.sidecar.max_batch, fixed_batch))

    def _load_engine(self) -> None:
        import tensorrt as trt

        from . import cuda_rt

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
        if set(self.inputs) != set(INPUT_NAMES) or set(self.outputs) != set(self.meta.output_names):
            raise ArtifactError(
                f"{self.path}: engine I/O {self.inputs} -> {self.outputs} is not that of a "
                f"{self.meta.outputs} export {self.meta.output_names}; rebuild it from a current export"
            )
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self._stream = cuda_rt.Stream()
        self._buffers = self._allocate()
        self._graph: cuda_rt.CudaGraph | None = None
        self._graph_shapes: dict[str, tuple[int, ...]] | None = None

    def _allocate(self) -> dict:
        """One device buffer per tensor, sized for the profile's largest input shapes."""
        from . import cuda_rt

        for name in self.inputs:
            shape = tuple(self.engine.get_tensor_shape(name))
            if -1 in shape:
                shape = tuple(self.engine.get_tensor_profile_shape(name, 0)[2])  # (min, opt, max)
            self.context.set_input_shape(name, shape)
        buffers = {}
        for name in self.inputs + self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            buffers[name] = cuda_rt.DeviceBuffer(int(np.prod(shape)) * self._dtypes[name].itemsize)
            self.context.set_tensor_address(name, buffers[name].ptr)
        return buffers

    def _run(self, batch: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]:
        from . import cuda_rt as cuda

        stream = self._stream
        feeds = {"images": batch, "sizes": sizes.astype(self._dtypes["sizes"])}
        shapes = {name: feeds[name].shape for name in self.inputs}
        for name in self.inputs:
            self.context.set_input_shape(name, shapes[name])
            cuda.memcpy_htod(self._buffers[name], feeds[name], stream)
        if not self.cuda_graph:
            self._enqueue()
        else:
            if self._graph is None or self._graph_shapes != shapes:
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

    def _release(self) -> None:
        if self._graph is not None:
            self._graph.close()
        for buf in self._buffers.values():
            buf.close()
        self._buffers = {}
        self._stream.close()
        self.context = self.engine = None  # type: ignore[assignment]  # released: the backend is closed

    def describe(self) -> dict:
        d = super().describe()
        s = self.sidecar
        d.update(file=str(self.path), device=self.device, precision=s.precision, tensorrt=s.tensorrt, gpu=s.gpu,
                 compute_capability=s.compute_capability, profile=s.profile, outputs=self.meta.outputs,
                 max_det=self.meta.max_det, cuda_graph=self.cuda_graph, onnx=s.build.get("onnx"),
                 onnx_sha256=s.build.get("onnx_sha256"))  # fmt: skip
        if self.meta.fixed_size is not None:  # what an image of another aspect ratio meets in a static engine
            d["padding"] = padding_caveat(self.meta)
        return d
