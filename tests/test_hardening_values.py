"""Every value a user gives is checked before work starts: numeric options (a stated range, never NaN or inf).

The option table is built by walking the real parser, so a new numeric option without a checked range fails here.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest

from fastinst_rt import Segmenter
from fastinst_rt.cli import build_parser
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
