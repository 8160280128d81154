"""The FastInst meta-architecture: backbone -> PPM-FPN pixel decoder -> dual-path decoder.

Ported from FastInst ``fastinst.py`` and ``modeling/meta_arch/fastinst_head.py``. Changes: the model takes a
normalized, padded tensor batch and returns the raw head outputs; resizing, padding and instance assembly
live in ``fastinst_rt.runtime`` (pre/post-processing) so that every backend shares them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .decoder import FastInstDecoder, Matcher
from .pixel_decoder import PPMFPN

__all__ = ["FastInst", "PIXEL_MEAN", "PIXEL_STD", "SIZE_DIVISIBILITY"]

# ImageNet statistics on the 0-255 scale, RGB order (the official PIXEL_MEAN / PIXEL_STD).
PIXEL_MEAN = (123.675, 116.280, 103.530)
PIXEL_STD = (58.395, 57.120, 57.375)
# Inputs are padded to a multiple of the coarsest stride.
SIZE_DIVISIBILITY = 32


class FastInst(nn.Module):
    """FastInst instance segmentation network.

    Args:
        backbone: module mapping (B, 3, H, W) to {"res3", "res4", "res5"} features, with an ``out_channels`` dict.
        pixel_decoder: PPM-FPN producing (E3, E4, E5).
        decoder: the FastInst decoder.
        pixel_mean, pixel_std: RGB normalization on the 0-255 scale.
    """

    def __init__(
        self,
        backbone: nn.Module,
        pixel_decoder: PPMFPN,
        decoder: FastInstDecoder,
        pixel_mean: Sequence[float] = PIXEL_MEAN,
        pixel_std: Sequence[float] = PIXEL_STD,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.decoder = decoder
        # Non-persistent, as in the official model: checkpoints do not carry them.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1), False)

    @property
    def num_classes(self) -> int:
        return self.decoder.query_proposal.num_classes

    def forward(
        self, images: torch.Tensor, targets: Sequence[dict] | None = None, matcher: Matcher | None = None
    ) -> dict:
        """Run the network.

        Args:
            images: (B, 3, H, W) float, RGB normalized with ``pixel_mean``/``pixel_std``, zero-padded (after
                normalization) bottom/right to multiples of 32 (see ``normalize``).
            targets: training only, per image {"labels": (N,) int64, "masks": (N, H, W) bool, padded like the
                images}; with ``matcher``, enables the ground-truth mask-guided pass.
            matcher: training only, ``matcher(outputs, targets) -> [(query_idx, target_idx)] per image``.

        Returns:
            A dict. Always:
              "pred_logits": (B, Q, K+1) class logits of the last layer, the last column "no object".
              "pred_masks": (B, Q, H/8, W/8) mask logits of the last layer (mask = logit > 0).
            In training mode also:
              "proposal_cls_logits": (B, K+1, H/16, W/16) logits of the query-selection head.
              "query_locations": (B, Q, 2) normalized (x, y) pixel of each selected query.
              "pred_matching_indices": the matcher's assignment when the guided pass ran, else None.
              "aux_outputs": list of 2L dicts (L without targets) with "pred_logits", "pred_masks",
                 "pred_matching_indices", "query_locations": the L guided predictions (if any), then the
                 initial queries' and layers 0..L-2's predictions.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) batch, got shape {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % SIZE_DIVISIBILITY or w % SIZE_DIVISIBILITY:
            raise ValueError(f"input size {h}x{w} is not a multiple of {SIZE_DIVISIBILITY}; pad it first")
        q = self.decoder.num_queries
        if (h // 16) * (w // 16) < q:
            raise ValueError(f"input {h}x{w} is too small: selecting {q} queries needs at least {q} pixels at 1/16")
        e3, e4, _ = self.pixel_decoder(self.backbone(images))
        return self.decoder(e3, e4, targets, matcher)

    def normalize(self, images: torch.Tensor, sizes: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (B, 3, H, W) RGB batch -> normalized float32, with the padding outside ``sizes`` (B, 2) = (h, w)
        set to 0.0 afterwards, which is what the official ``ImageList.from_tensors`` produces."""
        x = (images.to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
        if sizes is not None:
            sizes = torch.as_tensor(sizes, device=x.device)
            rows = torch.arange(x.shape[-2], device=x.device)[None, :, None] < sizes[:, 0, None, None]
            cols = torch.arange(x.shape[-1], device=x.device)[None, None, :] < sizes[:, 1, None, None]
            x = x * (rows & cols)[:, None].to(x.dtype)
        return x
