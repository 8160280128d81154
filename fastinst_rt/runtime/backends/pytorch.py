"""PyTorch backend: checkpoints (official ``.pth``, ours ``.safetensors``, zoo names) run through ``FastInst``."""

from __future__ import annotations

import os

import numpy as np
import torch

from ...checkpoint import ModelInfo, load_checkpoint
from ...modeling.fastinst import FastInst
from .base import Backend, BackendInfo, cpu_cores

__all__ = ["TorchBackend"]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class TorchBackend(Backend):
    """Eager PyTorch inference on CPU or CUDA, FP32 or (CUDA only) FP16.

    Args:
        model: a checkpoint path or zoo name, or an already built ``FastInst`` together with ``info``.
        device: "cpu", "cuda", "cuda:1", ...; default CUDA when available.
        half: run in float16 (CUDA only); outputs are returned as float32.
        cuda_graph: replay a captured CUDA graph per input shape (CUDA only): removes the launch overhead of
            the many small kernels, which dominates at batch 1 on fast GPUs.
    """

    kind = "torch"

    def __init__(
        self,
        model: str | os.PathLike | FastInst,
        device: str | None = None,
        half: bool = False,
        info: ModelInfo | None = None,
        cuda_graph: bool = False,
    ) -> None:
        try:
            self.device = torch.device(device or default_device())
        except RuntimeError:  # torch's message lists every device type it knows
            raise ValueError(f"unknown device {device!r}; expected cpu, cuda or cuda:N") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available to this PyTorch")
        if half and self.device.type != "cuda":
            raise ValueError("half precision is supported on CUDA devices only")
        if cuda_graph and self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.cuda_graph = cuda_graph
        self._graphs: dict[tuple, tuple] = {}
        if isinstance(model, FastInst):
            if info is None:
                raise ValueError("pass the ModelInfo together with a FastInst module")
            net = model.to(self.device).eval()
        else:
            net, info = load_checkpoint(model, self.device)
        self.model_info = info
        self.model = net.half() if half else net
        self.half = half
        # The official selection thresholds against float32 statistics; keep the pixel statistics in float32.
        self.model.pixel_mean, self.model.pixel_std = self.model.pixel_mean.float(), self.model.pixel_std.float()
        super().__init__(BackendInfo(info.name, info.class_names, info.test_size, num_queries=net.decoder.num_queries))
        self._default_threads = torch.get_num_threads()

    def _apply_reserve(self, cores: int) -> None:
        """On the CPU, PyTorch's intra-op threads: all but ``cores`` of the cores (at least 1), or the default.

        ``torch.set_num_threads`` is process-wide; a thread that has not run an operator yet (the stream's inference
        thread) takes the new count at its first one. The OpenMP wait policy cannot be changed once torch is
        loaded, so fewer threads is the way to keep OpenMP's spinning workers off the other stages' cores.
        """
        if self.device.type == "cpu":
            torch.set_num_threads(self._default_threads if cores == 0 else max(1, cpu_cores() - cores))

    def _forward(self, images: torch.Tensor, sizes: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.model.normalize(images, sizes)
        return self.model(x.half() if self.half else x)

    def _replay(self, images: torch.Tensor, sizes: torch.Tensor) -> dict[str, torch.Tensor]:
        key = (tuple(images.shape), tuple(sizes.shape))
        if key not in self._graphs:
            static = (images.clone(), sizes.clone())
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # warm up (allocator, cuDNN autotuning) outside the capture
                for _ in range(2):
                    self._forward(*static)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self._forward(*static)
            self._graphs[key] = (graph, static, out)
        graph, (static_images, static_sizes), out = self._graphs[key]
        static_images.copy_(images)
        static_sizes.copy_(sizes)
        graph.replay()
        return out

    @torch.inference_mode()
    def _run(self, batch: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]:
        images = torch.from_numpy(batch).to(self.device, non_blocking=True)
        sizes_t = torch.from_numpy(sizes).to(self.device, non_blocking=True)
        out = self._replay(images, sizes_t) if self.cuda_graph else self._forward(images, sizes_t)
        return {k: out[k].float().cpu().numpy() for k in ("pred_logits", "pred_masks")}  # synchronizes

    def _release(self) -> None:
        self.model = None
        self._graphs.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def describe(self) -> dict:
        d = super().describe()
        d.update(device=str(self.device), precision="fp16" if self.half else "fp32", cuda_graph=self.cuda_graph,
                 threads=torch.get_num_threads(),
                 source=self.model_info.source,
                 sha256=self.model_info.sha256, config=self.model_info.config.to_dict(),
                 parameters=sum(p.numel() for p in self.model.parameters()))  # fmt: skip
        return d
