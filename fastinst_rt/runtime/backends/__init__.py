"""Backends by file type. Imports are lazy so that the ONNX Runtime and TensorRT paths never import torch."""

from __future__ import annotations

import os
from pathlib import Path

from .base import PAIR_KEYS, RAW_KEYS, Backend, BackendInfo

__all__ = ["Backend", "BackendInfo", "PAIR_KEYS", "RAW_KEYS", "open_backend", "backend_for", "SUFFIXES"]

# Model file suffix -> the backend that opens it by default (``backend_for``); anything else is a zoo name.
SUFFIXES: dict[str, str] = {
    ".pth": "torch",
    ".pt": "torch",
    ".safetensors": "torch",
    ".onnx": "onnxruntime",
    ".engine": "tensorrt",
    ".plan": "tensorrt",
}
BACKENDS = ("torch", "onnxruntime", "tensorrt")


def backend_for(model: str | os.PathLike) -> str:
    """The default backend of a model file (by suffix) or zoo name (torch)."""
    suffix = Path(model).suffix.lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    if suffix and Path(model).exists():
        raise ValueError(f"{model}: unknown model file type {suffix!r}; expected one of {', '.join(SUFFIXES)}")
    return "torch"  # a zoo name; resolved (or refused) by the checkpoint loader


def open_backend(
    model: str | os.PathLike,
    backend: str | None = None,
    device: str | None = None,
    half: bool = False,
    cuda_graph: bool = False,
) -> Backend:
    """Load ``model`` on ``backend`` (default from the file type).

    ``half`` (torch on CUDA) and ``cuda_graph`` (torch and TensorRT on CUDA) are refused where they do not apply.
    """
    backend = backend or backend_for(model)
    if backend == "torch":
        from .pytorch import TorchBackend

        return TorchBackend(model, device=device, half=half, cuda_graph=cuda_graph)
    if cuda_graph and backend == "onnxruntime":
        raise ValueError("CUDA graphs are offered by the torch and tensorrt backends, not onnxruntime")
    if backend == "onnxruntime":
        if half:
            raise ValueError("an ONNX model's precision is fixed at export: export it with --fp16 instead of half=True")
        from .ort import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model, device=device)
    if backend == "tensorrt":
        if half:
            raise ValueError("an engine's precision is fixed when it is built: build it from an --fp16 export")
        from .trt import TensorRTBackend

        return TensorRTBackend(model, device=device, cuda_graph=cuda_graph)
    raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
