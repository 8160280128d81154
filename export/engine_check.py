"""A built artifact judged against the ONNX it came from: both run on the same real images, instances compared.

FP16 engines that silently lose masks are a recurring complaint of TensorRT users (low confidences, empty masks). A
builder that succeeds says nothing about that, so ``fastinst-rt build --verify`` and ``fastinst-rt verify`` run the
engine and the ONNX graph on the same pre-processed images and judge them as the FP16/INT8 export gates judge a
reduced-precision graph: the top query x class pairs matched by label and mask IoU, their scores, ranks and counts,
within ``checks.TOLERANCES`` (``checks.compare_instances``, ``checks.judge_agreement``).

Polygraphy runs both: its ``Comparator.run`` feeds one data loader to a TensorRT runner and an ONNX Runtime runner and
collects their outputs, the way NVIDIA's own ``polygraphy run --trt --onnxrt`` does. Its element-wise output
comparison is not used: an engine may reorder near-tied pairs or move a mask's edge by a pixel and still give the same
instances, and an element-wise bound tight enough to catch a lost mask refuses those (benchmarks/README.md, result 5,
measured the same for the FP16 export gate). The candidate may also be another ONNX file (two ONNX Runtime runners),
which is how this is tested without TensorRT.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastinst_rt.artifact import ArtifactMeta, read_sidecar
from fastinst_rt.runtime.postprocess import select_pairs

from .checks import Agreement, compare_instances, judge_agreement

__all__ = ["verify_artifact", "judge_outputs"]

ENGINE_SUFFIXES = (".engine", ".plan")


def _meta(path: Path) -> ArtifactMeta:
    if path.suffix.lower() in ENGINE_SUFFIXES:
        return read_sidecar(path).meta
    import onnx

    from fastinst_rt.artifact import read_onnx_meta

    return read_onnx_meta(onnx.load(str(path), load_external_data=False), path)


def _runner(path: Path, name: str) -> Any:
    """A Polygraphy runner for an ONNX file (ONNX Runtime, CPU) or a TensorRT engine (needs TensorRT)."""
    if path.suffix.lower() in ENGINE_SUFFIXES:
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        return TrtRunner(EngineFromBytes(BytesFromPath(str(path))), name=name)
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    return OnnxrtRunner(SessionFromOnnx(str(path), providers=["CPUExecutionProvider"]), name=name)


def _feeds(images: Sequence[str | os.PathLike], meta: ArtifactMeta) -> list[dict[str, np.ndarray]]:
    """One graph feed per image, pre-processed exactly as the runtime does for ``meta``: images (1, 3, H, W) uint8,
    sizes (1, 2) int64."""
    from fastinst_rt.runtime.preprocess import load_image, prepare

    feeds = []
    for path in images:
        batch, sizes, _ = prepare([load_image(path, "rgb")], *meta.test_size, meta.size_divisibility, meta.fixed_size)
        feeds.append({"images": np.repeat(batch, meta.batch or 1, 0), "sizes": np.repeat(sizes, meta.batch or 1, 0)})
    return feeds


def _pairs(outputs: Any, meta: ArtifactMeta) -> dict[str, np.ndarray]:
    """The end-to-end pairs (scores, labels, masks) of one run's outputs; raw graphs go through ``select_pairs``."""
    if meta.outputs == "raw":
        return select_pairs(np.asarray(outputs["pred_logits"]), np.asarray(outputs["pred_masks"]))
    return {k: np.asarray(outputs[k]) for k in ("scores", "labels", "masks")}


def judge_outputs(
    reference: Sequence[dict[str, np.ndarray]], candidate: Sequence[dict[str, np.ndarray]], precision: str
) -> tuple[Agreement, list[str]]:
    """The worst agreement over images of two runs' end-to-end pairs, and the tolerances it breaks (empty: passes)."""
    merged = {k: np.concatenate([r[k] for r in reference]) for k in ("scores", "labels", "masks")}
    other = {k: np.concatenate([c[k] for c in candidate]) for k in ("scores", "labels", "masks")}
    agreement = compare_instances(merged, other)
    return agreement, judge_agreement(agreement, precision)


def tolerance_key(reference: ArtifactMeta, candidate: ArtifactMeta) -> str:
    """Which ``checks.TOLERANCES`` apply: INT8's where either side is INT8, else the FP16 graph's (TensorRT may pick
    FP16 or TF32 kernels for an FP32 graph built with ``--fp16``, and reorders float32 sums in any case)."""
    return "int8" if "int8" in (reference.precision, candidate.precision) else "fp16-graph"


def verify_artifact(
    candidate: str | os.PathLike, reference: str | os.PathLike, images: Sequence[str | os.PathLike]
) -> tuple[Agreement, list[str]]:
    """Run ``candidate`` (an engine or ONNX file) and ``reference`` (the ONNX it came from) on ``images`` and judge
    the candidate's final instances against the reference's.

    Returns:
        The worst ``Agreement`` over the images and the tolerances it breaks (empty when the candidate passes).
    Raises:
        ValueError: the two files are not the same model (input size, outputs, classes) or no image is given.
    """
    candidate, reference = Path(candidate), Path(reference)
    meta_c, meta_r = _meta(candidate), _meta(reference)
    for field in ("class_names", "outputs", "fixed_size", "test_size"):
        if getattr(meta_c, field) != getattr(meta_r, field):
            raise ValueError(f"{candidate.name} and {reference.name} differ in {field}: not built from one another")
    if not images:
        raise ValueError("give at least one image to run both on")
    from polygraphy.comparator import Comparator

    feeds = _feeds(images, meta_r)
    runs = Comparator.run([_runner(reference, "reference"), _runner(candidate, "candidate")], data_loader=feeds)
    ref = [_pairs(out, meta_r) for out in runs["reference"]]
    got = [_pairs(out, meta_c) for out in runs["candidate"]]
    return judge_outputs(ref, got, tolerance_key(meta_r, meta_c))
