"""Bad checkpoints, sizes and images end in one clear error, from the library and from the CLI (exit 2, one line).

Every case writes a real bad file (empty, truncated, corrupt, forged metadata) and loads it through the same code
users run. A forged config is checked against the tensor shapes of the safetensors header before anything is built.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from fastinst_rt import Segmenter
from fastinst_rt.checkpoint import FORMAT_KEY, CheckpointError, load_checkpoint
from fastinst_rt.cli import main
from fastinst_rt.runtime.preprocess import MAX_TEST_SIZE, prepare, resize_image, resized_size
from fastinst_rt.zoo import MODELS

from .conftest import TEST_VARIANTS, make_model

VARIANT = TEST_VARIANTS[0]


def cli_error(argv: list[str], capsys, *needles: str) -> str:
    """Run the CLI in-process: exit status 2 and exactly one stderr line holding every needle, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _forged(path: Path, info_override: dict | None = None, raw_meta: str | None = None) -> Path:
    """Real tensors of the test variant, saved with our metadata replaced (or its ``info`` entries overridden)."""
    model, info = make_model(VARIANT)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    meta = {"format_version": 1, "info": {**info.to_dict(), **(info_override or {})}}
    save_file(state, str(path), metadata={FORMAT_KEY: raw_meta if raw_meta is not None else json.dumps(meta)})
    return path


