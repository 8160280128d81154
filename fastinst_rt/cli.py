"""The ``fastinst-rt`` command: one subcommand per job, each a thin call of a library function."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("torch", "onnxruntime", "tensorrt"), help="default: from the file type")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when available)")
    p.add_argument("--half", action="store_true", help="float16 inference (CUDA)")
    p.add_argument("--min-size", type=int, help="test-time short side (default: the model's)")
    p.add_argument("--max-size", type=int, help="test-time long-side cap (default: the model's)")


def _cmd_predict(args: argparse.Namespace) -> int:
    from .runtime.predict import predict_source
    from .runtime.segmenter import Segmenter

    seg = Segmenter(
        args.model, backend=args.backend, device=args.device, conf=args.conf, max_det=args.max_det,
        min_size=args.min_size, max_size=args.max_size, half=args.half,
    )  # fmt: skip
    summary = predict_source(seg, args.source, args.save, args.json, progress=not args.quiet)
    speed = ", ".join(f"{k} {v:.1f} ms" for k, v in summary.speed.items())
    print(f"{summary.frames} frame(s), {summary.instances} instance(s) at conf >= {args.conf}; per frame: {speed}")
    for path in summary.written:
        print(f"wrote {path}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .runtime.backends import open_backend

    with open_backend(args.model, args.backend, device=args.device or "cpu") as backend:
        info = backend.describe()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastinst-rt", description="FastInst instance segmentation: run, export, deploy."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="segment an image, a folder of images or a video")
    p.add_argument("source", help="image file, folder of images, or video file")
    p.add_argument("--model", "-m", required=True, help="checkpoint (.pth/.safetensors), artifact, or zoo name")
    p.add_argument("--conf", type=float, default=0.3, help="minimum instance score (default 0.3)")
    p.add_argument("--max-det", type=int, default=100, help="at most this many instances per image")
    p.add_argument("--save", metavar="DIR", help="write annotated images (or the annotated video) here")
    p.add_argument("--json", metavar="FILE", help="write COCO-style results here")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _add_model_options(p)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("info", help="describe a checkpoint or artifact: variant, architecture, classes, test size")
    p.add_argument("model", help="checkpoint, artifact or zoo name")
    p.add_argument("--backend", choices=("torch", "onnxruntime", "tensorrt"))
    p.add_argument("--device")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, NotImplementedError, RuntimeError) as e:
        # Expected failures (bad paths, bad input, unsupported combinations) get one clear line, not a traceback.
        print(f"fastinst-rt {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
