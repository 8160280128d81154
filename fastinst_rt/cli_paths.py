"""What each ``fastinst-rt`` subcommand reads and writes, in one table, checked by ``io.paths`` before any work.

``main`` calls ``check_command_paths`` before the command runs (before a model is loaded, Ray is started or a frame
is decoded), so an output that would land on an input or on another output is refused with one line, for every
command alike, ``--ray`` included.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from .io.paths import Read, Write, check_paths, reads

__all__ = ["check_command_paths"]

Paths = tuple[list[Read], list[Write]]


def _model(what: str, *models: str | None) -> list[Read]:
    """A model file, and the JSON sidecar an engine is read with (writing over it would break the engine)."""
    return reads(what, *models) + reads(f"{what}'s sidecar", *(f"{m}.json" for m in models if m))


def _files(**named: str | None) -> list[Write]:
    """File outputs given as ``--json=...``-style keywords: the option name is the keyword with ``-`` for ``_``."""
    return [Write(f"--{k.replace('_', '-')}", Path(v)) for k, v in named.items() if v]


def _predict(args: argparse.Namespace) -> Paths:
    from .jobs.predict import output_paths

    read = _model("--model", args.model) + reads("the source", args.source, source=True)
    read += reads("--gt", getattr(args, "gt", None))
    if getattr(args, "ray", False) and args.json:  # the Ray path writes shards beside --json
        shards = Write("--json's shards", Path(f"{args.json}.shards"), folder=True, names=None)
        return read, [*_files(json=args.json), shards]
    files = {"--json": args.json, "--mot": getattr(args, "mot", None)}
    return read, output_paths(args.source, args.save, files, args.save_txt)


def _export(args: argparse.Namespace) -> Paths:
    if Path(args.output).suffix.lower() != ".onnx":
        raise ValueError(f"--output {args.output} must end in .onnx (the file type picks the backend that runs it)")
    read = _model("the model", args.model) + reads("--calib", args.calib)
    cache = getattr(args, "calib_cache", None)
    if cache and not args.calib:  # rebuilt from the cache: read
        return read + reads("--calib-cache", cache), _files(output=args.output)
    return read, _files(output=args.output, calib_cache=cache)


def _build(args: argparse.Namespace) -> Paths:
    # --timing-cache is read and updated in place on purpose; the engine and its sidecar are new files.
    if not args.output:
        return _model("the ONNX file", args.onnx), []  # the default engine path is named after the GPU
    sidecar = Write("--output's sidecar", Path(f"{args.output}.json"))
    return _model("the ONNX file", args.onnx), [*_files(output=args.output), sidecar]


def _train(args: argparse.Namespace) -> Paths:
    run_files = frozenset({"last.pth", "metrics.jsonl", "model_final.safetensors"})
    read = reads("--data", args.data) + reads("--images", args.images) + reads("--init", args.init)
    return read, [Write("--output", Path(args.output), folder=True, names=run_files)]


def _bench(args: argparse.Namespace) -> Paths:
    return _model("the model", *args.models) + reads("--image", args.image), _files(json=args.json, plot=args.plot)


def _eval(args: argparse.Namespace) -> Paths:
    read = _model("the model", args.model) + reads("--coco-json", args.coco_json) + reads("--images", args.images)
    return read, _files(json=args.json)


def _folder_out(option: str, attribute: str, *inputs: tuple[str, str]) -> Callable[[argparse.Namespace], Paths]:
    """A command that writes anything inside one folder (``option``) and reads the given (what, attribute)s."""

    def paths(args: argparse.Namespace) -> Paths:
        read = [r for what, name in inputs for r in _model(what, getattr(args, name, None))]
        return read, [Write(option, Path(getattr(args, attribute)), folder=True)]

    return paths


def _synth(args: argparse.Namespace) -> Paths:
    read = reads("--include", args.include[0]) if args.include else []
    return read, [Write("--output", Path(args.output), folder=True)]


def _verify(args: argparse.Namespace) -> Paths:
    return _model("the candidate", args.candidate) + _model("the reference", args.reference) + reads(
        "--images", args.images
    ), []


def _serve(args: argparse.Namespace) -> Paths:
    return _model("the model", args.model), []


COMMAND_PATHS: dict[str, Callable[[argparse.Namespace], Paths]] = {
    "predict": _predict, "track": _predict, "export": _export, "build": _build, "train": _train,
    "synth": _synth, "bench": _bench, "eval": _eval, "demo": _folder_out("--output", "output"),
    "export-triton": _folder_out("--repo", "repo", ("the artifact", "artifact")), "serve": _serve,
    "info": lambda args: ([], []), "verify": _verify,
}  # fmt: skip


def check_command_paths(args: argparse.Namespace) -> None:
    """Refuse, before any work, an output of ``args.command`` that would overwrite an input or another output."""
    check_paths(*COMMAND_PATHS[args.command](args))
