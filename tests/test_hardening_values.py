"""Every value a user gives is checked before work starts: numeric options (a stated range, never NaN or inf), a
tracking ground truth (read and parsed before the first frame) and checkpoint weights (finite, at load).

The option table is built by walking the real parser, so a new numeric option without a checked range fails here.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fastinst_rt import Segmenter, load_model
from fastinst_rt.checkpoint import CheckpointError, first_non_finite, load_checkpoint
from fastinst_rt.cli import build_parser, main
from fastinst_rt.cli_parser import OPSETS, FloatRange, IntRange
from fastinst_rt.jobs.predict import predict_source
from fastinst_rt.runtime.sources import open_source

from .conftest import TEST_VARIANTS
from .test_hardening import cli_error

BUNDLED = Path(__file__).parents[1] / "fastinst_rt" / "assets" / "fastinst-demo.safetensors"
CHECKED = (IntRange, FloatRange)
# The numeric options where 0 (and -1) mean something; every other one must refuse them.
ZERO_OK = {
    ("predict", "--conf"), ("track", "--conf"), ("bench", "--conf"), ("eval", "--conf"), ("serve", "--conf"),
    ("track", "--track-high"), ("track", "--track-low"), ("track", "--max-lost"), ("synth", "--border-cut"),
    ("synth", "--seed"), ("train", "--seed"), ("train", "--workers"), ("train", "--backbone-lr"),
    ("bench", "--warmup"), ("build", "--device"), ("serve", "--batch-wait-ms"), ("serve", "--max-queued"),
    ("serve", "--replica-cpus"), ("export-triton", "--max-queue-delay-us"),
}  # fmt: skip
MINUS_ONE_OK = {("serve", "--max-queued")}  # -1: no limit


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _is_numeric(action: argparse.Action) -> bool:
    default_numeric = isinstance(action.default, (int, float)) and not isinstance(action.default, bool)
    return action.type in (int, float) or isinstance(action.type, CHECKED) or default_numeric


def _numeric_options() -> list[tuple[str, argparse.Action]]:
    return [(name, a) for name, p in _subparsers().items() for a in p._actions if a.option_strings and _is_numeric(a)]


def _base_argv(command: str) -> list[str]:
    """The subcommand with every required argument given a placeholder (a model file that does not exist)."""
    argv = [command]
    for a in _subparsers()[command]._actions:
        if not a.option_strings and a.dest not in ("help",):
            argv.append("no-such-model.safetensors")
        elif a.required:
            argv += [a.option_strings[0], "no-such-file"]
    return argv


def _cases() -> list:
    cases = []
    for command, action in _numeric_options():
        option = action.option_strings[0]
        for value in ("0", "-1", "nan", "inf"):
            if (value == "0" and (command, option) in ZERO_OK) or (value == "-1" and (command, option) in MINUS_ONE_OK):
                continue
            cases.append(pytest.param(command, option, value, id=f"{command}{option}={value}"))
    return cases


def test_every_numeric_option_has_a_checked_range_stated_in_its_help() -> None:
    options = _numeric_options()
    commands = {"predict", "track", "export", "build", "train", "synth", "bench", "eval", "demo", "serve"}
    assert len(options) > 60 and {c for c, _ in options} >= commands | {"export-triton"}
    for command, action in options:
        where = f"{command} {action.option_strings[0]}"
        assert isinstance(action.type, CHECKED), f"{where} has no checked range (type {action.type!r})"
        assert action.help and action.type.text in action.help, f"{where}: the help must say {action.type.text!r}"
        if action.default is not None:  # the default is inside its own range
            assert action.type(str(action.default)) == action.default, where
    from fastinst_rt.export.onnx_export import MAX_OPSET, PLUGIN_OPSET

    assert (OPSETS.lo, OPSETS.hi) == (PLUGIN_OPSET, MAX_OPSET)


@pytest.mark.parametrize("command, option, value", _cases())
def test_bad_numbers_end_in_one_line_before_any_work(command, option, value, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    line = cli_error([*_base_argv(command), option, value], capsys, f"argument {option}", repr(value))
    assert line.startswith(f"fastinst-rt {command}: error: ")
    assert not list(tmp_path.iterdir()), "nothing may be written"


def test_zero_and_minus_one_are_accepted_where_they_mean_something() -> None:
    parser = build_parser()
    for command, option in ZERO_OK:
        value = "-1" if (command, option) in MINUS_ONE_OK else "0"
        args = parser.parse_args([*_base_argv(command), option, value])
        assert getattr(args, option.lstrip("-").replace("-", "_")) == int(value), (command, option)


def test_the_library_checks_stride_batch_and_timeout_where_they_enter(tiny_checkpoints, photo, tmp_path) -> None:
    seg = Segmenter(tiny_checkpoints[TEST_VARIANTS[0]])
    out = tmp_path / "out"
    for kw, name in (({"vid_stride": 0}, "vid_stride"), ({"batch": 0}, "batch"), ({"vid_stride": 1.5}, "vid_stride")):
        with pytest.raises(ValueError, match=rf"^{name} must be an integer >= 1"):
            predict_source(seg, [photo], out, progress=False, **kw)
        with pytest.raises(ValueError, match=rf"^{name} must be an integer >= 1"):
            next(seg.stream([photo], **kw))
    assert not out.exists(), "refused before any output is made"
    for bad in (0, -1, math.nan, math.inf, "10"):
        with pytest.raises(ValueError, match=r"^timeout must be a finite number of seconds > 0"):
            open_source("rtsp://127.0.0.1:9/live", timeout=bad)
        with pytest.raises(ValueError, match=r"^timeout must be"):
            predict_source(seg, [photo], out, timeout=bad, progress=False)
    assert not out.exists()


# Ground truth for `track --gt`: read and checked before the first frame.


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A real 5-frame synthetic H.264 video (and its gt.txt), as `fastinst-rt synth --video --frames 5` writes."""
    pytest.importorskip("av", reason="video decoding needs PyAV (the video extra)")
    folder = tmp_path_factory.mktemp("gt-clip")
    assert main(["synth", "--video", "--frames", "5", "--size", "64x80", "--seed", "3", "-o", str(folder)]) == 0
    return folder / "video.mp4"