def test_empty_truncated_and_corrupt_checkpoints(tiny_official, tiny_checkpoints, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pth is empty \(0 bytes\)"):
        load_checkpoint(empty)
    cli_error(["info", str(empty)], capsys, "empty.pth is empty (0 bytes), not a checkpoint")

    data = tiny_official[VARIANT].read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth could not be loaded as a weights-only checkpoint"):
        load_checkpoint(truncated)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    line = cli_error(["predict", str(empty), "-m", str(corrupt)], capsys, "corrupt.pth could not be loaded")
    assert "weights_only` set to `False`" not in line, "never pass on torch's advice to allow code execution"

    for name, blob in (("empty.safetensors", b""), ("cut.safetensors", tiny_checkpoints[VARIANT].read_bytes()[:-999])):
        bad = tmp_path / name
        bad.write_bytes(blob)
        with pytest.raises(CheckpointError, match=rf"{name} is not a readable safetensors file"):
            load_checkpoint(bad)
        cli_error(["info", str(bad)], capsys, f"{name} is not a readable safetensors file")


def test_metadata_not_json_or_without_config(tmp_path: Path, capsys) -> None:
    not_json = _forged(tmp_path / "notjson.safetensors", raw_meta="{'info': oops")
    with pytest.raises(CheckpointError, match=r"notjson\.safetensors: the 'fastinst_rt' metadata is not valid JSON"):
        load_checkpoint(not_json)
    cli_error(["info", str(not_json)], capsys, "metadata is not valid JSON")
    no_info = _forged(tmp_path / "noinfo.safetensors", raw_meta=json.dumps({"format_version": 1}))
    with pytest.raises(CheckpointError, match="has no 'info' object"):
        load_checkpoint(no_info)
    model, info = make_model(VARIANT)
    d = info.to_dict()
    del d["config"]
    no_config = _forged(tmp_path / "noconfig.safetensors", raw_meta=json.dumps({"format_version": 1, "info": d}))
    with pytest.raises(CheckpointError, match=r"noconfig\.safetensors: the metadata has no 'config'"):
        load_checkpoint(no_config)
    cli_error(["predict", "x.jpg", "-m", str(no_config)], capsys, "the metadata has no 'config'")
    typo = _forged(tmp_path / "typo.safetensors", {"config": {**info.config.to_dict(), "hidden_dims": 64}})
    with pytest.raises(CheckpointError, match="unknown FastInst config keys"):
        load_checkpoint(typo)


def test_huge_config_values_are_refused_before_building(tmp_path: Path, capsys) -> None:
    config = MODELS[VARIANT].config
    huge = _forged(tmp_path / "huge.safetensors", {"config": replace(config, hidden_dim=10**6).to_dict()})
    with pytest.raises(CheckpointError, match=r"config hidden_dim = 1000000 is out of bounds: integers in \[1, 4096\]"):
        load_checkpoint(huge)
    queries = _forged(tmp_path / "queries.safetensors", {"config": replace(config, num_queries=10**8).to_dict()})
    cli_error(["info", str(queries)], capsys, "config num_queries = 100000000 is out of bounds")
    # Within the bounds but 2.2 GB of FFN weights if built: refused from the header shapes, on the meta device.
    big = replace(config, hidden_dim=4096, nheads=8, dim_feedforward=65536, dec_layers=1)
    forged = _forged(tmp_path / "big.safetensors", {"config": big.to_dict()})
    # The child's own peak (VmHWM): ru_maxrss would start from the forking pytest's size, which Linux carries over exec.
    code = (
        "import re\nfrom fastinst_rt.checkpoint import load_checkpoint\n"
        f"try:\n    load_checkpoint({str(forged)!r})\nexcept ValueError as e:\n    print(e)\n"
        "print(int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) // 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    message, peak_mb = out.stdout.strip().splitlines()
    assert "big.safetensors does not match the FastInst architecture: " in message
    assert "pixel_decoder.adapter_2.norm.weight: checkpoint (64,) vs model (4096,)" in message
    assert int(peak_mb) < 1500, f"peak RSS {peak_mb} MB: the model must not be built before the shapes are checked"


def test_class_names_must_match_the_classifier_at_load(tmp_path: Path, capsys) -> None:
    three = _forged(tmp_path / "three.safetensors", {"class_names": ["a", "b", "c"]})
    with pytest.raises(CheckpointError, match=r"three\.safetensors: 3 class names for a classifier of 80 classes"):
        Segmenter(three, device="cpu")
    cli_error(["predict", "x.jpg", "-m", str(three)], capsys, "3 class names for a classifier of 80 classes")
    # A consistent count but a classifier of another size: the header shapes say so, naming the tensor.
    config = replace(MODELS[VARIANT].config, num_classes=3)
    other = _forged(tmp_path / "other.safetensors", {"config": config.to_dict(), "class_names": ["a", "b", "c"]})
    with pytest.raises(
        CheckpointError, match=r"class_embed_layers\.0\.layers\.2\.weight: checkpoint \(81, 64\) vs model"
    ):
        load_checkpoint(other)


def test_resize_target_is_bounded(tiny_checkpoints, tmp_path: Path, capsys) -> None:
    ckpt = str(tiny_checkpoints[VARIANT])
    with pytest.raises(ValueError, match=rf"bad test size 100000/100000: .* <= {MAX_TEST_SIZE} \(MAX_TEST_SIZE\)"):
        Segmenter(ckpt, min_size=100000, max_size=100000)
    with pytest.raises(ValueError, match=r"bad test size 640/100000: .* <= 2048 \(MAX_TEST_SIZE\)"):
        prepare([np.zeros((512, 512, 3), np.uint8)], 640, 100000)
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    argv = ["predict", str(image), "-m", ckpt, "--min-size", "100000", "--max-size", "100000", "-q"]
    cli_error(argv, capsys, "argument --min-size: must be an integer 32..2048, got '100000'")  # by the parser
    argv = ["predict", str(image), "-m", ckpt, "--min-size", "800", "--max-size", "400", "-q"]
    cli_error(argv, capsys, "bad test size 800/400: need 32 <= min_size <= max_size <= 2048 (MAX_TEST_SIZE)")
    out = tmp_path / "never.onnx"
    cli_error(["export", ckpt, "-o", str(out), "--max-size", "100000"], capsys, "argument --max-size: must be")
    cli_error(["export", ckpt, "-o", str(out), "--max-size", "300"], capsys, "bad test size 320/300")
    cli_error(["export", ckpt, "-o", str(out), "--imgsz", "100000"], capsys, "two sides in 32..2048")
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_extreme_aspect_ratio(tiny_checkpoints, tmp_path: Path, capsys) -> None:
    assert resized_size(1, 30000, 320, 427) == (1, 427), "a side never rounds to 0 pixels"
    assert resize_image(np.full((1, 30000, 3), 200, np.uint8), (1, 427)).shape == (1, 427, 3)
    thin = tmp_path / "thin.png"
    Image.fromarray(np.full((1, 30000, 3), 128, np.uint8)).save(thin)
    seg = Segmenter(tiny_checkpoints[VARIANT], conf=0.0, max_det=5)
    with pytest.raises(ValueError, match=r"image of 1x30000 \(HxW\) pixels is too thin for this model: .* 32x448"):
        seg.predict(thin)
    cli_error(["predict", str(thin), "-m", str(tiny_checkpoints[VARIANT]), "-q"], capsys, "1x30000", "too thin")
    # A test size that leaves enough positions: handled, masks at the original size.
    wide = Segmenter(tiny_checkpoints[VARIANT], conf=0.0, max_det=5, min_size=32, max_size=2048)
    res = wide.predict(thin)
    assert res.masks.shape == (5, 1, 30000) and np.isfinite(res.scores).all()


def test_predict_after_close(tiny_checkpoints, photo) -> None:
    seg = Segmenter(tiny_checkpoints[VARIANT])
    assert seg.predict(photo, color="rgb").masks.shape[1:] == (512, 512)
    seg.close()
    seg.close()  # harmless
    with pytest.raises(RuntimeError, match="this Segmenter is closed"):
        seg.predict(photo, color="rgb")


def test_unknown_zoo_name_suggests_the_close_one(capsys) -> None:
    with pytest.raises(CheckpointError, match=r"^unknown model 'fastinst-r50-d2'; did you mean 'fastinst-r50-d3'\?$"):
        load_checkpoint("fastinst-r50-d2")
    cli_error(["info", "fastinst-r50-d2"], capsys, "unknown model 'fastinst-r50-d2'; did you mean 'fastinst-r50-d3'?")
    cli_error(["info", "banana"], capsys, "unknown model 'banana'; known names: fastinst-r50-d1, ")


def test_other_user_errors_are_one_line(tiny_checkpoints, tmp_path: Path, capsys) -> None:
    ckpt = str(tiny_checkpoints[VARIANT])
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not really a jpeg")
    cli_error(["predict", str(corrupt), "-m", ckpt, "-q"], capsys, "could not decode image file", "corrupt.jpg")
    cli_error(["predict", str(tmp_path / "absent.jpg"), "-m", ckpt], capsys, "no such image, folder or video")
    cli_error(["export", ckpt, "-o", str(tmp_path / "m.onnx"), "--imgsz", "big"], capsys, "--imgsz must be HxW or N")
    cli_error(["predict", str(corrupt), "-m", ckpt, "--device", "banana"], capsys, "unknown device 'banana'")
    cli_error(["predict", str(corrupt), "-m", str(tmp_path)], capsys, "is a folder, not a checkpoint file")
    cli_error(["bench", ckpt, "--iters", "0"], capsys, "argument --iters: must be an integer >= 1, got '0'")
    cli_error(["predict", str(corrupt)], capsys, "the following arguments are required: --model/-m")
    cli_error(["predict", str(corrupt), "-m", ckpt, "--conf", "high"], capsys, "argument --conf: must be a number")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    cmd = [sys.executable, "-m", "fastinst_rt.cli", "info", str(empty)]
    plain = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines() == [
        f"fastinst-rt info: error: {empty} is empty (0 bytes), not a checkpoint"
    ]
    debug = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, timeout=300)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "CheckpointError" in debug.stderr
