"""PyTorch backend: checkpoints (official ``.pth``, ours ``.safetensors``, zoo names) run through ``FastInst``."""

from __future__ import annotations

import os

import numpy as np
import torch

from ...checkpoint import ModelInfo, load_checkpoint
from ...modeling.fastinst import FastInst
from .base import Backend, BackendInfo

__all__ = ["TorchBackend"]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class TorchBackend(Backend):
    """Eager PyTorch inference on CPU or CUDA, FP32 or (CUDA only) FP16.

    Args:
        model: a checkpoint path or zoo name, or an already built ``FastInst`` together with ``info``.
        device: "cpu", "cuda", "cuda:1", ...; default CUDA when available.
        half: run in float16 (CUDA only); outputs are returned as float32.
    """

    kind = "torch"

    def __init__(
        self,
        model: str | os.PathLike | FastInst,
        device: str | None = None,
        half: bool = False,
        info: ModelInfo | None = None,
    ) -> None:
        self.device = torch.device(device or default_device())
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available to this PyTorch")
        if half and self.device.type != "cuda":
            raise ValueError("half precision is supported on CUDA devices only")
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
        super().__init__(BackendInfo(info.name, info.class_names, info.test_size))

    @torch.inference_mode()
    def _infer(self, batch: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]:
        images = torch.from_numpy(batch).to(self.device, non_blocking=True)
        x = self.model.normalize(images, torch.from_numpy(sizes))
        out = self.model(x.half() if self.half else x)
        return {k: out[k].float().cpu().numpy() for k in ("pred_logits", "pred_masks")}

    def close(self) -> None:
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def describe(self) -> dict:
        d = super().describe()
        d.update(device=str(self.device), precision="fp16" if self.half else "fp32", source=self.model_info.source,
                 sha256=self.model_info.sha256, config=self.model_info.config.to_dict(),
                 parameters=sum(p.numel() for p in self.model.parameters()))  # fmt: skip
        return d
