"""The interface every inference backend implements.

Modelled on Polygraphy's ``BaseRunner``: the public ``infer`` checks its input and times the call, the
subclasses implement ``_infer``. Every backend returns the same raw outputs, so one post-processing serves all.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Backend", "BackendInfo"]


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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_export_metadata(cls, meta: dict, name: str, max_batch: int | None, fixed_batch: bool) -> BackendInfo:
        """The info an export carries in its metadata (or an engine's sidecar); ``name`` if it names no model."""
        fixed = meta.get("fixed_size")
        return cls(
            name=str(meta.get("model", name)),
            class_names=tuple(meta["class_names"]),
            test_size=tuple(int(v) for v in meta["test_size"]),
            size_divisibility=int(meta.get("size_divisibility", 32)),
            fixed_size=tuple(int(v) for v in fixed) if fixed else None,
            max_batch=max_batch,
            fixed_batch=fixed_batch,
        )


class Backend(ABC):
    """Runs FastInst on a preprocessed batch.

    ``infer`` takes the padded uint8 RGB batch (B, 3, H, W) and each image's valid (h, w) size (B, 2), and returns
    {"pred_logits": (B, Q, K+1) float32, "pred_masks": (B, Q, H/8, W/8) float32 mask logits} as numpy arrays.
    """

    kind: str = ""  # "torch", "onnxruntime", "tensorrt"

    def __init__(self, info: BackendInfo) -> None:
        self.info = info
        self.last_inference_ms = 0.0

    def infer(self, batch: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]:
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a uint8 (B, 3, H, W) batch, got {batch.dtype} {batch.shape}")
        div = self.info.size_divisibility
        if batch.shape[2] % div or batch.shape[3] % div:
            raise ValueError(f"batch size {batch.shape[2:]} is not padded to a multiple of {div}")
        if sizes.shape != (batch.shape[0], 2):
            raise ValueError(f"sizes must be (B, 2) for B = {batch.shape[0]}, got {sizes.shape}")
        start = time.perf_counter()
        out = self._infer(batch, sizes.astype(np.int64))
        self.last_inference_ms = (time.perf_counter() - start) * 1e3
        return out

    @abstractmethod
    def _infer(self, batch: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]: ...

    def _split_batches(
        self, batch: np.ndarray, sizes: np.ndarray, run: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        """Call ``run`` on chunks of at most ``info.max_batch`` images; a fixed-batch artifact gets short chunks
        padded with copies of the last image, whose outputs are dropped."""
        max_batch, b = self.info.max_batch, batch.shape[0]
        if max_batch is None or b == max_batch:
            return run(batch, sizes)
        parts = []
        for start in range(0, b, max_batch):
            chunk, chunk_sizes = batch[start : start + max_batch], sizes[start : start + max_batch]
            n = chunk.shape[0]
            if n < max_batch and self.info.fixed_batch:
                fill = max_batch - n
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fill, axis=0)])
                chunk_sizes = np.concatenate([chunk_sizes, np.repeat(chunk_sizes[-1:], fill, axis=0)])
            parts.append({k: v[:n] for k, v in run(chunk, chunk_sizes).items()})
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to release
        """Release the model and any device memory."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict:
        """A JSON-serialisable description (used by ``fastinst-rt info`` and benchmarks)."""
        return {"backend": self.kind, "model": self.info.name, "classes": self.info.num_classes,
                "test_size": list(self.info.test_size)}  # fmt: skip
