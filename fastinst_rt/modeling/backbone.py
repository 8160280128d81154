"""ResNet backbones of FastInst, returning res3/res4/res5.

Ported from Detectron2's ``modeling/backbone/resnet.py`` (R50/R101, ``STRIDE_IN_1X1=False``, FrozenBN) and
from FastInst's ``modeling/backbone/resnet.py`` (timm's ResNet-D with deformable res4/res5 blocks).
Changes: only the inference-relevant parts (no freeze_at, no dilation, no DropBlock/DropPath), and every
width is a constructor argument so that narrow test variants use the same code. Module names follow
the official checkpoints (``stem.conv1``/``res2.0.conv1.norm`` and ``conv1.0``/``layer1.0.bn1``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Conv2d, DeformConv, FrozenBatchNorm2d

__all__ = ["ResNet", "ResNetVD", "OUT_FEATURES"]

OUT_FEATURES = ("res3", "res4", "res5")


def _conv(cin: int, cout: int, k: int, stride: int = 1, relu: bool = False) -> Conv2d:
    return Conv2d(
        cin, cout, k, stride=stride, padding=k // 2, bias=False,
        norm=FrozenBatchNorm2d(cout), activation=nn.ReLU(inplace=True) if relu else None,
    )  # fmt: skip


class BottleneckBlock(nn.Module):
    """Detectron2 bottleneck: 1x1 -> 3x3 (carries the stride) -> 1x1, projection shortcut when shapes change."""

    def __init__(self, cin: int, width: int, cout: int, stride: int) -> None:
        super().__init__()
        self.shortcut = _conv(cin, cout, 1, stride) if (cin != cout or stride != 1) else None
        self.conv1 = _conv(cin, width, 1, relu=True)
        self.conv2 = _conv(width, width, 3, stride, relu=True)
        self.conv3 = _conv(width, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self.conv2(self.conv1(x)))
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + shortcut)


class BasicStem(nn.Module):
    """7x7/2 conv + FrozenBN + ReLU, then 3x3/2 max-pool."""

    def __init__(self, cout: int) -> None:
        super().__init__()
        self.conv1 = Conv2d(3, cout, 7, stride=2, padding=3, bias=False, norm=FrozenBatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu_(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    """Detectron2 ResNet-v1.5 (stride in the 3x3 conv), FrozenBN everywhere.

    Args:
        layers: blocks per stage res2..res5, (3, 4, 6, 3) for R50 and (3, 4, 23, 3) for R101.
        stem_channels: stem output width (64).
        widths: bottleneck widths per stage (64, 128, 256, 512).
        out_channels: stage output widths (256, 512, 1024, 2048).
    """

    def __init__(
        self, layers: Sequence[int], stem_channels: int, widths: Sequence[int], out_channels: Sequence[int]
    ) -> None:
        super().__init__()
        self.stem = BasicStem(stem_channels)
        cin = stem_channels
        for i, (n, width, cout) in enumerate(zip(layers, widths, out_channels)):
            blocks = [
                BottleneckBlock(cin if b == 0 else cout, width, cout, 2 if (b == 0 and i > 0) else 1) for b in range(n)
            ]
            self.add_module(f"res{i + 2}", nn.Sequential(*blocks))
            cin = cout
        self.out_channels = {f"res{i + 2}": c for i, c in enumerate(out_channels)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) normalized image -> {"res3": (B, C3, H/8, W/8), "res4": .../16, "res5": .../32}."""
        x = self.res2(self.stem(x))
        res3 = self.res3(x)
        res4 = self.res4(res3)
        return {"res3": res3, "res4": res4, "res5": self.res5(res4)}


class VDBottleneck(nn.Module):
    """timm bottleneck (conv/bn pairs), optionally with a DCN v1 3x3 conv whose offsets come from a plain conv."""

    def __init__(self, cin: int, width: int, cout: int, stride: int, deform: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(width)
        if deform:
            self.conv2_offset = nn.Conv2d(width, 18, 3, stride=stride, padding=1)
            nn.init.zeros_(self.conv2_offset.weight)
            nn.init.zeros_(self.conv2_offset.bias)
            self.conv2 = DeformConv(width, width, 3, stride=stride, padding=1)
        else:
            self.conv2_offset = None
            self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = FrozenBatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = FrozenBatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            # ResNet-D "avg_down": average-pool then 1x1 conv on the shortcut instead of a strided 1x1 conv.
            pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride != 1 else nn.Identity()
            self.downsample = nn.Sequential(pool, nn.Conv2d(cin, cout, 1, bias=False), FrozenBatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.bn1(self.conv1(x)))
        if self.conv2_offset is not None:
            out = self.conv2(out, self.conv2_offset(out))
        else:
            out = self.conv2(out)
        out = self.bn3(self.conv3(F.relu_(self.bn2(out))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu_(out + shortcut)


class ResNetVD(nn.Module):
    """ResNet-D (deep 3x3 stem, avg-pool shortcuts) with optional deformable stages, as in FastInst's R50-d-DCN.

    Args:
        layers: blocks per stage layer1..layer4.
        stem_width: width of the first two stem convs; the stem outputs 2 * stem_width channels.
        widths, out_channels: bottleneck and output widths per stage.
        deform_stages: per stage, whether every block uses DCN v1 ((False, False, True, True) officially).
    """

    def __init__(
        self,
        layers: Sequence[int],
        stem_width: int,
        widths: Sequence[int],
        out_channels: Sequence[int],
        deform_stages: Sequence[bool],
    ) -> None:
        super().__init__()
        cin = 2 * stem_width
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, stem_width, 3, stride=2, padding=1, bias=False),
            FrozenBatchNorm2d(stem_width),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem_width, stem_width, 3, stride=1, padding=1, bias=False),
            FrozenBatchNorm2d(stem_width),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem_width, cin, 3, stride=1, padding=1, bias=False),
        )
        self.bn1 = FrozenBatchNorm2d(cin)
        for i, (n, width, cout, deform) in enumerate(zip(layers, widths, out_channels, deform_stages)):
            stride = 1 if i == 0 else 2
            blocks = [
                VDBottleneck(cin if b == 0 else cout, width, cout, stride if b == 0 else 1, deform) for b in range(n)
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            cin = cout
        self.out_channels = {f"res{i + 2}": c for i, c in enumerate(out_channels)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W) normalized image -> {"res3": (B, C3, H/8, W/8), "res4": .../16, "res5": .../32}."""
        x = F.relu_(self.bn1(self.conv1(x)))
        x = self.layer1(F.max_pool2d(x, kernel_size=3, stride=2, padding=1))
        res3 = self.layer2(x)
        res4 = self.layer3(res3)
        return {"res3": res3, "res4": res4, "res5": self.layer4(res4)}
