"""PPM-FPN pixel decoder of FastInst.

Ported from FastInst ``modeling/pixel_decoder/fastinst_encoder.py`` (``PyramidPoolingModuleFPN``).
Changes: the three levels are written out instead of looping over reversed lists; no Detectron2 registry.
Module names (``adapter_i``, ``layer_i``, ``ppm.stages``, ``ppm.bottleneck``) follow the checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Conv2d

__all__ = ["PyramidPoolingModule", "PPMFPN"]


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class PyramidPoolingModule(nn.Module):
    """PSPNet pyramid pooling: pool to 1/2/3/6 bins, 1x1 conv + ReLU, upsample, concat with the input, 1x1 conv.

    Args:
        in_channels: C of the input (and the output).
        channels: width of each pooled branch (C // 4 in FastInst).
        sizes: pooled output sizes.
    """

    def __init__(self, in_channels: int, channels: int, sizes: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.sizes = tuple(sizes)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), Conv2d(in_channels, channels, 1)) for s in self.sizes
        )
        self.bottleneck = Conv2d(in_channels + len(self.sizes) * channels, in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C, h, w)."""
        size = x.shape[-2:]
        priors = [_resize(F.relu(stage(x)), size) for stage in self.stages]
        return F.relu(self.bottleneck(torch.cat(priors + [x], dim=1)))


class PPMFPN(nn.Module):
    """Top-down FPN over res3/res4/res5 with a PPM on the coarsest level.

    GroupNorm(32) follows each adapter (1x1, no activation) and each output conv (3x3, ReLU), both without bias;
    the PPM's 1x1 convs have a bias and no norm.

    Args:
        in_channels: channels of res3, res4, res5.
        conv_dim: output width C of every level (256).
    """

    def __init__(self, in_channels: Sequence[int], conv_dim: int) -> None:
        super().__init__()
        for i, cin in enumerate(in_channels, start=1):
            # Detectron2 drops the conv bias when a norm follows; the 1x1 adapters have no activation.
            adapter = Conv2d(cin, conv_dim, 1, bias=False, norm=nn.GroupNorm(32, conv_dim))
            layer = Conv2d(
                conv_dim, conv_dim, 3, padding=1, bias=False, norm=nn.GroupNorm(32, conv_dim), activation=nn.ReLU()
            )
            _c2_xavier_fill(adapter)
            _c2_xavier_fill(layer)
            self.add_module(f"adapter_{i}", adapter)
            self.add_module(f"layer_{i}", layer)
        self.ppm = PyramidPoolingModule(conv_dim, conv_dim // 4)

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Backbone features -> (E3, E4, E5): (B, C, H/8, W/8), (B, C, H/16, W/16), (B, C, H/32, W/32)."""
        e5 = self.layer_3(self.ppm(self.adapter_3(features["res5"])))
        lateral4 = self.adapter_2(features["res4"])
        e4 = self.layer_2(lateral4 + _resize(e5, lateral4.shape[-2:]))
        lateral3 = self.adapter_1(features["res3"])
        e3 = self.layer_1(lateral3 + _resize(e4, lateral3.shape[-2:]))
        return e3, e4, e5


def _c2_xavier_fill(conv: nn.Conv2d) -> None:
    # Caffe2's XavierFill as used by Detectron2 (fvcore's c2_xavier_fill): kaiming-uniform with a=1.
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
