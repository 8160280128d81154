"""The README's commands run as written, offline, on a fresh clone, with the bundled model.

Every ``fastinst-rt`` line of the README's bash blocks runs in order in one folder (later lines use what earlier
ones wrote), in-process through ``cli.main``. A line is skipped only for a reason the README itself states on it
(``SKIP_TAGS``); "needs TensorRT" lines run where TensorRT is installed.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from fastinst_rt.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
# What a README line may say to be skipped here, and why.
SKIP_TAGS = {
    "official weights": "needs the official checkpoints (a download)",
    "needs COCO": "needs the COCO data set",
    "needs a camera": "needs a camera or stream URL",
    "needs GPUs": "needs several GPUs",
    "runs until Ctrl-C": "a server that runs until stopped (tests/test_serving.py starts and stops one)",
}
# A line marked "long" runs with the few iterations the README says try it.
LONG_ARGS = ["--iters", "2", "--batch", "2"]


def readme_commands() -> list[tuple[list[str], str | None]]:
    """(argv after ``fastinst-rt``, reason to skip or None) for every command line of the README's bash blocks."""
    text = README.read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            command, _, comment = line.partition("#")
            if not command.strip().startswith("fastinst-rt "):
                continue  # set-up lines (venv, pip; CI runs them) and torchrun
            reason = next((why for tag, why in SKIP_TAGS.items() if tag in comment), None)
            if reason is None and "needs TensorRT" in comment:
                reason = _tensorrt_missing()
            argv = shlex.split(command)[1:] + (LONG_ARGS if re.search(r"\blong\b", comment) else [])
            out.append((argv, reason))
    return out


def _tensorrt_missing() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed"
    return None


@pytest.mark.slow
def test_every_readme_command_runs_offline(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    commands = readme_commands()
    ran = []
    for argv, reason in commands:
        if reason is not None:
            continue
        assert main(argv) == 0, f"fastinst-rt {shlex.join(argv)}"
        ran.append(argv)
    assert len(ran) >= 18, ran  # the README's examples are not silently all skipped
    assert Path("out/results.json").is_file() and Path("demo-int8.onnx").is_file() and Path("ap.json").is_file()
    assert Path("triton-repo/demo/config.pbtxt").is_file() and Path("runs/s/model_final.safetensors").is_file()
