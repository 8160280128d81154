"""The arguments of every ``fastinst-rt`` subcommand (``cli.py`` runs them)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn

from .artifact import MAX_TEST_SIZE
from .serving import cli as serving_cli

__all__ = [
    "build_parser", "add_model_options", "IntRange", "FloatRange", "positive_int", "non_negative_int", "seed_int",
    "resize_side", "fraction", "positive_float", "non_negative_float", "add_resize_option",
]  # fmt: skip


class IntRange:
    """An argparse ``type``: an integer in ``[lo, hi]`` (None: unbounded on that side); ``text`` states the range."""

    def __init__(self, lo: int | None = None, hi: int | None = None) -> None:
        self.lo, self.hi = lo, hi
        if lo is not None and hi is not None:
            self.text = f"{lo}..{hi}"
        else:
            self.text = f">= {lo}" if lo is not None else f"<= {hi}" if hi is not None else "any integer"

    def __call__(self, value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer ({self.text}), got {value!r}") from None
        if (self.lo is not None and number < self.lo) or (self.hi is not None and number > self.hi):
            raise argparse.ArgumentTypeError(f"must be an integer {self.text}, got {value!r}")
        return number

    def __repr__(self) -> str:
        return f"IntRange({self.lo}, {self.hi})"


class FloatRange:
    """An argparse ``type``: a finite number between ``lo`` and ``hi`` (None: unbounded), each end closed unless
    named in ``open_ends`` ("lo", "hi"); NaN and infinities are always refused. ``text`` states the range."""

    def __init__(self, lo: float | None = None, hi: float | None = None, open_ends: tuple[str, ...] = ()) -> None:
        self.lo, self.hi, self.open_ends = lo, hi, open_ends
        lo_open, hi_open = "lo" in open_ends, "hi" in open_ends
        if lo is not None and hi is not None:
            self.text = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        elif lo is not None:
            self.text = f"{'>' if lo_open else '>='} {lo:g}"
        else:
            self.text = f"{'<' if hi_open else '<='} {hi:g}" if hi is not None else "finite"

    def __call__(self, value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number ({self.text}), got {value!r}") from None
        if not math.isfinite(number) or not self._inside(number):
            raise argparse.ArgumentTypeError(f"must be a finite number {self.text}, got {value!r}")
        return number

    def _inside(self, number: float) -> bool:
        lo_ok = self.lo is None or (number > self.lo if "lo" in self.open_ends else number >= self.lo)
        hi_ok = self.hi is None or (number < self.hi if "hi" in self.open_ends else number <= self.hi)
        return lo_ok and hi_ok

    def __repr__(self) -> str:
        return f"FloatRange({self.lo}, {self.hi}, open_ends={self.open_ends})"


# The checked types of every numeric option (here and in serving/cli.py); tests/test_hardening_values.py walks the
# parser and fails on a numeric option that uses none of them, or whose help does not state its range.
positive_int = IntRange(1)
non_negative_int = IntRange(0)
seed_int = IntRange(0, 2**32 - 1)  # numpy's generators refuse negative seeds
resize_side = IntRange(32, MAX_TEST_SIZE)  # preprocess.check_test_size's bounds
fraction = FloatRange(0.0, 1.0)
positive_float = FloatRange(0.0, open_ends=("lo",))
non_negative_float = FloatRange(0.0)
OPSETS = IntRange(17, 21)  # export.onnx_export's PLUGIN_OPSET..MAX_OPSET (that module imports torch)
WORKSPACE_GIB = FloatRange(0.0, 1024.0, open_ends=("lo",))
FPS = FloatRange(0.0, 1000.0, open_ends=("lo",))


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The backend and test-size options of the commands that run a model (predict, track, eval, serve)."""
    p.add_argument("--backend", choices=("torch", "onnxruntime", "tensorrt"), help="default: from the file type")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when available)")
    p.add_argument("--half", action="store_true", help="float16 inference (CUDA)")
    p.add_argument(
        "--min-size", type=resize_side, help=f"test-time short side, {resize_side.text} (default: the model's)"
    )
    p.add_argument(
        "--max-size", type=resize_side, help=f"test-time long-side cap, {resize_side.text} (default: the model's)"
    )
    add_resize_option(p)


