"""``fastinst-rt verify`` / ``build --verify``: an artifact judged against the ONNX it came from, through Polygraphy's
runners. Tested with two ONNX Runtime runners (no TensorRT here): a good graph passes, a broken one is refused."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from fastinst_rt.cli import main
from fastinst_rt.export import export_onnx
from fastinst_rt.export.engine_check import verify_artifact
from fastinst_rt.training.synth import make_synthetic_dataset

pytest.importorskip("polygraphy", reason="polygraphy (the verify extra) is not installed")

DEMO = "fastinst-demo"


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[str, Path]:
    """The bundled model's static FP32 and FP16 exports, a broken copy of the FP32 one, and held-out images."""
    root = tmp_path_factory.mktemp("verify")
    fp32 = export_onnx(DEMO, root / "fp32.onnx", imgsz=(256, 320), progress=False)
    fp16 = export_onnx(DEMO, root / "fp16.onnx", imgsz=(256, 320), fp16=True, progress=False)
    proto = onnx.load(str(fp32))
    # Break the pixel decoder's output projection (the mask features): the masks and their scores go wrong, the
    # graph still runs and still has the same inputs, outputs and metadata.
    target = next(i for i in proto.graph.initializer if "pixel_decoder" in i.name and i.name.endswith("weight")
                  and len(i.dims) == 4)  # fmt: skip
    weight = numpy_helper.to_array(target)
    target.CopyFrom(numpy_helper.from_array(-weight, target.name))
    broken = root / "broken.onnx"
    onnx.save(proto, str(broken))
    images = make_synthetic_dataset(root / "syn", 4, seed=7).parent / "images"
    return {"fp32": fp32, "fp16": fp16, "broken": broken, "images": images}


def test_a_good_graph_passes_and_a_broken_one_is_refused(graphs) -> None:
    images = sorted(graphs["images"].iterdir())
    agreement, problems = verify_artifact(graphs["fp16"], graphs["fp32"], images)
    assert problems == [] and agreement.matched >= 0.9 and agreement.mask_iou >= 0.9, agreement
    agreement, problems = verify_artifact(graphs["broken"], graphs["fp32"], images)
    assert problems and agreement.mask_iou < 0.9, agreement


def test_verify_cli(graphs, tmp_path: Path, capsys) -> None:
    folder = str(graphs["images"])
    assert main(["verify", str(graphs["fp16"]), str(graphs["fp32"]), "--images", folder]) == 0
    out = capsys.readouterr().out
    assert "on 4 image(s)" in out and "passed" in out
    assert main(["verify", str(graphs["broken"]), str(graphs["fp32"]), "--images", folder, "--num-images", "2"]) == 1
    captured = capsys.readouterr()
    assert "on 2 image(s)" in captured.out and captured.err.startswith("refused: ")
    other = export_onnx(DEMO, tmp_path / "other.onnx", imgsz=(256, 352), progress=False)
    assert main(["verify", str(other), str(graphs["fp32"])]) == 2  # not built from one another
    assert "differ in fixed_size" in capsys.readouterr().err
