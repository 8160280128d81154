"""The ``fastinst-rt`` command: one subcommand per job, each a thin call of a library function."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import cli_parser
from .cli_paths import check_command_paths
from .io.outputs import shown
from .log import LOGGER_NAME
from .serving import cli as serving_cli

if TYPE_CHECKING:
    from .runtime.segmenter import Segmenter

__all__ = ["main", "USER_ERRORS"]

# What a user's mistake raises: bad paths and unwritable outputs (OSError), bad files and values (ValueError,
# including CheckpointError and ImageError), unsupported combinations (NotImplementedError, RuntimeError), a missing
# optional package (ImportError), and a size the machine cannot hold (MemoryError).
USER_ERRORS = (OSError, ValueError, NotImplementedError, RuntimeError, ImportError, MemoryError)

# A real photo shipped with the package (NASA's public-domain astronaut portrait, via scikit-image's data).
SAMPLE_PHOTO = str(Path(__file__).parent / "assets" / "astronaut.jpg")


def _cmd_predict(args: argparse.Namespace) -> int:
    if getattr(args, "ray", False):  # track has no --ray
        if args.save_txt or args.segmentation != "rle":
            raise ValueError("--save-txt and --segmentation polygon are not available with --ray")
        return serving_cli.cmd_predict_ray(args)
    from .jobs.predict import predict_source
    from .runtime.segmenter import Segmenter

    seg = Segmenter(
        args.model, backend=args.backend, device=args.device, conf=args.conf, max_det=args.max_det,
        min_size=args.min_size, max_size=args.max_size, half=args.half, resize=_resize(args),
    )  # fmt: skip
    options = dict(pipeline=not args.no_pipeline, batch=args.batch, vid_stride=args.vid_stride,
                   realtime=args.realtime, timeout=args.timeout, progress=not args.quiet, save_txt=args.save_txt,
                   segmentation=args.segmentation)  # fmt: skip
    if args.command == "track":
        from .jobs.track import track_source
        from .tracking import ByteTracker

        tracker = ByteTracker(high_score=args.track_high, low_score=args.track_low, max_lost=args.max_lost)
        summary, metrics = track_source(seg, args.source, args.save, args.json, args.mot, tracker=tracker,
                                        gt_path=args.gt, trails=args.trails, **options)  # fmt: skip
    else:
        summary, metrics = predict_source(seg, args.source, args.save, args.json, **options), None
    return _report(summary, metrics, args)


def _resize(args: argparse.Namespace, default: str | None = None) -> str:
    """``--resize``, or the command's default where it is not given (``segmenter.DEFAULT_RESIZE`` unless named)."""
    from .runtime.segmenter import DEFAULT_RESIZE

    return getattr(args, "resize", None) or default or DEFAULT_RESIZE


def _report(summary: Any, metrics: dict | None, args: argparse.Namespace) -> int:
    """Print what a predict/track run did; the exit code says whether it is complete (0), partial (1) or
    interrupted (130)."""
    speed = ", ".join(f"{k} {v:.1f} ms" for k, v in summary.speed.items())
    print(f"{summary.frames} frame(s), {summary.instances} instance(s) at conf >= {args.conf}; busy per frame: {speed}")
    if summary.dropped:
        print(f"realtime mode dropped {summary.dropped} frame(s) to keep up")
    for path in summary.written:
        print(f"wrote {shown(path)}")
    if metrics:
        m = metrics
        print(f"HOTA {m['hota']:.3f} (DetA {m['deta']:.3f}, AssA {m['assa']:.3f}), "
              f"MOTA {m['mota']:.3f}, IDF1 {m['idf1']:.3f}, ID switches {m['num_switches']:.0f}, precision "
              f"{m['precision']:.3f}, recall {m['recall']:.3f} over {m['num_frames']:.0f} frames")  # fmt: skip
    done = f"results up to frame {summary.last_frame} are kept" if summary.last_frame is not None else "no frame done"
    if summary.failed:
        print(f"error: {len(summary.failed)} image(s) could not be read and were skipped:", file=sys.stderr)
        for name, why in summary.failed:
            print(f"  {shown(name)}: {why}", file=sys.stderr)
    if summary.stopped:
        print(f"error: {args.source}: {summary.stopped}; {done}", file=sys.stderr)
    if summary.error:
        print(f"error: {summary.error}; {done}", file=sys.stderr)
    if summary.interrupted:
        print(f"interrupted; {done}", file=sys.stderr)
        return 130
    return 0 if summary.complete else 1


def _cmd_info(args: argparse.Namespace) -> int:
    from .runtime.backends import open_backend

    with open_backend(args.model, args.backend, device=args.device or "cpu") as backend:
        info = backend.describe()
    # What the commands that run the model do with it before the network: their test-time resize.
    info["resize"] = {"predict, track, serve, bench": _resize(args), "eval": "exact"}
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