def add_resize_option(p: argparse.ArgumentParser) -> None:
    """``--resize exact|fast``: the test-time resize (``preprocess.RESIZE_MODES``); each command resolves None to
    its default (``eval``: exact, the others: ``segmenter.DEFAULT_RESIZE``)."""
    p.add_argument("--resize", choices=("exact", "fast"), help="test-time resize: exact (the official PIL bilinear, "
                   "for parity) or fast (box halvings of a large frame first, same pixels under a 4x shrink); "
                   "default fast, exact for eval")  # fmt: skip


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
        p.add_argument("--conf", type=fraction, default=0.3, help="minimum instance score, in [0, 1] (default 0.3)")
        p.add_argument("--max-det", type=positive_int, default=100, help="at most this many instances per image "
                       "(>= 1, default 100)")  # fmt: skip
        p.add_argument("--save", metavar="DIR", help="write annotated images (or the annotated video) here")
        p.add_argument("--json", metavar="FILE", help="results as frames complete: .jsonl lines, else COCO JSON")
        p.add_argument("--segmentation", choices=("rle", "polygon"), default="rle",
                       help="masks in --json: COCO compressed RLE (default, exact) or COCO polygons "
                       "[[x1,y1,...],...] (outer contours)")  # fmt: skip
        p.add_argument("--save-txt", metavar="DIR",
                       help="write YOLO-seg labels here, one .txt per image or frame (class x1 y1 x2 y2 ... in "
                       "[0, 1], one line per polygon part; a folder apart from --save)")  # fmt: skip
        p.add_argument("--no-pipeline", action="store_true", help="run the stages one after another (to compare)")
        p.add_argument("--batch", type=positive_int, default=1, help="frames per backend call (>= 1, default 1)")
        p.add_argument("--vid-stride", type=positive_int, default=1, help="use every n-th frame (>= 1, default 1)")
        p.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=None,
                       help="process the newest frame, dropping others (default: for cameras and streams)")  # fmt: skip
        p.add_argument("--timeout", type=positive_float, default=10.0, help="seconds to connect to a camera or URL, "
                       "and to wait for its next frame (> 0, default 10)")  # fmt: skip
        p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
        if name == "track":
            p.add_argument("--mot", metavar="FILE", help="write MOTChallenge lines frame,id,x,y,w,h,score,-1,-1,-1")
            p.add_argument("--gt", metavar="FILE", help="MOTChallenge ground truth: print MOTA/IDF1 of --mot")
            p.add_argument("--trails", action="store_true", help="draw recent track centres")
            p.add_argument("--track-high", type=fraction, default=0.5, help="score of first-stage detections, "
                           "in [0, 1] (default 0.5)")  # fmt: skip
            p.add_argument("--track-low", type=fraction, default=0.1, help="least score of second-stage detections, "
                           "in [0, 1] (default 0.1)")  # fmt: skip
            p.add_argument("--max-lost", type=non_negative_int, default=30, help="frames a lost track is kept "
                           "(>= 0, default 30)")  # fmt: skip
        add_model_options(p)
        if name == "predict":
            serving_cli.add_ray_options(p)


