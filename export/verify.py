"""Checks of an exported graph against the torch wrapper on ONNX Runtime, and the optional onnxslim pass."""

from __future__ import annotations

import contextlib
import io
import sys

import numpy as np
import onnx
import torch

from .deploy import DeployModel

__all__ = ["VERIFY_TOL", "simplify_graph", "verify_graph"]

# Verification tolerance (relative L2 of sorted outputs) between the torch wrapper and ONNX Runtime. FP16 is gated
# on the class outputs only: its mask logits move with float16 rounding (measured 1e-2..5e-2 on random
# full-size weights), which is reported, not refused.
VERIFY_TOL = {"fp32": 1e-3, "fp16": 5e-2}
_FP16_GATED = ("scores", "pred_logits")


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"[fastinst-rt export] {msg}", file=sys.stderr, flush=True)


def simplify_graph(proto: onnx.ModelProto, feeds: dict | None, tol: float, progress: bool) -> onnx.ModelProto:
    """onnxslim's graph if it computes the same outputs on ``feeds`` (ONNX Runtime; skipped when None)."""
    try:
        import onnxslim
    except ImportError:
        _log(progress, "onnxslim is not installed: skipping simplification")
        return proto
    before = len(proto.graph.node)
    with contextlib.redirect_stdout(sys.stderr if progress else io.StringIO()):
        slim = onnxslim.slim(proto)
    if slim is None:
        return proto
    # onnxslim may rewrite I/O shapes from its own inference; the contract's shapes are kept.
    _copy_io_shapes(proto, slim)
    if feeds is not None:
        err = max(_rel_sorted(a, b) for a, b in zip(_run(slim, feeds), _run(proto, feeds)))
        if err > tol:
            _log(progress, f"simplified graph differs from the exported one (rel {err:.1e}): keeping the original")
            return proto
    _log(progress, f"simplified with onnxslim: {before} -> {len(slim.graph.node)} nodes")
    return slim


def _copy_io_shapes(src: onnx.ModelProto, dst: onnx.ModelProto) -> None:
    by_name = {vi.name: vi for vi in list(src.graph.input) + list(src.graph.output)}
    for vi in list(dst.graph.input) + list(dst.graph.output):
        if vi.name in by_name:
            vi.type.CopyFrom(by_name[vi.name].type)


def _run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _rel_sorted(a: np.ndarray, b: np.ndarray) -> float:
    # Relative L2 error of the sorted values: queries or pairs whose selection scores tie may come out of top-k in
    # another order (ties are broken differently by each implementation); that is not an error.
    a, b = np.sort(np.asarray(a, np.float64), axis=None), np.sort(np.asarray(b, np.float64), axis=None)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def verify_graph(
    proto: onnx.ModelProto,
    wrapper: DeployModel,
    images: torch.Tensor,
    sizes: torch.Tensor,
    precision: str,
    progress: bool,
) -> None:
    """ONNX Runtime against the torch wrapper on the example batch (values compared sorted, see ``_rel_sorted``)."""
    try:
        got = _run(proto, {"images": images.numpy(), "sizes": sizes.numpy()})
    except ImportError:
        _log(progress, "onnxruntime is not installed: skipping verification")
        return
    with torch.no_grad():
        ref = [t.numpy() for t in wrapper(images, sizes)]
    errors = {}
    for name, g, r in zip(wrapper.output_names, got, ref):
        if not np.isfinite(g).all():
            raise RuntimeError(f"ONNX Runtime output {name} holds NaN/inf")
        if name not in ("labels", "query"):  # indices: ties may swap them, their scores are compared
            errors[name] = _rel_sorted(g, r)
    gated = [v for k, v in errors.items() if precision == "fp32" or k in _FP16_GATED]
    _log(progress, "verified against torch: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    if max(gated) > VERIFY_TOL[precision]:
        raise RuntimeError(f"ONNX Runtime disagrees with torch: {errors} (tolerance {VERIFY_TOL[precision]})")
