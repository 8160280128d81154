"""The INT8 step of an export: the verified FP32 graph quantized, judged against FP32, with a fallback and a cache.

A graph that breaks the INT8 tolerances is made again with one more region of convolutions left in float32
(``quantize.conv_regions``), the one whose fallback breaks the fewest tolerances with the smallest mean score
difference, up to ``INT8_FALLBACK_REGIONS`` regions; then it is refused, saying what to change. Which regions a
model's weights need in float is a property of those weights: a fine-tuned bundled model needed one where its parent
needed none (benchmarks/README.md, result 11). The ranges are calibrated once for all the tries.

With a calibration cache (``export.calibration_cache``) the ranges and the regions are kept: an export with images
writes them, and one without images rebuilds the same graph from them (judged on what it has: the tracing example).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import torch

from fastinst_rt.log import progress_logger
from fastinst_rt.modeling.fastinst import SIZE_DIVISIBILITY

from . import calibration_cache, quantize
from .checks import check_graph
from .verify import judge_reduced

if TYPE_CHECKING:
    from .deploy import DeployModel
    from .onnx_export import ExportPlan

__all__ = ["INT8_JUDGED", "INT8_FALLBACK_REGIONS", "Calibration", "quantize_within_gate"]

INT8_JUDGED = 4  # images beyond the calibration ones that judge an INT8 graph
INT8_FALLBACK_REGIONS = 2  # regions an INT8 graph may leave in float32 to pass its gate

_log = progress_logger(__name__)


@dataclass(frozen=True)
class Calibration:
    """Where an INT8 graph's ranges come from: ``files[:n]`` calibrate, the rest judge; or ``cache`` alone."""

    files: list[Path]
    n: int
    method: str
    cache: Path | None = None


def _judged_inputs(example: tuple, plan: ExportPlan, calib: Calibration) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The tracing example and the images after the calibration ones (else the last calibration images)."""
    from fastinst_rt.runtime.preprocess import load_image, prepare

    inputs = [example]
    for path in calib.files[calib.n :] or calib.files[-INT8_JUDGED:]:
        batch, sizes, _ = prepare([load_image(path, "rgb")] * example[0].shape[0], *plan.test_size,
                                  SIZE_DIVISIBILITY, None if plan.dynamic else plan.size)  # fmt: skip
        inputs.append((torch.from_numpy(batch), torch.from_numpy(sizes)))
    return inputs


def quantize_within_gate(
    proto: onnx.ModelProto, wrapper: DeployModel, example: tuple, plan: ExportPlan, calib: Calibration
) -> onnx.ModelProto:
    """The verified FP32 graph as INT8 Q/DQ that passes the INT8 gate, linted; RuntimeError when none does."""
    inputs = _judged_inputs(example, plan, calib)
    graph_sha = calibration_cache.graph_sha256(proto.SerializeToString())
    with tempfile.TemporaryDirectory() as tmp, quantize.quiet_repeats():
        ranges = Path(tmp, "ranges.json")
        if not calib.files:  # rebuild from the cache: its ranges and its regions, no search
            cache = calibration_cache.read_cache(calib.cache, graph_sha, quantize.CALIB_METHODS)
            cache.write_ranges(ranges)
            _log(plan.progress, f"int8 from {calib.cache.name} ({cache.method}, {cache.images} images)")
            search = _Search(proto, wrapper, inputs, cache.method, ranges, cache.images, plan)
            return search.finish(*search.attempt(cache.float32_regions, plan.progress)[:3])
        files = calib.files[: calib.n]
        quantize.calibrate(proto, files, ranges, calib.method, progress=plan.progress)
        search = _Search(proto, wrapper, inputs, calib.method, ranges, len(files), plan)
        graph, problems, kept = search.run()
        graph = search.finish(graph, problems, kept)
        if calib.cache is not None:
            calibration_cache.write_cache(calib.cache, ranges, graph_sha, calib.method, len(files), kept)
            _log(plan.progress, f"wrote the calibration cache {calib.cache}")
        return graph


_Try = tuple[onnx.ModelProto, list[str], tuple[str, ...], float]  # graph, broken tolerances, regions, mean diff


class _Search:
    """The INT8 graphs of one FP32 graph and one set of ranges, with regions left in float32, and their judgement."""

    def __init__(self, proto: onnx.ModelProto, wrapper: DeployModel, inputs: list, method: str, ranges: Path,
                 images: int, plan: ExportPlan) -> None:  # fmt: skip
        self.proto, self.wrapper, self.inputs, self.method = proto, wrapper, inputs, method
        self.ranges, self.images, self.plan = ranges, images, plan
        self.regions = quantize.conv_regions(proto)

    def attempt(
        self, kept: tuple[str, ...], progress: bool
    ) -> tuple[onnx.ModelProto, list[str], tuple[str, ...], float]:
        """The graph with ``kept`` regions in float32, the tolerances it breaks and its mean score difference."""
        unknown = [r for r in kept if r not in self.regions]
        if unknown:
            raise ValueError(f"the calibration cache names regions this graph does not have: {unknown}")
        nodes = quantize.quantizable_nodes(self.proto, keep_float=[c for r in kept for c in self.regions[r]])
        graph = quantize.quantize_onnx(self.proto, [], method=self.method, nodes=nodes, float_regions=kept,
                                       ranges=self.ranges, images=self.images, progress=progress)  # fmt: skip
        agreement, problems = judge_reduced(graph, self.wrapper, self.inputs, "int8", progress)
        if kept:
            _log(self.plan.progress, f"int8 with {', '.join(kept)} in float32 ({len(nodes)} nodes quantized): mean "
                                     f"score diff {agreement.mean_score_diff:.3f}, {len(problems)} broken")  # fmt: skip
        return graph, problems, kept, agreement.mean_score_diff

    def run(self) -> tuple[onnx.ModelProto, list[str], tuple[str, ...]]:
        """The graph with the fewest regions left in float32 that passes, or the best try and what it breaks."""
        graph, problems, kept, _ = self.attempt((), self.plan.progress)
        while problems and len(kept) < min(INT8_FALLBACK_REGIONS, len(self.regions)):
            _log(self.plan.progress, "int8 breaks its tolerances (" + "; ".join(problems) + "): trying each region "
                                     "in float32")  # fmt: skip
            tries = [self.attempt((*kept, r), False) for r in self.regions if r not in kept]
            graph, problems, kept, _ = min(tries, key=lambda t: (len(t[1]), t[3]))
        return graph, problems, kept

    def finish(self, graph: onnx.ModelProto, problems: list[str], kept: tuple[str, ...]) -> onnx.ModelProto:
        """``graph`` if it passed and lints clean; else RuntimeError saying what was tried and what to change."""
        if problems:
            also = f"; also with {', '.join(kept)} left in float32" if kept else ""
            advice = (f"What to change: calibrate on more images like those the model will see ({self.images} "
                      "used: --calib DIR, --calib-images N), try --calib-method entropy, or export --fp16")  # fmt: skip
            raise RuntimeError("the int8 graph loses accuracy against FP32: " + "; ".join(problems) + also + ". "
                               + advice)  # fmt: skip
        if kept:
            _log(self.plan.progress, f"int8: {', '.join(kept)} left in float32 to pass the gate")
        lint = check_graph(graph, opset=self.plan.opset, fixed=not self.plan.dynamic)
        if lint:
            raise RuntimeError("the INT8 graph is not deployable:\n  " + "\n  ".join(lint))
        return graph