def _add_artifact_parsers(sub: argparse._SubParsersAction) -> None:
    """info, export and build: what a model is, and the artifacts made from it."""
    p = sub.add_parser("info", help="describe a checkpoint or artifact: variant, architecture, classes, test size")
    p.add_argument("model", help="checkpoint, artifact or zoo name")
    p.add_argument("--backend", choices=("torch", "onnxruntime", "tensorrt"))
    p.add_argument("--device")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("export", help="export a checkpoint to ONNX (e2e or raw outputs; FP32, FP16-mixed or INT8)")
    p.add_argument("model", help="checkpoint (.pth/.safetensors) or zoo name")
    p.add_argument("--output", "-o", required=True, help="the .onnx file to write")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width (default: static)")
    p.add_argument("--min-size", type=resize_side, help=f"test-time short side recorded in the file, "
                   f"{resize_side.text} (default: the model's)")  # fmt: skip
    p.add_argument("--max-size", type=resize_side, help=f"test-time long-side cap recorded in the file, "
                   f"{resize_side.text} (default: the model's)")  # fmt: skip
    p.add_argument("--imgsz", help="fixed padded input HxW of a static graph (default: the test size rounded to /32)")
    p.add_argument("--batch", type=positive_int, default=1, help="fixed batch of a static graph (>= 1, default 1)")
    p.add_argument("--fp16", action="store_true", help="FP16-mixed graph (float32 kept where needed)")
    p.add_argument("--raw", action="store_true", help="raw pred_logits/pred_masks outputs instead of the top pairs")
    p.add_argument("--opset", type=OPSETS, help=f"ONNX opset, {OPSETS.text} (default 19; 17 with --dcn-plugin)")
    p.add_argument("--max-det", type=positive_int, default=100, help="query x class pairs kept by the graph "
                   "(>= 1, default 100)")  # fmt: skip
    p.add_argument("--dcn-plugin", action="store_true", help="DCN as TensorRT plugin nodes (for TRT 8.6)")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    p.add_argument("--int8", action="store_true", help="INT8 Q/DQ graph (ONNX Runtime, TensorRT explicit quantization)")
    p.add_argument("--calib", help="folder of calibration images for --int8 (real images of the target domain)")
    p.add_argument("--calib-images", type=positive_int, default=32, help="calibration images used (>= 1, default 32)")
    p.add_argument("--calib-method", choices=("percentile", "entropy", "minmax"), default="percentile",
                   help="activation-range calibration (default percentile, 99.999; entropy: TensorRT's KL search, "
                        "2048 bins into 128)")  # fmt: skip
    p.add_argument("--calib-cache", metavar="FILE", help="with --calib: write the INT8 calibration here; without: "
                   "rebuild the same INT8 graph from it, no images needed")  # fmt: skip

    p = sub.add_parser("build", help="build a TensorRT engine from an exported ONNX file, on this GPU")
    p.add_argument("onnx", help="the .onnx file from `fastinst-rt export`")
    p.add_argument("--output", "-o", help="engine path (default: beside the ONNX, named by GPU/TensorRT/precision)")
    p.add_argument("--fp16", action="store_true", help="FP16 kernels for an FP32 graph (TensorRT < 11)")
    p.add_argument("--workspace", type=WORKSPACE_GIB, default=4.0, help=f"builder workspace in GiB, "
                   f"{WORKSPACE_GIB.text} (default 4)")  # fmt: skip
    p.add_argument("--min-shape", help="dynamic graphs: smallest images shape, e.g. 1x3x320x320")
    p.add_argument("--opt-shape", help="dynamic graphs: the shape to tune for, e.g. 1x3x576x800")
    p.add_argument("--max-shape", help="dynamic graphs: largest images shape, e.g. 4x3x800x800")
    p.add_argument("--max-batch", type=positive_int, default=1, help="largest batch of the default dynamic profile "
                   "(>= 1, default 1)")  # fmt: skip
    p.add_argument("--timing-cache", help="read and update this timing cache (faster rebuilds)")
    p.add_argument("--device", type=non_negative_int, default=0, help="CUDA device index (>= 0, default 0)")
    p.add_argument("--force", action="store_true", help="rebuild even if an up-to-date engine exists")
    p.add_argument("--verify", action="store_true", help="then judge the engine against the ONNX on real images "
                   "(as `fastinst-rt verify`)")  # fmt: skip
    _add_verify_options(p)

    p = sub.add_parser("verify", help="judge an engine (or ONNX file) against the ONNX it was built from: both run on "
                       "the same images, final instances compared with the export gates' tolerances")  # fmt: skip
    p.add_argument("candidate", help="the .engine/.plan (with its sidecar) or .onnx file to judge")
    p.add_argument("reference", help="the .onnx file it was built from")
    _add_verify_options(p)


