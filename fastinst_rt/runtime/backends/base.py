"""The interface every inference backend implements, and the output contract they all keep.

Modelled on Polygraphy's ``BaseRunner``: the public methods check the input and split it into the batches the
artifact takes; the subclasses implement ``_run``. The contract is written once, in ``Backend``'s docstring.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from ...artifact import ArtifactMeta
from ..postprocess import select_pairs

__all__ = ["Backend", "BackendInfo", "PAIR_KEYS", "RAW_KEYS", "cpu_cores"]

PAIR_KEYS = ("scores", "labels", "query", "masks")  # the output contract of ``Backend.infer``
RAW_KEYS = ("pred_logits", "pred_masks")  # the raw head outputs


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. a container's cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows have no affinity mask in Python
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class BackendInfo:
    """What the runtime needs to know about a loaded model, whatever its format."""

    name: str  # variant name
    class_names: tuple[str, ...]
    test_size: tuple[int, int]  # (short side, long-side cap) of the test-time resize
    size_divisibility: int = 32
    fixed_size: tuple[int, int] | None = None  # (H, W) when the artifact only accepts one padded input size
    max_batch: int | None = None  # largest batch the artifact takes (None: any)
    fixed_batch: bool = True  # whether it takes exactly max_batch images (a static graph) or up to max_batch
    outputs: str = "raw"  # what ``_run`` returns: "raw" head outputs or "e2e" pairs selected in the graph
    num_queries: int | None = None  # queries selected from the 1/16 map: a padded input needs that many positions

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_meta(cls, meta: ArtifactMeta, max_batch: int | None, fixed_batch: bool) -> BackendInfo:
        """The info of an export (or an engine built from one)."""
        return cls(meta.model, meta.class_names, meta.test_size, meta.size_divisibility, meta.fixed_size,
                   max_batch, fixed_batch, meta.outputs, meta.num_queries)  # fmt: skip


class Backend(ABC):
    """Runs FastInst on a pre-processed batch. Every backend keeps one output contract.

    Input (``infer`` and ``forward``), from ``runtime.preprocess.prepare``:
        batch: (B, 3, H, W) uint8 RGB, each image resized and placed at the top left, zero padding bottom/right;
            H and W multiples of ``info.size_divisibility``, and equal to ``info.fixed_size`` when it is set.
        sizes: (B, 2) integer, each image's valid (h, w) inside the padding.

    ``infer(batch, sizes, max_det)`` returns the top-N query x class pairs of each image, ranked by class
    probability as the official ``instance_inference`` ranks them, as a dict of numpy arrays:
        "scores": (B, N) float32, the class probability of the pair: softmax over the K+1 logits, no-object
            column dropped without renormalizing; descending, ties in pair order (pair = query * K + class).
        "labels": (B, N) int64, the class in 0..K-1.
        "query":  (B, N) int64, the query in 0..Q-1 (a query kept with several classes appears several times).
        "masks":  (B, N, H/8, W/8) float32, the mask logits of the pair's query, at 1/8 of the padded input.
    N = min(max_det, Q*K); an end-to-end graph has already selected its own ``max_det`` pairs, so there
    N = min(max_det, the graph's max_det). ``runtime.postprocess.instances_from_pairs`` turns one image's pairs
    into scored instances at the original size.

    ``forward(batch, sizes)`` returns what the artifact itself computes: these pairs for an end-to-end graph
    (``info.outputs == "e2e"``), else the raw head outputs (``info.outputs == "raw"``) as float32 numpy arrays
    {"pred_logits": (B, Q, K+1) class logits, last column no-object; "pred_masks": (B, Q, H/8, W/8) mask logits}.

    Subclasses implement ``_run(batch, sizes)``: ``forward``'s outputs for at most ``info.max_batch`` images
    (exactly that many when ``info.fixed_batch``), with sizes as int64.
    """

    kind: str = ""  # "torch", "onnxruntime", "tensorrt"

    def __init__(self, info: BackendInfo) -> None:
        self.info = info
        self.closed = False
        self.reserved_cores = 0  # cores left to other work (``reserve_cores``)

    def reserve_cores(self, cores: int) -> None:
        """Leave ``cores`` CPU cores to other threads of this process (the other stages of a pipelined stream).

        A backend that computes on the CPU sizes its own thread pool to the remaining cores (at least one) and
        stops spin-waiting between operators, so that its threads and the other stages do not take turns on the
        same cores (a thread pool whose worker is preempted stalls every parallel operator at its barrier); 0
        gives it back its defaults. GPU backends ignore it. Cheap when ``cores`` is unchanged.
        """
        if isinstance(cores, bool) or not isinstance(cores, int) or cores < 0:
            raise ValueError(f"cores must be an integer >= 0, got {cores!r}")
        if cores != self.reserved_cores and not self.closed:
            self._apply_reserve(cores)
            self.reserved_cores = cores

    def _apply_reserve(self, cores: int) -> None:  # noqa: B027 - optional hook: GPU backends keep their settings
        """Set the thread pool for ``cores`` reserved cores (``reserve_cores``)."""

    def infer(self, batch: np.ndarray, sizes: np.ndarray, max_det: int = 100) -> dict[str, np.ndarray]:
        """The selected pairs of the output contract (see the class docstring)."""
        if max_det < 1:
            raise ValueError(f"max_det must be positive, got {max_det}")
        out = self.forward(batch, sizes)
        if self.info.outputs == "raw":
            return select_pairs(out["pred_logits"], out["pred_masks"], max_det)
        n = min(max_det, out["scores"].shape[1])
        return {
            "scores": out["scores"][:, :n].astype(np.float32, copy=False),
            "labels": out["labels"][:, :n].astype(np.int64, copy=False),
            "query": out["query"][:, :n].astype(np.int64, copy=False),
            "masks": out["masks"][:, :n].astype(np.float32, copy=False),
        }

    def forward(self, batch: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]:
        """The artifact's own outputs (raw head outputs or in-graph pairs), batched as the artifact needs."""
        self._check_input(batch, sizes)
        return self._split_batches(batch, np.asarray(sizes).astype(np.int64))

    @abstractmethod
    def _run(self, batch: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]: ...

    def _check_input(self, batch: np.ndarray, sizes: np.ndarray) -> None:
        if self.closed:
            raise RuntimeError(f"this {self.kind} backend is closed")
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a uint8 (B, 3, H, W) batch, got {batch.dtype} {batch.shape}")
        div = self.info.size_divisibility
        if batch.shape[2] % div or batch.shape[3] % div:
            raise ValueError(f"batch size {batch.shape[2:]} is not padded to a multiple of {div}")
        fixed = self.info.fixed_size
        if fixed is not None and tuple(batch.shape[2:]) != tuple(fixed):
            raise ValueError(
                f"this model takes a fixed {fixed[0]}x{fixed[1]} input, got {batch.shape[2]}x{batch.shape[3]}"
            )
        if np.shape(sizes) != (batch.shape[0], 2):
            raise ValueError(f"sizes must be (B, 2) for B = {batch.shape[0]}, got {np.shape(sizes)}")

    def _split_batches(self, batch: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]:
        """``_run`` on chunks of at most ``info.max_batch`` images; a fixed-batch artifact gets short chunks
        padded with copies of the last image, whose outputs are dropped."""
        max_batch, b = self.info.max_batch, batch.shape[0]
        if max_batch is None or b == max_batch:
            return self._run(batch, sizes)
        parts = []
        for start in range(0, b, max_batch):
            chunk, chunk_sizes = batch[start : start + max_batch], sizes[start : start + max_batch]
            n = chunk.shape[0]
            if n < max_batch and self.info.fixed_batch:
                fill = max_batch - n
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fill, axis=0)])
                chunk_sizes = np.concatenate([chunk_sizes, np.repeat(chunk_sizes[-1:], fill, axis=0)])
            parts.append({k: v[:n] for k, v in self._run(chunk, chunk_sizes).items()})
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def close(self) -> None:
        """Release the model and any device memory; later calls raise RuntimeError."""
        if not self.closed:
            self._release()
        self.closed = True

    def _release(self) -> None:  # noqa: B027 - optional hook, most backends hold little to release
        """What ``close`` frees, once."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict:
        """A JSON-serialisable description (used by ``fastinst-rt info`` and benchmarks)."""
        return {"backend": self.kind, "model": self.info.name, "classes": self.info.num_classes,
                "test_size": list(self.info.test_size)}  # fmt: skip
