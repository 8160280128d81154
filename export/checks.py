"""Lint an exported FastInst ONNX graph for what TensorRT and ONNX Runtime need; used by export and by the tests.

``check_graph`` returns a list of problems (empty when the graph is fine): data-dependent ops, a wrong opset, a DCN
node the opset cannot carry, unknown custom ops, a non-constant TopK k, dynamic dimensions in a fixed-size graph,
and in an FP16 graph the float16 hazards (half-precision I/O, normalizations or softmaxes in float16, constants
that overflow float16). Needs only ``onnx`` and numpy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["check_graph", "BANNED_OPS", "PLUGIN_OPS", "graph_opset"]

# Ops whose output shape depends on tensor values, or control flow: TensorRT either rejects them or builds slow,
# data-dependent engines, and FastInst needs none of them (masked attention is an additive bias, top-k is TopK).
BANNED_OPS = frozenset(
    {"NonZero", "ScatterND", "ScatterElements", "Scatter", "Loop", "If", "Scan", "Compress", "Unique",
     "SequenceConstruct", "SequenceAt", "SequenceInsert", "SplitToSequence", "ConcatFromSequence"}
)  # fmt: skip
# Custom-domain nodes that an export may contain on purpose: TensorRT's built-in DCN plugin (matched by op name;
# TensorRT's parser ignores the domain).
PLUGIN_OPS = frozenset({"ModulatedDeformConv2d"})
# Ops that must see float32 in the FP16-mixed graph (statistics and exponentials).
_FP32_OPS = frozenset(
    {"Softmax", "LayerNormalization", "InstanceNormalization", "GroupNormalization", "ReduceMean", "TopK"}
)
# Ops whose outputs are shape-derived when all their inputs are (shape arithmetic, not data).
_SHAPE_SOURCES = frozenset({"Shape", "Size", "Constant"})
_FP16_MAX = 65504.0
_MAX_IR = 10  # what ONNX Runtime 1.16+ and the TensorRT 8.6+ parsers read


def graph_opset(model: onnx.ModelProto) -> int | None:
    """The default-domain (ai.onnx) opset a model declares."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def check_graph(
    model: str | os.PathLike | onnx.ModelProto, *, opset: int | None = None, fixed: bool | None = None
) -> list[str]:
    """Problems of an exported graph, one sentence each; empty when it is fine.

    Args:
        model: a path or a loaded ``ModelProto``.
        opset: the default-domain opset the graph must declare (default: the one in its metadata, if any).
        fixed: whether every input/output dimension must be static (default: from its metadata).
    """
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model), load_external_data=False)
    meta = _metadata(model)
    opset = opset if opset is not None else meta.get("opset")
    fixed = fixed if fixed is not None else (meta.get("fixed_size") is not None if meta else None)
    graph = model.graph
    problems: list[str] = []

    declared = graph_opset(model)
    if opset is not None and declared != opset:
        problems.append(f"declares opset {declared}, expected {opset}")
    if model.ir_version > _MAX_IR:
        problems.append(f"IR version {model.ir_version} > {_MAX_IR}: older ONNX Runtime/TensorRT cannot read it")
    domains = {o.domain for o in model.opset_import}
    for node in _all_nodes(graph):
        if node.op_type in BANNED_OPS:
            problems.append(f"banned op {node.op_type} ({node.name or 'unnamed'})")
        if node.domain not in ("", "ai.onnx") and node.op_type not in PLUGIN_OPS:
            problems.append(f"unknown custom op {node.domain}::{node.op_type}")
        if node.op_type == "DeformConv" and declared is not None and declared < 19:
            problems.append(f"DeformConv needs opset >= 19, the graph declares {declared}")
        if node.domain and node.domain not in domains:
            problems.append(f"node {node.name} uses domain {node.domain!r} missing from opset_import")
    problems += _range_on_data(graph)
    problems += _topk_constant(graph)
    if fixed:
        for vi in list(graph.input) + list(graph.output):
            dims = _dims(vi)
            if dims is None or any(not isinstance(d, int) for d in dims):
                problems.append(f"fixed-size graph has a dynamic dimension in {vi.name}: {dims}")
    for vi in graph.output:
        if _dims(vi) is None:
            problems.append(f"output {vi.name} has no shape")
    problems += _fp16_problems(model, precision=meta.get("precision"))
    return problems