def _add_verify_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", help="folder of images like those the model will see (default: the shipped photo)")
    p.add_argument("--num-images", type=positive_int, default=8, help="images of --images used (>= 1, default 8)")


def _add_training_parsers(sub: argparse._SubParsersAction) -> None:
    """train and synth."""
    p = sub.add_parser("train", help="train a model on a COCO-format dataset (the paper's recipe)")
    p.add_argument("--data", required=True, help="COCO instances JSON (polygons or RLE)")
    p.add_argument("--images", required=True, help="folder the JSON's file names are relative to")
    p.add_argument("--model", "-m", default="fastinst-small-r26-d2", help="zoo variant (default fastinst-small-r26-d2)")
    p.add_argument("--init", help="checkpoint to start from (official .pth or ours), loaded strictly")
    p.add_argument("--output", "-o", default="runs/train", help="run folder (default runs/train)")
    p.add_argument("--iters", type=positive_int, default=2000, help="iterations (>= 1, default 2000)")
    p.add_argument("--batch", type=positive_int, default=8, help="total batch over all GPUs (>= 1, default 8)")
    p.add_argument("--lr", type=positive_float, default=1e-4, help="base learning rate (> 0, default 1e-4)")
    p.add_argument("--backbone-lr", type=non_negative_float, default=0.1, help="backbone LR factor (>= 0; 0.1 "
                   "official, 1.0 from scratch, 0 a frozen backbone)")  # fmt: skip
    p.add_argument("--train-size", type=resize_side, help=f"largest training short side, {resize_side.text}; official "
                   "sizes scaled to it")  # fmt: skip
    p.add_argument("--min-size", type=resize_side, nargs="+", help=f"short-side choices of the final resize, "
                   f"{resize_side.text} (override)")  # fmt: skip
    p.add_argument("--max-size", type=resize_side, help=f"long-side cap of the final resize, {resize_side.text} "
                   "(override)")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/last.pth")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when available)")
    p.add_argument("--workers", type=non_negative_int, default=2, help="data-loading processes (>= 0, default 2)")
    p.add_argument("--seed", type=seed_int, default=42, help=f"random seed, {seed_int.text} (default 42)")
    p.add_argument("--checkpoint-period", type=positive_int, default=500, help="write last.pth every N iterations "
                   "(>= 1, default 500)")  # fmt: skip
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    p = sub.add_parser("synth", help="write a synthetic COCO-format dataset of coloured shapes")
    p.add_argument("--output", "-o", required=True, help="folder for images/ and annotations.json")
    p.add_argument("--num", type=positive_int, default=200, help="number of images (>= 1, default 200)")
    p.add_argument("--seed", type=seed_int, default=0, help=f"random seed, {seed_int.text} (default 0)")
    p.add_argument("--size", default="256x320", help="HxW of the images (default 256x320)")
    p.add_argument("--classes", default="circle,square,triangle,star", help="comma-separated, from "
                   "circle,square,triangle,star,ring")  # fmt: skip
    p.add_argument("--format", choices=("jpg", "png"), default="jpg")
    p.add_argument("--segmentation", choices=("rle", "polygon"), default="rle")
    p.add_argument("--border-cut", type=fraction, default=0.0, help="share of shapes cut by an image edge, as in "
                   "videos, in [0, 1] (default 0)")  # fmt: skip
    p.add_argument("--video", action="store_true", help="a video with MOT ground truth instead (video.mp4, gt.txt)")
    p.add_argument("--frames", type=positive_int, default=300, help="frames of --video (>= 1, default 300)")
    p.add_argument("--fps", type=FPS, default=25.0, help=f"frame rate of --video, {FPS.text} (default 25)")
    p.add_argument("--every", type=positive_int, help="a still-image training set of one decoded frame in N "
                   "(>= 1) of --videos videos (seeds SEED, SEED+1, ...)")  # fmt: skip
    p.add_argument("--videos", type=positive_int, default=1, help="videos for --every (>= 1, default 1)")
    p.add_argument("--include", nargs=2, metavar=("JSON", "N"), help="with --every: append the first N images "
                   "of this COCO still-image set")  # fmt: skip