def _cmd_export(args: argparse.Namespace) -> int:
    try:
        from fastinst_rt.export import export_onnx
    except ImportError as e:
        raise RuntimeError(f"export needs torch and onnx: pip install 'fastinst-rt[torch,onnx]' ({e})") from None
    export_onnx(
        args.model, args.output, imgsz=args.imgsz, dynamic=args.dynamic, min_size=args.min_size,
        max_size=args.max_size, batch=args.batch, fp16=args.fp16, raw=args.raw, opset=args.opset,
        max_det=args.max_det, dcn_plugin=args.dcn_plugin, simplify=not args.no_simplify, int8=args.int8,
        calib=args.calib, calib_images=args.calib_images, calib_method=args.calib_method, calib_cache=args.calib_cache,
        progress=True,
    )  # fmt: skip
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .training.loop import TrainConfig, train

    config = TrainConfig(
        data=args.data, images=args.images, model=args.model, output=args.output, init=args.init, iters=args.iters,
        batch=args.batch, lr=args.lr, backbone_multiplier=args.backbone_lr, train_size=args.train_size,
        min_sizes=tuple(args.min_size or ()) or None, max_size=args.max_size, resume=args.resume, device=args.device,
        workers=args.workers, seed=args.seed, checkpoint_period=args.checkpoint_period, progress=not args.quiet,
    )  # fmt: skip
    path = train(config)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, only rank 0 writes the checkpoint
        print(f"wrote {path}")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from .training.synth import make_synthetic_dataset

    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must look like 256x320 (HxW), got {args.size!r}") from None
    classes = tuple(args.classes.split(","))
    if args.every:  # frames of videos as still images: implies --video
        from .training.synth_video import make_video_frames_dataset

        if args.include and not args.include[1].isdigit():
            raise ValueError(f"--include takes a COCO JSON and a number of images, got {' '.join(args.include)}")
        include = (args.include[0], int(args.include[1])) if args.include else None
        path = make_video_frames_dataset(args.output, args.videos, args.frames, args.every, args.seed, include)
        print(f"wrote one frame in {args.every} of {args.videos} videos to {path.parent / 'images'} and {path}")
        return 0
    if args.video:
        from .training.synth_video import make_synthetic_video

        path = make_synthetic_video(args.output, args.frames, args.seed, (h, w), classes, fps=args.fps)
        print(f"wrote {path}, {path.parent / 'gt.txt'} and {path.parent / 'annotations.json'} ({args.frames} frames)")
        return 0
    formats = {"image_format": args.format, "segmentation": args.segmentation, "border_cut": args.border_cut}
    path = make_synthetic_dataset(args.output, args.num, args.seed, (h, w), classes, **formats)
    print(f"wrote {args.num} images to {path.parent / 'images'} and {path}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from fastinst_rt.export.trt_build import build_engine, parse_shape

    from .io.outputs import check_writable

    if args.output:
        check_writable(args.output, "--output")  # before TensorRT spends minutes on the build
    profile = None
    if args.min_shape or args.opt_shape or args.max_shape:
        if not (args.min_shape and args.opt_shape and args.max_shape):
            raise ValueError("give all of --min-shape, --opt-shape and --max-shape (images, BxCxHxW)")
        shapes = [parse_shape(s) for s in (args.min_shape, args.opt_shape, args.max_shape)]
        profile = {"images": tuple(shapes), "sizes": tuple((s[0], 2) for s in shapes)}
    engine = build_engine(
        args.onnx, args.output, fp16=args.fp16, workspace_gb=args.workspace, profile=profile,
        max_batch=args.max_batch, timing_cache=args.timing_cache, device=args.device, force=args.force,
    )  # fmt: skip
    if args.verify:
        args.candidate, args.reference = str(engine), args.onnx
        return _cmd_verify(args)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    """Judge ``args.candidate`` against ``args.reference``: 0 when it passes, 1 (and why, one line) when not."""
    from fastinst_rt.export.engine_check import verify_artifact

    from .runtime.sources import IMAGE_SUFFIXES

    images = [SAMPLE_PHOTO]
    if args.images:
        folder = Path(args.images)
        images = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[: args.num_images]
        if not images:
            raise ValueError(f"--images {args.images} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    agreement, problems = verify_artifact(args.candidate, args.reference, images)
    a = agreement
    print(f"{Path(args.candidate).name} vs {Path(args.reference).name} on {len(images)} image(s): matched "
          f"{a.matched:.0%} of the top-{a.top_k}, mask IoU {a.mask_iou:.3f}, score diff {a.score_diff:.3f} (mean "
          f"{a.mean_score_diff:.3f}), rank misses {a.rank_misses}, count {a.count} +- {a.count_diff}")  # fmt: skip
    if problems:
        print(f"refused: {'; '.join(problems)}", file=sys.stderr)
        return 1
    print("passed")
    return 0


def _segmenters(args: argparse.Namespace) -> list[tuple[str, Segmenter]]:
    """(label, Segmenter) per (model, backend) pair of a bench run: several models, or one model on several backends.

    A file is labelled by its name (a static and a dynamic export of one model must be told apart), a zoo entry by
    its name."""
    from .runtime.backends import open_backend
    from .runtime.segmenter import Segmenter

    backends = args.backend or [None]
    if len(args.models) > 1 and len(backends) > 1:
        raise ValueError("give several models or several --backend values, not both")
    pairs = [(m, b) for m in args.models for b in backends]
    return [
        (Path(m).name, Segmenter(open_backend(m, b, args.device, args.half, cuda_graph=args.cuda_graph),
                                 conf=args.conf, max_det=args.max_det, min_size=args.min_size, max_size=args.max_size,
                                 resize=_resize(args)))
        for m, b in pairs
    ]  # fmt: skip


def _cmd_bench(args: argparse.Namespace) -> int:
    from .io.outputs import check_writable
    from .jobs.bench import benchmark, markdown_table, plot_runs, write_json

    for output, what in ((args.json, "--json"), (args.plot, "--plot")):
        if output:
            check_writable(output, what)  # before any model is loaded or timed
    labels, segs = zip(*_segmenters(args))
    image = args.image or SAMPLE_PHOTO
    runs = benchmark(segs, image, batch=args.batch, warmup=args.warmup, iters=args.iters, labels=labels)
    print(markdown_table(runs))
    if args.json:
        write_json(runs, args.json, {"command": " ".join(sys.argv)})
        print(f"wrote {args.json}")
    if args.plot:
        plot_runs(runs, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .jobs.evaluate import evaluate_coco
    from .runtime.segmenter import Segmenter

    seg = Segmenter(args.model, backend=args.backend, device=args.device, conf=args.conf, max_det=args.max_det,
                    min_size=args.min_size, max_size=args.max_size, half=args.half,
                    resize=_resize(args, "exact"))  # fmt: skip  # AP is measured on the official pixels
    result = evaluate_coco(seg, args.coco_json, args.images, args.max_images, args.json, progress=not args.quiet)
    for kind in ("segm", "bbox"):
        stats = ", ".join(f"{k} {v:.1f}" if v is not None else f"{k} -" for k, v in result[kind].items())
        print(f"{kind} ({'masks' if kind == 'segm' else 'boxes from masks'}): {stats}")
    print(f"{result['images']} images, {result['instances']} instances, {result['seconds']:.1f} s")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .jobs.demo import run_demo

    result = run_demo(args.output, num_images=args.num_images, iters=args.iters)
    counts = result["instances"]
    print(result["table"])
    print(f"\ninstances per image: torch {counts['torch']}, onnxruntime {counts['onnxruntime']}; largest score "
          f"difference {result['agreement']['max_score_diff']:.1e}")  # fmt: skip
    print(f"wrote {', '.join(result['written'])} in {result['seconds']:.0f} s")
    return 0


# The function each of our subcommands runs; ``serve`` and ``export-triton`` come with the serving extra's parsers.
COMMANDS = {
    "predict": _cmd_predict, "track": _cmd_predict, "info": _cmd_info, "export": _cmd_export, "build": _cmd_build,
    "train": _cmd_train, "synth": _cmd_synth, "bench": _cmd_bench, "eval": _cmd_eval, "demo": _cmd_demo,
    "verify": _cmd_verify,
}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The ``fastinst-rt`` parser; each subcommand's ``args.func`` runs it."""
    return cli_parser.build_parser(COMMANDS)


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) if lines else type(error).__name__


class _LogFormat(logging.Formatter):
    """``[fastinst-rt export] message``: the library's part (a job by its own name) before each message."""

    def format(self, record: logging.LogRecord) -> str:
        parts = record.name.split(".")
        part = parts[-1] if parts[1:2] == ["jobs"] else parts[1] if len(parts) > 1 else ""
        return f"[fastinst-rt{' ' + part if part else ''}] {record.getMessage()}"


@contextlib.contextmanager
def _library_logging(args: argparse.Namespace) -> Iterator[None]:
    """The library's messages on stderr while one command runs: INFO, DEBUG with ``--verbose``, warnings only with
    ``--quiet`` (or a subcommand's ``-q``)."""
    logger = logging.getLogger(LOGGER_NAME)
    handler = logging.StreamHandler(sys.stderr)  # the stderr of this call (tests swap it)
    handler.setFormatter(_LogFormat())
    quiet = getattr(args, "log_quiet", False) or getattr(args, "quiet", False) is True
    level = logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING if quiet else logging.INFO
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit status: 0, 2 for a user's mistake (one line on stderr), 130 if stopped.

    The one place where errors meet the user. ``USER_ERRORS`` (bad paths, bad files, bad values, unsupported
    combinations, a missing optional package, memory) print one line; ``--debug`` re-raises them with the traceback.
    Anything else is a bug and keeps its traceback.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed its one line (or --help)
        return int(e.code or 0)
    try:
        with _library_logging(args):
            check_command_paths(args)  # no output on an input or on another output, before any work
            return args.func(args)
    except USER_ERRORS as e:
        if args.debug:
            raise
        print(f"fastinst-rt {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"fastinst-rt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
