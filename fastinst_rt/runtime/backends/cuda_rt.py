"""The few CUDA runtime calls the TensorRT backend needs, through NVIDIA's cuda-python (no torch, no pycuda).

cuda-python moved its modules in 12.6 (``cuda.bindings.runtime``; the old ``cuda.cudart`` still works for
a while); both are accepted. The TensorRT backend and builder import this module on first use, so it imports
cuda-python at once. Every call returns ``(error, *values)``; ``_check`` turns an error into an
exception that names the call.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

__all__ = ["CudaError", "cudart", "device_properties", "DeviceBuffer", "Stream", "memcpy_htod", "memcpy_dtoh"]


class CudaError(RuntimeError):
    """A CUDA runtime call failed."""


try:
    from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
except ImportError:
    try:
        # cuda-python < 12.6: the same functions under the old name (the type stubs describe only the new one).
        from cuda import cudart  # type: ignore[attr-defined, no-redef]
    except ImportError as e:
        raise ImportError("the TensorRT backend needs cuda-python: pip install 'fastinst-rt[trt]'") from e


def _check(result: tuple, call: str) -> Any:
    err, *values = result
    if int(err) != 0:
        name = cudart.cudaGetErrorName(err)[1]
        raise CudaError(f"{call} failed: {name.decode() if isinstance(name, bytes) else name}")
    return values[0] if len(values) == 1 else tuple(values)


def device_properties(device: int = 0) -> dict:
    """{"name", "compute_capability": "8.6", "total_memory_mb"} of a CUDA device."""
    count = _check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    if device >= count:
        raise CudaError(f"CUDA device {device} requested but {count} device(s) are visible")
    props = _check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"name": name.rstrip("\x00"), "compute_capability": f"{props.major}.{props.minor}",
            "total_memory_mb": int(props.totalGlobalMem) // 2**20}  # fmt: skip


def set_device(device: int) -> None:
    _check(cudart.cudaSetDevice(device), "cudaSetDevice")


class Stream:
    """A non-default CUDA stream (TensorRT's ``execute_async_v3`` should not run on the legacy default stream)."""

    def __init__(self) -> None:
        self.handle = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")

    def synchronize(self) -> None:
        _check(cudart.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.handle is not None:
            cudart.cudaStreamDestroy(self.handle)
            self.handle = None


class DeviceBuffer:
    """``nbytes`` of device memory; ``ptr`` is the integer address TensorRT's ``set_tensor_address`` takes."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(_check(cudart.cudaMalloc(self.nbytes), "cudaMalloc"))

    def close(self) -> None:
        if self.ptr:
            cudart.cudaFree(self.ptr)
            self.ptr = 0


def memcpy_htod(dst: DeviceBuffer, src: np.ndarray, stream: Stream) -> None:
    """Copy a C-contiguous host array into ``dst`` asynchronously on ``stream``."""
    src = np.ascontiguousarray(src)
    if src.nbytes > dst.nbytes:
        raise ValueError(f"{src.nbytes} bytes do not fit a {dst.nbytes}-byte device buffer")
    kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
    _check(cudart.cudaMemcpyAsync(dst.ptr, src.ctypes.data, src.nbytes, kind, stream.handle), "cudaMemcpyAsync")


def memcpy_dtoh(dst: np.ndarray, src: DeviceBuffer, stream: Stream) -> None:
    """Copy the first ``dst.nbytes`` of ``src`` into the C-contiguous host array ``dst`` on ``stream``."""
    kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    _check(cudart.cudaMemcpyAsync(dst.ctypes.data, src.ptr, dst.nbytes, kind, stream.handle), "cudaMemcpyAsync")


class CudaGraph:
    """Capture whatever ``launch()`` enqueues on ``stream`` once, then replay it with one launch."""

    def __init__(self, stream: Stream, launch: Callable[[], None]) -> None:
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
        _check(cudart.cudaStreamBeginCapture(stream.handle, mode), "cudaStreamBeginCapture")
        try:
            launch()
        finally:
            graph = _check(cudart.cudaStreamEndCapture(stream.handle), "cudaStreamEndCapture")
        self.graph = graph
        self.exec = _check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        self.stream = stream

    def replay(self) -> None:
        _check(cudart.cudaGraphLaunch(self.exec, self.stream.handle), "cudaGraphLaunch")

    def close(self) -> None:
        cudart.cudaGraphExecDestroy(self.exec)
        cudart.cudaGraphDestroy(self.graph)
