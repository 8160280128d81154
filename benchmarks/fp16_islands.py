"""Where float16 moves a model's instances: the FP16-mixed network with one more region in float32 at a time.

The export's FP16 gate (``export/verify.py: verify_half``) runs the FP16-mixed network in PyTorch float16 against
FP32 and judges the instances. This script repeats that judgement on held-out synthetic images with each region
(pixel decoder, decoder, each backbone stage) also run in float32, so a model the gate refuses shows which region
its weights make sensitive (benchmarks/README.md, result 11: ft5 passes with res3 or res4 in float32).

    python benchmarks/fp16_islands.py fastinst-demo /tmp/ft5/fastinst-demo.safetensors --images 16

The regions are the export's own (``deploy.fp16_regions``, run in float32 as its fallback runs them,
``export/onnx_export.py: _fp16_float32_regions``); the decoder, measured here too, is not one of them.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch

from fastinst_rt import load_model
from fastinst_rt.export import deploy
from fastinst_rt.export.deploy import _cast
from fastinst_rt.export.verify import judge_half
from fastinst_rt.runtime.preprocess import load_image, prepare
from fastinst_rt.training.synth import make_synthetic_dataset


class _DecoderInFloat32(torch.nn.Module):
    """The decoder in float32 (not one of the export's regions: its outputs are float32 already, as shipped)."""

    def __init__(self, decoder: torch.nn.Module) -> None:
        super().__init__()
        self.decoder = decoder.float()

    def forward(self, *args: Any) -> Any:
        return self.decoder(*_cast(args, torch.float32))


def judge(model: Any, images: torch.Tensor, sizes: torch.Tensor, region: str | None) -> str:
    """One line: the gate's agreement of the FP16-mixed network (``region`` also in float32) with FP32."""
    reference = deploy.DeployModel(model).eval()
    regions = (region,) if region and region != "decoder" else ()
    half = deploy.DeployModel(model, fp16=True, float32_regions=regions).eval()
    if region == "decoder":
        deploy._replace(half.model, "decoder", _DecoderInFloat32(half.model.decoder))
    a, broken = judge_half(reference, half, images, sizes, progress=False)
    return (f"{region or 'as shipped':>15}: score diff max {a.score_diff:.3f} mean {a.mean_score_diff:.4f}, "
            f"mask IoU {a.mask_iou:.3f}, rank misses {a.rank_misses}, {len(broken)} tolerances broken")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="zoo names or checkpoints")
    ap.add_argument("--images", type=int, default=16, help="held-out synthetic images of seed 7 (default 16)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ann = make_synthetic_dataset(Path(tmp) / "held-out", args.images, seed=7)
        rgb = [load_image(p, "rgb") for p in sorted((ann.parent / "images").iterdir())]
    for name in args.models:
        model = load_model(name)
        h, w = model.info.test_size
        images, sizes = (torch.from_numpy(a) for a in prepare(rgb, h, w)[:2])
        print(name)
        for region in (None, "decoder", *deploy.fp16_regions(model)):
            print("  " + judge(model, images, sizes, region), flush=True)


if __name__ == "__main__":
    main()
