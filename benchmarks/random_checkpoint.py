"""Write a seeded random-weight checkpoint of a zoo architecture that keeps about N instances on a photo.

Latency does not depend on the weights except in post-processing, whose cost grows with the number of instances
that pass the score threshold. Random weights give scores near 1/81, so nothing would pass ``conf 0.3`` and
post-processing would look free. This script therefore sharpens the class heads (last layer weights x40, so each
query has a dominant class, as in a trained model) and tunes one number — the "no object" bias of every class
head — by bisection until about ``--instances`` pass ``--conf`` on ``--image``,
and writes the result in the official Detectron2 format under the official file name, so that the test size
comes from the zoo entry exactly as it does for the released checkpoint.

    python benchmarks/random_checkpoint.py fastinst-r50-d1 --instances 10 --output /tmp/bench
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fastinst_rt import Segmenter
from fastinst_rt.checkpoint import ModelInfo, official_state_dict
from fastinst_rt.cli import SAMPLE_PHOTO
from fastinst_rt.runtime.backends.pytorch import TorchBackend
from fastinst_rt.zoo import MODELS, build_model


def random_checkpoint(
    name: str, output: Path, instances: int, conf: float = 0.3, image: str = SAMPLE_PHOTO, seed: int = 0
) -> tuple[Path, int]:
    """Write ``output/<official file name>``; returns the path and the instance count reached on ``image``."""
    spec = MODELS[name]
    torch.manual_seed(seed)
    model = build_model(spec.config)
    info = ModelInfo(spec.name, spec.config, spec.class_names, spec.test_size)
    heads = model.decoder.class_embed_layers
    with torch.no_grad():
        for layer in heads:
            layer.layers[-1].weight.mul_(40.0)
    base = [layer.layers[-1].bias.detach().clone() for layer in heads]

    def count(offset: float) -> int:
        with torch.no_grad():
            for layer, b in zip(heads, base):
                layer.layers[-1].bias.copy_(b)
                layer.layers[-1].bias[-1] -= offset  # a weaker "no object" lets more queries through
        seg = Segmenter(TorchBackend(model, device="cpu", info=info), conf=conf)
        return len(seg.predict(image))

    lo, hi = -30.0, 30.0
    for _ in range(12):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if count(mid) < instances else (lo, mid)
    reached = count(hi)
    output.mkdir(parents=True, exist_ok=True)
    path = output / (spec.checkpoint or f"{name}.pth")
    torch.save({"model": official_state_dict(model)}, path)
    return path, reached


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=[n for n, s in MODELS.items() if s.checkpoint])
    ap.add_argument("--instances", type=int, default=10, help="instances to pass --conf on --image (default 10)")
    ap.add_argument("--conf", type=float, default=0.3)
    ap.add_argument("--image", default=SAMPLE_PHOTO)
    ap.add_argument("--output", type=Path, default=Path("bench-checkpoints"))
    args = ap.parse_args()
    path, reached = random_checkpoint(args.model, args.output, args.instances, args.conf, args.image)
    print(f"wrote {path}: {reached} instances at conf >= {args.conf} on {args.image}")


if __name__ == "__main__":
    main()