def _add_measure_parsers(sub: argparse._SubParsersAction) -> None:
    """bench, eval and demo."""
    p = sub.add_parser("bench", help="latency per stage of models/backends side by side (table, JSON, chart)")
    p.add_argument("models", nargs="+", help="checkpoints, .onnx or .engine files, zoo names")
    p.add_argument("--backend", action="append", choices=("torch", "onnxruntime", "tensorrt"),
                   help="repeat to compare backends of one model")  # fmt: skip
    p.add_argument("--image", help="image to time on (default: a shipped 512x512 photo)")
    p.add_argument("--batch", type=positive_int, default=1, help="images per call (>= 1, default 1)")
    p.add_argument("--warmup", type=non_negative_int, default=5, help="untimed calls first (>= 0, default 5)")
    p.add_argument("--iters", type=positive_int, default=50, help="timed calls (>= 1, default 50)")
    p.add_argument("--conf", type=fraction, default=0.3, help="minimum instance score, in [0, 1] (default 0.3)")
    p.add_argument("--max-det", type=positive_int, default=100, help="instances per image (>= 1, default 100)")
    p.add_argument("--device")
    p.add_argument("--half", action="store_true", help="float16 (torch on CUDA)")
    p.add_argument("--cuda-graph", action="store_true", help="replay CUDA graphs (torch and TensorRT on CUDA)")
    p.add_argument("--min-size", type=resize_side, help=f"test-time short side, {resize_side.text}")
    p.add_argument("--max-size", type=resize_side, help=f"test-time long-side cap, {resize_side.text}")
    add_resize_option(p)
    p.add_argument("--json", metavar="FILE", help="write {'machine', 'runs': [...]} here")
    p.add_argument("--plot", metavar="FILE.png", help="write a chart comparing the runs")

    p = sub.add_parser("eval", help="COCO mask AP (and box AP from the masks) of any model or artifact")
    p.add_argument("model", help="checkpoint, .onnx or .engine file, zoo name")
    p.add_argument("--coco-json", required=True, help="COCO instances annotations")
    p.add_argument("--images", required=True, help="folder of the annotated images")
    p.add_argument("--max-images", type=positive_int, help="only the first N images by id (>= 1)")
    p.add_argument("--json", metavar="FILE", help="write {'segm': {...}, 'bbox': {...}} here")
    p.add_argument("--conf", type=fraction, default=0.0, help="score threshold, in [0, 1] (default 0: the official "
                   "protocol)")  # fmt: skip
    p.add_argument("--max-det", type=positive_int, default=100, help="instances per image (>= 1, default 100)")
    p.add_argument("--quiet", "-q", action="store_true")
    add_model_options(p)

    p = sub.add_parser("demo", help="the bundled model on sample images, PyTorch and ONNX Runtime, timed")
    p.add_argument("--output", "-o", default="fastinst-demo", help="folder for the results (default fastinst-demo)")
    p.add_argument("--num-images", type=positive_int, default=4, help="sample images (>= 1, default 4)")
    p.add_argument("--iters", type=positive_int, default=10, help="timed iterations per backend (>= 1, default 10)")


def build_parser(commands: dict[str, Callable[[argparse.Namespace], int]]) -> argparse.ArgumentParser:
    """Every subcommand's arguments; ``commands`` gives the function each of ours runs (``args.func``), the serving
    ones bring their own."""
    parser = _Parser(prog="fastinst-rt", description="FastInst instance segmentation: run, export, deploy.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--verbose", action="store_true", help="the library's debug messages too")
    parser.add_argument("--quiet", dest="log_quiet", action="store_true", help="the library's warnings only")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_predict_parsers(sub)
    _add_artifact_parsers(sub)
    _add_training_parsers(sub)
    _add_measure_parsers(sub)
    serving_cli.add_serve_parser(sub, add_model_options)
    serving_cli.add_export_triton_parser(sub)
    for name, command in commands.items():
        sub.choices[name].set_defaults(func=command)
    for p in sub.choices.values():  # also accepted after the subcommand; SUPPRESS keeps a --debug given before it
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    return parser
