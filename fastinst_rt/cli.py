"""The ``fastinst-rt`` command: one subcommand per job, each a thin call of a library function."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

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


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("torch", "onnxruntime", "tensorrt"), help="default: from the file type")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when available)")
    p.add_argument("--half", action="store_true", help="float16 inference (CUDA)")
    p.add_argument("--min-size", type=int, help="test-time short side (default: the model's)")
    p.add_argument("--max-size", type=int, help="test-time long-side cap (default: the model's)")


def _cmd_predict(args: argparse.Namespace) -> int:
    if getattr(args, "ray", False):  # track has no --ray
        return serving_cli.cmd_predict_ray(args)
    from .jobs.predict import predict_source
    from .runtime.segmenter import Segmenter

    seg = Segmenter(
        args.model, backend=args.backend, device=args.device, conf=args.conf, max_det=args.max_det,
        min_size=args.min_size, max_size=args.max_size, half=args.half,
    )  # fmt: skip
    options = dict(pipeline=not args.no_pipeline, batch=args.batch, vid_stride=args.vid_stride,
                   realtime=args.realtime, timeout=args.timeout, progress=not args.quiet)  # fmt: skip
    if args.command == "track":
        from .jobs.track import track_source
        from .tracking import ByteTracker

        tracker = ByteTracker(high_score=args.track_high, low_score=args.track_low, max_lost=args.max_lost)
        summary, metrics = track_source(seg, args.source, args.save, args.json, args.mot, tracker=tracker,
                                        gt_path=args.gt, trails=args.trails, **options)  # fmt: skip
    else:
        summary, metrics = predict_source(seg, args.source, args.save, args.json, **options), None
    return _report(summary, metrics, args)


def _report(summary: Any, metrics: dict | None, args: argparse.Namespace) -> int:
    """Print what a predict/track run did; the exit code says whether it is complete (0), partial (1) or
    interrupted (130)."""
    speed = ", ".join(f"{k} {v:.1f} ms" for k, v in summary.speed.items())
    print(f"{summary.frames} frame(s), {summary.instances} instance(s) at conf >= {args.conf}; busy per frame: {speed}")
    if summary.dropped:
        print(f"realtime mode dropped {summary.dropped} frame(s) to keep up")
    for path in summary.written:
        print(f"wrote {path}")
    if metrics:
        m = metrics
        print(f"MOTA {m['mota']:.3f}, IDF1 {m['idf1']:.3f}, ID switches {m['num_switches']:.0f}, precision "
              f"{m['precision']:.3f}, recall {m['recall']:.3f} over {m['num_frames']:.0f} frames")  # fmt: skip
    done = f"results up to frame {summary.last_frame} are kept" if summary.last_frame is not None else "no frame done"
    if summary.failed:
        print(f"error: {len(summary.failed)} image(s) could not be read and were skipped:", file=sys.stderr)
        for name, why in summary.failed:
            print(f"  {name}: {why}", file=sys.stderr)
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
        calib=args.calib, calib_images=args.calib_images, calib_method=args.calib_method, progress=True,
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

    from .jobs.outputs import check_writable

    if args.output:
        check_writable(args.output, "--output")  # before TensorRT spends minutes on the build
    profile = None
    if args.min_shape or args.opt_shape or args.max_shape:
        if not (args.min_shape and args.opt_shape and args.max_shape):
            raise ValueError("give all of --min-shape, --opt-shape and --max-shape (images, BxCxHxW)")
        shapes = [parse_shape(s) for s in (args.min_shape, args.opt_shape, args.max_shape)]
        profile = {"images": tuple(shapes), "sizes": tuple((s[0], 2) for s in shapes)}
    build_engine(
        args.onnx, args.output, fp16=args.fp16, workspace_gb=args.workspace, profile=profile,
        max_batch=args.max_batch, timing_cache=args.timing_cache, device=args.device, force=args.force,
    )  # fmt: skip
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
                                 conf=args.conf, max_det=args.max_det, min_size=args.min_size, max_size=args.max_size))
        for m, b in pairs
    ]  # fmt: skip


def _cmd_bench(args: argparse.Namespace) -> int:
    from .jobs.bench import benchmark, markdown_table, plot_runs, write_json
    from .jobs.outputs import check_writable

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
                    min_size=args.min_size, max_size=args.max_size, half=args.half)  # fmt: skip
    result = evaluate_coco(seg, args.coco_json, args.images, args.max_images, args.json, progress=not args.quiet)
    for kind in ("segm", "bbox"):
        stats = ", ".join(f"{k} {v:.1f}" if v is not None else f"{k} -" for k, v in result[kind].items())
        print(f"{kind} ({'masks' if kind == 'segm' else 'boxes from masks'}): {stats}")
    print(f"{result['images']} images, {result['instances']} instances, {result['seconds']:.1f} s")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .jobs.demo import run_demo

    run_demo(args.output, num_images=args.num_images, iters=args.iters)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (it prints the whole usage by default); exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_predict_parsers(sub: argparse._SubParsersAction) -> None:
    """predict and track: one source in, instances (and track ids) out."""
    for name in ("predict", "track"):
        if name == "predict":
            p = sub.add_parser(name, help="segment images, a folder, a video, a camera or a stream URL")
        else:
            p = sub.add_parser(name, help="segment and track: persistent instance ids (ByteTrack-style)")
        p.add_argument("source", help="image, folder of images, video file, camera index (0) or rtsp/http URL")
        p.add_argument("--model", "-m", required=True, help="checkpoint (.pth/.safetensors), artifact, or zoo name")
        p.add_argument("--conf", type=float, default=0.3, help="minimum instance score (default 0.3)")
        p.add_argument("--max-det", type=int, default=100, help="at most this many instances per image")
        p.add_argument("--save", metavar="DIR", help="write annotated images (or the annotated video) here")
        p.add_argument("--json", metavar="FILE", help="results as frames complete: .jsonl lines, else COCO JSON")
        p.add_argument("--no-pipeline", action="store_true", help="run the stages one after another (to compare)")
        p.add_argument("--batch", type=int, default=1, help="frames per backend call (default 1)")
        p.add_argument("--vid-stride", type=int, default=1, help="use every n-th frame (default 1)")
        p.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=None,
                       help="process the newest frame, dropping others (default: for cameras and streams)")  # fmt: skip
        p.add_argument("--timeout", type=float, default=10.0, help="seconds to connect to a camera or URL")
        p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
        if name == "track":
            p.add_argument("--mot", metavar="FILE", help="write MOTChallenge lines frame,id,x,y,w,h,score,-1,-1,-1")
            p.add_argument("--gt", metavar="FILE", help="MOTChallenge ground truth: print MOTA/IDF1 of --mot")
            p.add_argument("--trails", action="store_true", help="draw recent track centres")
            p.add_argument("--track-high", type=float, default=0.5, help="score of first-stage detections")
            p.add_argument("--track-low", type=float, default=0.1, help="least score of second-stage detections")
            p.add_argument("--max-lost", type=int, default=30, help="frames a lost track is kept")
        _add_model_options(p)
        if name == "predict":
            serving_cli.add_ray_options(p)
        p.set_defaults(func=_cmd_predict)


def _add_artifact_parsers(sub: argparse._SubParsersAction) -> None:
    """info, export and build: what a model is, and the artifacts made from it."""
    p = sub.add_parser("info", help="describe a checkpoint or artifact: variant, architecture, classes, test size")
    p.add_argument("model", help="checkpoint, artifact or zoo name")
    p.add_argument("--backend", choices=("torch", "onnxruntime", "tensorrt"))
    p.add_argument("--device")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("export", help="export a checkpoint to ONNX (e2e or raw outputs; FP32, FP16-mixed or INT8)")
    p.add_argument("model", help="checkpoint (.pth/.safetensors) or zoo name")
    p.add_argument("--output", "-o", required=True, help="the .onnx file to write")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width (default: static)")
    p.add_argument("--min-size", type=int, help="test-time short side recorded in the file (default: the model's)")
    p.add_argument("--max-size", type=int, help="test-time long-side cap recorded in the file (default: the model's)")
    p.add_argument("--imgsz", help="fixed padded input HxW of a static graph (default: the test size rounded to /32)")
    p.add_argument("--batch", type=int, default=1, help="fixed batch of a static graph (default 1)")
    p.add_argument("--fp16", action="store_true", help="FP16-mixed graph (float32 kept where needed)")
    p.add_argument("--raw", action="store_true", help="raw pred_logits/pred_masks outputs instead of the top pairs")
    p.add_argument("--opset", type=int, help="ONNX opset (default 19; 17 with --dcn-plugin)")
    p.add_argument("--max-det", type=int, default=100, help="query x class pairs kept by the graph (default 100)")
    p.add_argument("--dcn-plugin", action="store_true", help="DCN as TensorRT plugin nodes (for TRT 8.6)")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    p.add_argument("--int8", action="store_true", help="INT8 Q/DQ graph (ONNX Runtime, TensorRT explicit quantization)")
    p.add_argument("--calib", help="folder of calibration images for --int8 (real images of the target domain)")
    p.add_argument("--calib-images", type=int, default=32, help="calibration images used (default 32)")
    p.add_argument("--calib-method", choices=("percentile", "entropy", "minmax"), default="percentile",
                   help="activation-range calibration (default percentile, 99.999)")  # fmt: skip
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("build", help="build a TensorRT engine from an exported ONNX file, on this GPU")
    p.add_argument("onnx", help="the .onnx file from `fastinst-rt export`")
    p.add_argument("--output", "-o", help="engine path (default: beside the ONNX, named by GPU/TensorRT/precision)")
    p.add_argument("--fp16", action="store_true", help="FP16 kernels for an FP32 graph (TensorRT < 11)")
    p.add_argument("--workspace", type=float, default=4.0, help="builder workspace in GiB (default 4)")
    p.add_argument("--min-shape", help="dynamic graphs: smallest images shape, e.g. 1x3x320x320")
    p.add_argument("--opt-shape", help="dynamic graphs: the shape to tune for, e.g. 1x3x576x800")
    p.add_argument("--max-shape", help="dynamic graphs: largest images shape, e.g. 4x3x800x800")
    p.add_argument("--max-batch", type=int, default=1, help="largest batch of the default dynamic profile")
    p.add_argument("--timing-cache", help="read and update this timing cache (faster rebuilds)")
    p.add_argument("--device", type=int, default=0, help="CUDA device index")
    p.add_argument("--force", action="store_true", help="rebuild even if an up-to-date engine exists")
    p.set_defaults(func=_cmd_build)


def _add_training_parsers(sub: argparse._SubParsersAction) -> None:
    """train and synth."""
    p = sub.add_parser("train", help="train a model on a COCO-format dataset (the paper's recipe)")
    p.add_argument("--data", required=True, help="COCO instances JSON (polygons or RLE)")
    p.add_argument("--images", required=True, help="folder the JSON's file names are relative to")
    p.add_argument("--model", "-m", default="fastinst-small-r26-d2", help="zoo variant (default fastinst-small-r26-d2)")
    p.add_argument("--init", help="checkpoint to start from (official .pth or ours), loaded strictly")
    p.add_argument("--output", "-o", default="runs/train", help="run folder (default runs/train)")
    p.add_argument("--iters", type=int, default=2000, help="iterations (default 2000)")
    p.add_argument("--batch", type=int, default=8, help="total batch over all GPUs (default 8)")
    p.add_argument("--lr", type=float, default=1e-4, help="base learning rate (default 1e-4)")
    p.add_argument("--backbone-lr", type=float, default=0.1, help="backbone LR factor (0.1 official; 1.0 from scratch)")
    p.add_argument("--train-size", type=int, help="largest training short side; official sizes scaled to it")
    p.add_argument("--min-size", type=int, nargs="+", help="short-side choices of the final resize (override)")
    p.add_argument("--max-size", type=int, help="long-side cap of the final resize (override)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/last.pth")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when available)")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes (default 2)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--checkpoint-period", type=int, default=500, help="write last.pth every N iterations")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("synth", help="write a synthetic COCO-format dataset of coloured shapes")
    p.add_argument("--output", "-o", required=True, help="folder for images/ and annotations.json")
    p.add_argument("--num", type=int, default=200, help="number of images (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="256x320", help="HxW of the images (default 256x320)")
    p.add_argument("--classes", default="circle,square,triangle,star", help="comma-separated, from "
                   "circle,square,triangle,star,ring")  # fmt: skip
    p.add_argument("--format", choices=("jpg", "png"), default="jpg")
    p.add_argument("--segmentation", choices=("rle", "polygon"), default="rle")
    p.add_argument("--border-cut", type=float, default=0.0, help="share of shapes cut by an image edge, as in "
                   "videos (default 0)")  # fmt: skip
    p.add_argument("--video", action="store_true", help="a video with MOT ground truth instead (video.mp4, gt.txt)")
    p.add_argument("--frames", type=int, default=300, help="frames of --video (default 300)")
    p.add_argument("--fps", type=float, default=25.0, help="frame rate of --video (default 25)")
    p.add_argument("--every", type=int, help="a still-image training set of one decoded frame in N "
                   "of --videos videos (seeds SEED, SEED+1, ...)")  # fmt: skip
    p.add_argument("--videos", type=int, default=1, help="videos for --every (default 1)")
    p.add_argument("--include", nargs=2, metavar=("JSON", "N"), help="with --every: append the first N images "
                   "of this COCO still-image set")  # fmt: skip
    p.set_defaults(func=_cmd_synth)


def _add_measure_parsers(sub: argparse._SubParsersAction) -> None:
    """bench, eval and demo."""
    p = sub.add_parser("bench", help="latency per stage of models/backends side by side (table, JSON, chart)")
    p.add_argument("models", nargs="+", help="checkpoints, .onnx or .engine files, zoo names")
    p.add_argument("--backend", action="append", choices=("torch", "onnxruntime", "tensorrt"),
                   help="repeat to compare backends of one model")  # fmt: skip
    p.add_argument("--image", help="image to time on (default: a shipped 512x512 photo)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--conf", type=float, default=0.3)
    p.add_argument("--max-det", type=int, default=100)
    p.add_argument("--device")
    p.add_argument("--half", action="store_true", help="float16 (torch on CUDA)")
    p.add_argument("--cuda-graph", action="store_true", help="replay CUDA graphs (torch and TensorRT on CUDA)")
    p.add_argument("--min-size", type=int)
    p.add_argument("--max-size", type=int)
    p.add_argument("--json", metavar="FILE", help="write {'machine', 'runs': [...]} here")
    p.add_argument("--plot", metavar="FILE.png", help="write a chart comparing the runs")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("eval", help="COCO mask AP (and box AP from the masks) of any model or artifact")
    p.add_argument("model", help="checkpoint, .onnx or .engine file, zoo name")
    p.add_argument("--coco-json", required=True, help="COCO instances annotations")
    p.add_argument("--images", required=True, help="folder of the annotated images")
    p.add_argument("--max-images", type=int, help="only the first N images (by id)")
    p.add_argument("--json", metavar="FILE", help="write {'segm': {...}, 'bbox': {...}} here")
    p.add_argument("--conf", type=float, default=0.0, help="score threshold (default 0: the official protocol)")
    p.add_argument("--max-det", type=int, default=100)
    p.add_argument("--quiet", "-q", action="store_true")
    _add_model_options(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("demo", help="the bundled model on sample images, PyTorch and ONNX Runtime, timed")
    p.add_argument("--output", "-o", default="fastinst-demo", help="folder for the results (default fastinst-demo)")
    p.add_argument("--num-images", type=int, default=4)
    p.add_argument("--iters", type=int, default=10, help="timed iterations per backend")
    p.set_defaults(func=_cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastinst-rt", description="FastInst instance segmentation: run, export, deploy.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_predict_parsers(sub)
    _add_artifact_parsers(sub)
    _add_training_parsers(sub)
    _add_measure_parsers(sub)
    serving_cli.add_serve_parser(sub, _add_model_options)
    serving_cli.add_export_triton_parser(sub)
    for p in sub.choices.values():  # also accepted after the subcommand; SUPPRESS keeps a --debug given before it
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    return parser


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) if lines else type(error).__name__


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
