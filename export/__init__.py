"""The export toolchain: the deploy wrapper, ONNX export and graph checks; the TensorRT builder is ``trt_build``.

Needs torch, onnx and onnxscript (the ``onnx`` extra); onnxslim is optional.
"""

from __future__ import annotations

from .checks import check_graph
from .deploy import DeployModel, make_exportable
from .onnx_export import export_onnx

__all__ = ["DeployModel", "make_exportable", "export_onnx", "check_graph"]
