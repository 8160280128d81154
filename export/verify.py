"""Checks of an exported graph on ONNX Runtime before it is written, and the optional onnxslim pass.

* FP32 graphs compute what the torch wrapper computes: every output must agree to a relative error of 1e-3
  (values compared sorted, so that tied selection scores may permute queries) — ``verify_graph``.
* FP16 and INT8 graphs compute something else on purpose. They are judged on what a user gets: the final
  instances matched to the FP32 model's (``checks.compare_instances``: same label, mask IoU, score difference,
  top-k ranking, instance count) on the tracing example and on the shipped photo, and refused when they break
  ``checks.TOLERANCES`` — ``verify_reduced``; for FP16 also with the network run in float16 by PyTorch
  (``verify_half``): ONNX Runtime on x86 computes most float16 ops in float32 and cannot show their harm.
  Why not raw errors: on seeded random weights the query selection is a near tie (the 100th and 101st selection
  scores of ``fastinst-r101-d3`` at 640 differ by 4e-6), so float16 rounding swaps a few selected queries and the
  sorted raw outputs move while every instance a user sees stays put (benchmarks/README.md, result 5).
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import numpy as np
import onnx
import torch

from fastinst_rt.checkpoint import first_non_finite
from fastinst_rt.log import progress_logger

from .checks import Agreement, compare_instances, judge_agreement
from .deploy import DeployModel, select_pairs

__all__ = [
    "FP32_TOL", "simplify_graph", "run_onnx", "rel_sorted", "gate_inputs", "verify_graph", "verify_half",
    "verify_reduced", "judge_reduced", "judge_half",
]  # fmt: skip

FP32_TOL = 1e-3
# onnxslim's graph is kept when ONNX Runtime gives the same outputs as before, to this relative error.
SIMPLIFY_TOL = 1e-4
_PAIRS = ("scores", "labels", "masks")


_log = progress_logger(__name__)


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
        err = max(rel_sorted(a, b) for a, b in zip(run_onnx(slim, feeds), run_onnx(proto, feeds)))
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


def run_onnx(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """All outputs of ``proto`` on ONNX Runtime's CPU provider (its default optimizations)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def rel_sorted(a: np.ndarray, b: np.ndarray) -> float:
    """Relative L2 error of the sorted values (ties may permute queries or pairs; that is not an error)."""
    a, b = np.sort(np.asarray(a, np.float64), axis=None), np.sort(np.asarray(b, np.float64), axis=None)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def gate_inputs(
    example: tuple[torch.Tensor, torch.Tensor], fixed_size: tuple[int, int] | None, test_size: tuple[int, int]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The tracing example and the shipped photo pre-processed as the runtime does, as many times as the batch."""
    import fastinst_rt
    from fastinst_rt.runtime.preprocess import load_image, prepare

    batch = example[0].shape[0]
    photo = load_image(Path(fastinst_rt.__file__).parent / "assets" / "astronaut.jpg", "rgb")
    images, sizes, _ = prepare([photo] * batch, *test_size, 32, fixed_size)
    return [example, (torch.from_numpy(images), torch.from_numpy(sizes))]


def _finite(names: tuple[str, ...], outputs: list[np.ndarray]) -> None:
    bad = first_non_finite(zip(names, outputs))  # the check checkpoint loading makes of the weights
    if bad is not None:
        raise RuntimeError(f"ONNX Runtime output {bad} holds NaN/inf")


def verify_graph(
    proto: onnx.ModelProto, wrapper: DeployModel, images: torch.Tensor, sizes: torch.Tensor, progress: bool
) -> dict[str, float]:
    """ONNX Runtime against the FP32 torch wrapper on one batch (values compared sorted, see ``rel_sorted``);
    RuntimeError over ``FP32_TOL``. Returns each output's relative error."""
    try:
        got = run_onnx(proto, {"images": images.numpy(), "sizes": sizes.numpy()})
    except ImportError:
        _log(progress, "onnxruntime is not installed: skipping verification")
        return {}
    _finite(wrapper.output_names, got)
    with torch.no_grad():
        ref = [t.numpy() for t in wrapper(images, sizes)]
    errors = {n: rel_sorted(g, r) for n, g, r in zip(wrapper.output_names, got, ref) if n not in ("labels", "query")}
    _log(progress, "verified against torch: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    if max(errors.values()) > FP32_TOL:
        raise RuntimeError(f"ONNX Runtime disagrees with torch: {errors} (tolerance {FP32_TOL})")
    return errors


def _pairs(names: tuple[str, ...], outputs: list, max_det: int) -> dict[str, np.ndarray]:
    """scores/labels/masks of the selected pairs, from end-to-end outputs or computed from raw ones."""
    named = dict(zip(names, outputs))
    if "scores" not in named:
        logits, masks = (torch.as_tensor(np.asarray(named[k])) for k in ("pred_logits", "pred_masks"))
        named = dict(zip(("scores", "labels", "masks"), (t.numpy() for t in select_pairs(logits, masks, max_det))))
    return {k: np.asarray(named[k]) for k in _PAIRS}


def _judge(
    engine: str, precision: str, names: tuple[str, ...], ref: list, got: list, max_det: int, progress: bool
) -> tuple[Agreement, list[str]]:
    _finite(names, got)
    raw = {n: rel_sorted(g, r) for n, g, r in zip(names, got, ref) if n not in ("labels", "query")}
    agreement = compare_instances(_pairs(names, ref, max_det), _pairs(names, got, max_det))
    tolerance = f"{precision}-graph" if engine == "ONNX Runtime" and precision == "fp16" else precision
    _log(progress, f"{precision} ({engine}) vs FP32: matched {agreement.matched:.0%} of the top-{agreement.top_k}, "
                   f"mask IoU {agreement.mask_iou:.3f}, score diff {agreement.score_diff:.1e}, rank misses "
                   f"{agreement.rank_misses}, count {agreement.count}+-{agreement.count_diff} (raw relative: "
                   + ", ".join(f"{k} {v:.1e}" for k, v in raw.items()) + ")")  # fmt: skip
    return agreement, [f"{engine}: {p}" for p in judge_agreement(agreement, tolerance)]


def _refuse(precision: str, problems: list[str]) -> None:
    if problems:
        raise RuntimeError(f"the {precision} graph loses accuracy against FP32: " + "; ".join(dict.fromkeys(problems)))


def verify_half(
    reference: DeployModel, half: DeployModel, images: torch.Tensor, sizes: torch.Tensor, progress: bool
) -> Agreement:
    """The FP16-mixed torch wrapper (float16 arithmetic) against the FP32 one; RuntimeError past the tolerance.

    ONNX Runtime on x86 has no float16 kernels for most ops and computes them in float32 (measured: norms forced
    to float16 give the shipped graph's instances there), so it cannot show what float16 arithmetic costs on a GPU;
    PyTorch runs the network the graph was traced from in float16.
    """
    agreement, problems = judge_half(reference, half, images, sizes, progress)
    _refuse("fp16", problems)
    return agreement


def judge_half(
    reference: DeployModel, half: DeployModel, images: torch.Tensor, sizes: torch.Tensor, progress: bool
) -> tuple[Agreement, list[str]]:
    """``verify_half`` without the refusal: the agreement and every broken tolerance (empty: it passes)."""
    with torch.no_grad():
        ref = [t.numpy() for t in reference(images, sizes)]
        got = [t.float().numpy() for t in half(images, sizes)]
    return _judge("PyTorch float16", "fp16", reference.output_names, ref, got, reference.max_det, progress)


def verify_reduced(
    proto: onnx.ModelProto,
    reference: DeployModel,
    inputs: list[tuple[torch.Tensor, torch.Tensor]],
    precision: str,
    progress: bool,
) -> Agreement:
    """The FP16/INT8 graph on ONNX Runtime against the FP32 torch wrapper on each input batch (the worst returned).

    Raises RuntimeError naming every broken tolerance of ``checks.TOLERANCES[precision]``.
    """
    worst, problems = judge_reduced(proto, reference, inputs, precision, progress)
    _refuse(precision, problems)
    return worst


def judge_reduced(
    proto: onnx.ModelProto, reference: DeployModel, inputs: list[tuple[torch.Tensor, torch.Tensor]], precision: str,
    progress: bool,
) -> tuple[Agreement, list[str]]:  # fmt: skip
    """``verify_reduced`` without the refusal: the worst agreement and every broken tolerance (empty: it passes)."""
    worst, problems = None, []
    for images, sizes in inputs:
        with torch.no_grad():
            ref = [t.numpy() for t in reference(images, sizes)]
        got = run_onnx(proto, {"images": images.numpy(), "sizes": sizes.numpy()})
        agreement, broken = _judge("ONNX Runtime", precision, reference.output_names, ref, got, reference.max_det,
                                   progress)  # fmt: skip
        problems += broken
        if worst is None or agreement.matched < worst.matched or agreement.score_diff > worst.score_diff:
            worst = agreement
    assert worst is not None
    return worst, list(dict.fromkeys(problems))