def _metadata(model: onnx.ModelProto) -> dict:
    out = {}
    for p in model.metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except ValueError:
            out[p.key] = p.value
    return out


def _all_nodes(graph: onnx.GraphProto) -> Iterable[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:  # subgraphs of control-flow ops (themselves banned, but lint inside too)
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _all_nodes(sub)


def _dims(vi: onnx.ValueInfoProto) -> list[int | str] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]


def _shape_derived(graph: onnx.GraphProto) -> set[str]:
    """Names of tensors computed from shapes and constants only (graph inputs and their data excluded)."""
    known = {
        init.name for init in graph.initializer if init.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
    }
    known |= {init.name for init in graph.initializer if np.prod(init.dims, dtype=np.int64) <= 1}
    known.add("")  # an omitted optional input
    for node in graph.node:  # nodes are topologically sorted in a valid graph
        if node.op_type in _SHAPE_SOURCES or all(i in known for i in node.input):
            known.update(node.output)
    return known


def _range_on_data(graph: onnx.GraphProto) -> list[str]:
    known = _shape_derived(graph)
    return [
        f"Range on data ({node.name or 'unnamed'}): its bounds come from tensor values, not shapes"
        for node in graph.node
        if node.op_type == "Range" and not all(i in known for i in node.input)
    ]


def _topk_constant(graph: onnx.GraphProto) -> list[str]:
    # TensorRT (8.5 and earlier in particular) needs K as an initializer/constant; 10.x caps it at 3840.
    consts = {init.name: init for init in graph.initializer}
    consts.update({n.output[0]: n.attribute[0].t for n in graph.node if n.op_type == "Constant" and n.attribute})
    problems = []
    for node in graph.node:
        if node.op_type != "TopK":
            continue
        k = node.input[1] if len(node.input) > 1 else ""
        if k not in consts:
            problems.append(f"TopK {node.name or 'unnamed'} has a computed k; TensorRT needs a constant")
        elif int(numpy_helper.to_array(consts[k]).reshape(-1)[0]) > 3840:
            problems.append(f"TopK {node.name or 'unnamed'} k > 3840, over TensorRT's limit")
    return problems


def _fp16_problems(model: onnx.ModelProto, precision: str | None) -> list[str]:
    graph = model.graph
    half = onnx.TensorProto.FLOAT16
    uses_half = (
        precision == "fp16"
        or any(i.data_type == half for i in graph.initializer)
        or any(vi.type.tensor_type.elem_type == half for vi in list(graph.input) + list(graph.output))
        or any(n.op_type == "Cast" and _cast_to(n) == half for n in graph.node)
    )
    if not uses_half:
        return []
    problems = []
    for vi in list(graph.input) + list(graph.output):
        if vi.type.tensor_type.elem_type == half:
            problems.append(f"FP16 graph exposes a float16 {vi.name}; inputs/outputs must stay uint8/int64/float32")
    for init in graph.initializer:
        if init.data_type == half:
            values = numpy_helper.to_array(init)
            if not np.isfinite(values).all():
                problems.append(f"float16 initializer {init.name} holds inf/nan")
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].t.data_type == half:
            if not np.isfinite(numpy_helper.to_array(node.attribute[0].t)).all():
                problems.append(f"float16 constant {node.output[0]} holds inf/nan")
    types = _value_types(model)
    for node in graph.node:
        if node.op_type in _FP32_OPS and node.input and types.get(node.input[0]) == half:
            problems.append(f"{node.op_type} {node.name or 'unnamed'} runs in float16 (keep it float32)")
        if node.op_type == "Cast" and _cast_to(node) == half:
            src = _constant_value(graph, node.input[0])
            if src is not None and np.abs(src[np.isfinite(src)]).max(initial=0.0) > _FP16_MAX:
                problems.append(f"Cast {node.name or 'unnamed'} turns a constant beyond +-65504 into float16 inf")
    return problems


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - custom ops can stop inference; lint with what is known
        inferred = model
    g = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.value_info) + list(g.input) + list(g.output)}
    types.update({init.name: init.data_type for init in g.initializer})
    return types


def _cast_to(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init).astype(np.float64)
    for node in graph.node:
        if (
            node.op_type == "Constant"
            and node.output[0] == name
            and node.attribute
            and node.attribute[0].name == "value"
        ):
            return numpy_helper.to_array(node.attribute[0].t).astype(np.float64)
    return None
