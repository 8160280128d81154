"""`fastinst-rt bench`: a checkpoint and its ONNX export timed side by side, as a table, JSON and a chart."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from fastinst_rt.cli import main
from fastinst_rt.export.onnx_export import export_onnx
from fastinst_rt.jobs.bench import STAGES

from .conftest import TEST_VARIANTS


def test_bench_checkpoint_and_onnx(tiny_checkpoints, tmp_path: Path, capsys) -> None:
    ckpt = tiny_checkpoints[TEST_VARIANTS[0]]
    onnx_path = export_onnx(ckpt, tmp_path / "tiny.onnx", progress=False)
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["bench", str(ckpt), str(onnx_path), "--iters", "4", "--warmup", "1", "--device", "cpu",
            "--json", str(out_json), "--plot", str(out_png)]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out
    # Runs are labelled by file name, so that two exports of one model can be told apart.
    assert f"| {ckpt.name} | torch |" in table and "| tiny.onnx | onnxruntime |" in table
    assert "total p50/p90/p99 ms" in table
    data = json.loads(out_json.read_text())
    assert data["machine"]["cpus"] >= 1 and "versions" in data["machine"]
    assert [r["backend"] for r in data["runs"]] == ["torch", "onnxruntime"]
    # The static graph takes the test size rounded up to /32 in landscape; the photo fits it unchanged.
    assert [r["input_size"] for r in data["runs"]] == [[320, 320], [320, 448]]
    for run in data["runs"]:
        assert set(run["stages"]) == set(STAGES)
        for stage in STAGES:
            s = run["stages"][stage]
            assert 0 < s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
        assert run["fps"] > 0
    with Image.open(out_png) as im:
        assert im.size[0] > 400 and im.size[1] > 300


def test_bench_one_model_on_two_backends_needs_the_right_file(tiny_checkpoints, capsys) -> None:
    ckpt = str(tiny_checkpoints[TEST_VARIANTS[0]])
    assert main(["bench", ckpt, "--backend", "torch", "--backend", "onnxruntime", "--iters", "1"]) == 2
    assert "not a valid ONNX file" in capsys.readouterr().err  # a checkpoint is not an ONNX graph
    assert main(["bench"]) == 2  # a model is required: argparse's one line
    assert "the following arguments are required: models" in capsys.readouterr().err
    assert main(["bench", ckpt, ckpt, "--backend", "torch", "--backend", "onnxruntime"]) == 2
    assert "not both" in capsys.readouterr().err
