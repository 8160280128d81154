"""The library logs, the CLI prints: no ``print`` outside the command-line modules, and an application that embeds
the SDK routes or silences its messages through ``logging``."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

from fastinst_rt.cli import main
from fastinst_rt.export import export_onnx

from .conftest import TEST_VARIANTS, make_model

ROOT = Path(__file__).resolve().parents[1]
# The command line is where printing belongs.
CLI_MODULES = {
    "fastinst_rt/cli.py",
    "fastinst_rt/cli_parser.py",
    "fastinst_rt/cli_paths.py",
    "fastinst_rt/serving/cli.py",
}


def _prints(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), str(path))
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print"]


def test_no_print_in_the_library() -> None:
    files = [*ROOT.glob("fastinst_rt/**/*.py"), *ROOT.glob("export/*.py")]
    assert len(files) > 50
    found = {str(p.relative_to(ROOT)): _prints(p) for p in files if str(p.relative_to(ROOT)) not in CLI_MODULES}
    assert {k: v for k, v in found.items() if v} == {}
    assert _prints(ROOT / "fastinst_rt/cli.py")  # the check can see a print where there is one


def test_an_application_routes_and_silences_the_library(tmp_path: Path, caplog, capfd) -> None:
    model, info = make_model(TEST_VARIANTS[0])
    with caplog.at_level(logging.INFO):
        export_onnx(model, tmp_path / "a.onnx", info=info, imgsz=(160, 160), progress=True)
    messages = [r for r in caplog.records if r.name.startswith("fastinst_rt.")]
    assert any("wrote" in r.getMessage() for r in messages) and all(r.levelno == logging.INFO for r in messages)
    caplog.clear()
    capfd.readouterr()
    logging.getLogger("fastinst_rt").setLevel(logging.WARNING)
    try:
        export_onnx(model, tmp_path / "b.onnx", info=info, imgsz=(160, 160), progress=True)
    finally:
        logging.getLogger("fastinst_rt").setLevel(logging.NOTSET)
    assert not [r for r in caplog.records if r.name.startswith("fastinst_rt.")]
    assert "[fastinst-rt" not in capfd.readouterr().err


def test_the_cli_shows_the_library_messages_unless_quiet(tmp_path: Path, capsys) -> None:
    model, info = make_model(TEST_VARIANTS[0])
    from fastinst_rt.checkpoint import save_checkpoint

    ckpt = save_checkpoint(model, info, tmp_path / "m.safetensors")
    assert main(["export", str(ckpt), "-o", str(tmp_path / "a.onnx"), "--imgsz", "160x160"]) == 0
    assert "[fastinst-rt export] wrote" in capsys.readouterr().err
    assert main(["--quiet", "export", str(ckpt), "-o", str(tmp_path / "b.onnx"), "--imgsz", "160x160"]) == 0
    assert "[fastinst-rt" not in capsys.readouterr().err
