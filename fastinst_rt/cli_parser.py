"""The arguments of every ``fastinst-rt`` subcommand (``cli.py`` runs them)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn

from .serving import cli as serving_cli

__all__ = ["build_parser", "add_model_options"]


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The backend and test-size options of the commands that run a model (predict, track, eval, serve)."""
    p.add_argument("--backend", choices=("torch", "onnxruntime", "tensorrt"), help="default: from the file type")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: CUDA when available)")
    p.add_argument("--half", action="store_true", help="float16 inference (CUDA)")
    p.add_argument("--min-size", type=int, help="test-time short side (default: the model's)")
    p.add_argument("--max-size", type=int, help="test-time long-side cap (default: the model's)")


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
                   help="activation-range calibration (default percentile, 99.999; entropy: TensorRT's KL search, "
                        "2048 bins into 128)")  # fmt: skip

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

    p = sub.add_parser("eval", help="COCO mask AP (and box AP from the masks) of any model or artifact")
    p.add_argument("model", help="checkpoint, .onnx or .engine file, zoo name")
    p.add_argument("--coco-json", required=True, help="COCO instances annotations")
    p.add_argument("--images", required=True, help="folder of the annotated images")
    p.add_argument("--max-images", type=int, help="only the first N images (by id)")
    p.add_argument("--json", metavar="FILE", help="write {'segm': {...}, 'bbox': {...}} here")
    p.add_argument("--conf", type=float, default=0.0, help="score threshold (default 0: the official protocol)")
    p.add_argument("--max-det", type=int, default=100)
    p.add_argument("--quiet", "-q", action="store_true")
    add_model_options(p)

    p = sub.add_parser("demo", help="the bundled model on sample images, PyTorch and ONNX Runtime, timed")
    p.add_argument("--output", "-o", default="fastinst-demo", help="folder for the results (default fastinst-demo)")
    p.add_argument("--num-images", type=int, default=4)
    p.add_argument("--iters", type=int, default=10, help="timed iterations per backend")


def build_parser(commands: dict[str, Callable[[argparse.Namespace], int]]) -> argparse.ArgumentParser:
    """Every subcommand's arguments; ``commands`` gives the function each of ours runs (``args.func``), the serving
    ones bring their own."""
    parser = _Parser(prog="fastinst-rt", description="FastInst instance segmentation: run, export, deploy.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
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
