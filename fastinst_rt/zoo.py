"""FastInst variants: one config dataclass, one builder, one table of named models.

The five official COCO models keep the official widths (R50/R101 or ResNet-50-D with DCN in res4/res5,
256-wide head, 100 + 8 queries) and differ in backbone, decoder layers and test size. The ``*-test-*``
variants are narrow copies of the same code paths for tests; they have no released weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace

from .coco import COCO_CLASSES
from .modeling.backbone import ResNet, ResNetVD
from .modeling.decoder import FastInstDecoder
from .modeling.fastinst import FastInst
from .modeling.pixel_decoder import PPMFPN

__all__ = ["FastInstConfig", "ModelSpec", "MODELS", "CONFIG_BOUNDS", "build_model", "DEFAULT_TEST_SIZE"]

RELEASE_URL = "https://github.com/junjiehe96/FastInst/releases/download/v0.1.0/"
# Test-time resize (short side, long-side cap) when nothing else says which to use: the D3 models' one.
DEFAULT_TEST_SIZE = (640, 853)


@dataclass(frozen=True)
class FastInstConfig:
    """Every architectural choice of a FastInst model (the defaults are R50-D3 on COCO)."""

    backbone: str = "resnet"  # "resnet" (Detectron2 R50/R101) or "resnet_vd" (ResNet-D, optional DCN)
    layers: tuple[int, ...] = (3, 4, 6, 3)
    stem_width: int = 64  # resnet: stem output; resnet_vd: first stem convs (the stem outputs twice this)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    out_channels: tuple[int, ...] = (256, 512, 1024, 2048)
    deform_stages: tuple[bool, ...] = (False, False, False, False)
    hidden_dim: int = 256
    num_classes: int = 80
    num_queries: int = 100
    num_aux_queries: int = 8
    nheads: int = 8
    dim_feedforward: int = 1024
    dec_layers: int = 3
    mask_dim: int = 256

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FastInstConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown FastInst config keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def check(self) -> None:
        """ValueError naming the first field that is of the wrong type or outside ``CONFIG_BOUNDS``.

        The bounds are generous (several times the largest official model) but finite: a config read from a file
        is checked before a model is built from it, so a forged one cannot ask for an unbounded allocation.
        """
        if self.backbone not in ("resnet", "resnet_vd"):
            raise ValueError(f"unknown backbone {self.backbone!r}; expected 'resnet' or 'resnet_vd'")
        for name, (low, high) in CONFIG_BOUNDS.items():
            value = getattr(self, name)
            values = value if isinstance(value, tuple) else (value,)
            if name in ("layers", "widths", "out_channels") and len(values) != 4:
                raise ValueError(f"config {name} must hold 4 stages, got {value!r}")
            if not all(isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in values):
                raise ValueError(f"config {name} = {value!r} is out of bounds: integers in [{low}, {high}]")
        if len(self.deform_stages) != 4 or not all(isinstance(v, bool) for v in self.deform_stages):
            raise ValueError(f"config deform_stages must be 4 booleans, got {self.deform_stages!r}")
        if self.hidden_dim % self.nheads:
            raise ValueError(f"config hidden_dim {self.hidden_dim} is not divisible by nheads {self.nheads}")


# Inclusive bounds of each integer config field (per stage for the tuples), checked by FastInstConfig.check.
CONFIG_BOUNDS: dict[str, tuple[int, int]] = {
    "layers": (1, 64), "stem_width": (1, 1024), "widths": (1, 4096), "out_channels": (1, 16384),
    "hidden_dim": (1, 4096), "num_classes": (1, 100000), "num_queries": (1, 10000), "num_aux_queries": (0, 10000),
    "nheads": (1, 256), "dim_feedforward": (1, 65536), "dec_layers": (1, 32), "mask_dim": (1, 4096),
}  # fmt: skip


@dataclass(frozen=True)
class ModelSpec:
    """A named model: its architecture, test-time resize and (for official ones) released checkpoint."""

    name: str
    config: FastInstConfig
    test_size: tuple[int, int]
    checkpoint: str | None = None  # released file name
    mask_ap: float | None = None  # COCO val2017 mask AP reported by the authors
    class_names: tuple[str, ...] = field(default=COCO_CLASSES, repr=False)
    bundled: str | None = None  # weights shipped inside the package (fastinst_rt/assets/<bundled>)

    @property
    def url(self) -> str | None:
        return RELEASE_URL + self.checkpoint if self.checkpoint else None


def build_model(config: FastInstConfig) -> FastInst:
    """A randomly initialised FastInst in eval mode."""
    c = config
    if c.backbone == "resnet":
        backbone = ResNet(c.layers, c.stem_width, c.widths, c.out_channels)
    elif c.backbone == "resnet_vd":
        backbone = ResNetVD(c.layers, c.stem_width, c.widths, c.out_channels, c.deform_stages)
    else:
        raise ValueError(f"unknown backbone {c.backbone!r}; expected 'resnet' or 'resnet_vd'")
    pixel_decoder = PPMFPN(c.out_channels[1:], c.hidden_dim)
    decoder = FastInstDecoder(
        c.hidden_dim,
        c.num_classes,
        c.num_queries,
        c.num_aux_queries,
        c.nheads,
        c.dim_feedforward,
        c.dec_layers,
        c.mask_dim,
    )
    return FastInst(backbone, pixel_decoder, decoder).eval()


_R50 = FastInstConfig()
_R50VD = FastInstConfig(backbone="resnet_vd", stem_width=32, deform_stages=(False, False, True, True))
# Narrow test variants: every code path of the full models at a fraction of the cost.
_TEST = FastInstConfig(
    layers=(1, 1, 1, 1), stem_width=16, widths=(16, 32, 64, 128), out_channels=(64, 128, 256, 512),
    hidden_dim=64, nheads=4, dim_feedforward=128, mask_dim=64, dec_layers=2,
)  # fmt: skip
_TEST_VD = replace(_TEST, backbone="resnet_vd", stem_width=8, deform_stages=(False, False, True, True), dec_layers=1)
# Small trainable variant for CPU training on ``fastinst-rt synth`` data (training/synth.py): quarter-width
# bottleneck ResNet-26 (2-2-2-2), 64-wide head with 4 heads of 16 (what checkpoint.default_nheads assumes),
# 2 decoder layers, 49 queries (a 7x7 positional map), trained and tested at short side 256; 1.4M parameters.
SYNTH_CLASSES = ("circle", "square", "triangle", "star")  # = training.synth.SHAPES[:4], the synth default
_SMALL = FastInstConfig(
    layers=(2, 2, 2, 2), stem_width=16, widths=(16, 32, 64, 128), out_channels=(64, 128, 256, 512),
    hidden_dim=64, nheads=4, dim_feedforward=256, mask_dim=64, dec_layers=2, num_queries=49, num_classes=4,
)  # fmt: skip

_D1, _D3 = (576, 777), (640, 853)
_SPECS = (
    ModelSpec("fastinst-r50-d1", replace(_R50, dec_layers=1), _D1, "fastinst_R50_ppm-fpn_x1_576_34.9.pth", 34.9),
    ModelSpec("fastinst-r50-d3", _R50, _D3, "fastinst_R50_ppm-fpn_x3_640_37.9.pth", 37.9),
    ModelSpec(
        "fastinst-r101-d3", replace(_R50, layers=(3, 4, 23, 3)), _D3, "fastinst_R101_ppm-fpn_x3_640_38.9.pth", 38.9
    ),
    ModelSpec(
        "fastinst-r50vd-dcn-d1", replace(_R50VD, dec_layers=1), _D1, "fastinst_R50-vd-dcn_ppm-fpn_x1_576_37.4.pth", 37.4
    ),
    ModelSpec("fastinst-r50vd-dcn-d3", _R50VD, _D3, "fastinst_R50-vd-dcn_ppm-fpn_x3_640_40.1.pth", 40.1),
    ModelSpec("fastinst-test-r50-d2", _TEST, (320, 427)),
    ModelSpec("fastinst-test-r50vd-dcn-d1", _TEST_VD, (320, 427)),
    ModelSpec("fastinst-small-r26-d2", _SMALL, (256, 341), class_names=SYNTH_CLASSES),
    # The embedded default: fastinst-small-r26-d2 trained here on synthetic shapes (assets/README.md).
    ModelSpec("fastinst-demo", _SMALL, (256, 341), class_names=SYNTH_CLASSES, bundled="fastinst-demo.safetensors"),
)
MODELS: dict[str, ModelSpec] = {s.name: s for s in _SPECS}