FAST = ["-m", "fastinst-demo", "--backend", "torch", "--device", "cpu", "--min-size", "64", "--max-size", "80", "-q"]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such MOTChallenge file: "),
        ("", "the ground truth holds no boxes"),
        ("\n\n", "the ground truth holds no boxes"),
        ("1,1,10,10,5,5,1,1,1\n2,1,nan,10,5,5,1,1,1\n", "line 2 holds NaN or inf"),
        ("1,1,10,10,inf,5,1,1,1\n", "line 1 holds NaN or inf"),
        ("1,1,10,10,5\n", "line 1 is not MOTChallenge"),
        ("1,1,ten,10,5,5,1,1,1\n", "line 1 is not MOTChallenge 'frame,id,x,y,w,h,...' (a field is not a number)"),
        ("0,1,10,10,5,5,1,1,1\n", "line 1 needs a whole frame number >= 1"),
        ("1,1,10,10,-5,5,1,1,1\n", "line 1 has a negative width or height"),
    ],
    ids=["missing", "empty", "blank", "nan", "inf", "short", "text", "frame0", "negative"],
)
def test_bad_ground_truth_is_refused_before_the_first_frame(clip, tmp_path, capsys, content, message) -> None:
    gt = tmp_path / "gt.txt"
    if content is not None:
        gt.write_text(content)
    mot, save = tmp_path / "pred.txt", tmp_path / "out"
    argv = ["track", str(clip), "--mot", str(mot), "--gt", str(gt), "--save", str(save), *FAST]
    cli_error(argv, capsys, str(gt), message)
    assert not mot.exists() and not save.exists(), "no output may be written"

    from fastinst_rt.jobs.track import track_source

    read = []

    def frames():  # a real source of frames that records how many were taken
        for i in range(3):
            read.append(i)
            yield np.zeros((64, 80, 3), np.uint8)

    seg = Segmenter("fastinst-demo", device="cpu", min_size=64, max_size=80)
    with pytest.raises((ValueError, OSError), match=re.escape(message)):
        track_source(seg, frames(), mot_path=mot, gt_path=gt, progress=False)
    assert read == [] and not mot.exists(), "no frame may be read before the ground truth is checked"


def test_ground_truth_is_never_the_mot_output(clip, tmp_path, capsys) -> None:
    gt = tmp_path / "gt.txt"
    gt.write_bytes((clip.parent / "gt.txt").read_bytes())
    before = gt.read_bytes()
    cli_error(["track", str(clip), "--mot", str(gt), "--gt", str(gt), *FAST], capsys, "would be overwritten")
    assert gt.read_bytes() == before


# Checkpoints whose weights are not finite are refused at load.


def _nan_copy(path: Path, value: float = math.nan) -> tuple[Path, str]:
    """The bundled model with one weight set to ``value``, our metadata kept; (file, the tensor's name)."""
    with safe_open(str(BUNDLED), "pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    name = "decoder.class_embed_layers.0.layers.2.weight"
    state[name] = state[name].clone()
    state[name][0, 0] = value
    save_file(state, str(path), metadata=meta)
    return path, name


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_are_refused_at_load(tmp_path: Path, photo, capsys, value) -> None:
    bad, tensor = _nan_copy(tmp_path / "nan.safetensors", value)
    expected = rf"nan\.safetensors: tensor {tensor} holds NaN or inf"
    for load in (load_checkpoint, load_model, Segmenter):
        with pytest.raises(CheckpointError, match=expected):
            load(bad)
    image = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(photo).save(image)
    out = tmp_path / "out"
    cli_error(["predict", str(image), "-m", str(bad), "--save", str(out), "-q"], capsys, str(bad), tensor, "NaN or inf")
    cli_error(["export", str(bad), "-o", str(tmp_path / "m.onnx")], capsys, str(bad), tensor)
    assert not out.exists() and not (tmp_path / "m.onnx").exists()
    assert load_checkpoint(BUNDLED)[1].name == "fastinst-demo"  # the original still loads


def test_first_non_finite_on_tensors_and_arrays() -> None:
    ok = [("a", torch.ones(3)), ("i", torch.arange(3)), ("b", np.zeros(2, np.float16)), ("m", np.ones(2, bool))]
    assert first_non_finite(ok) is None
    assert first_non_finite([*ok, ("x", np.array([1.0, np.inf], np.float32)), ("y", torch.tensor([np.nan]))]) == "x"
    assert first_non_finite([("y", torch.tensor([1.0, np.nan], dtype=torch.bfloat16))]) == "y"
