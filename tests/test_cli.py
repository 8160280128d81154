"""The ``fastinst-rt`` command end to end: real photos and a real video in, pictures and COCO JSON out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from fastinst_rt.cli import main
from fastinst_rt.coco import COCO_CATEGORY_IDS

from .conftest import TEST_VARIANTS


def test_predict_image_writes_picture_and_json(tiny_checkpoints, photo, tmp_path: Path) -> None:
    image = tmp_path / "astronaut.jpg"
    Image.fromarray(photo).save(image)
    out_dir, json_path = tmp_path / "out", tmp_path / "res.json"
    model = str(tiny_checkpoints[TEST_VARIANTS[0]])
    cmd = [sys.executable, "-m", "fastinst_rt.cli", "predict", str(image), "--model", model,
           "--conf", "0.0", "--max-det", "7", "--save", str(out_dir), "--json", str(json_path), "--quiet"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "1 frame(s), 7 instance(s)" in proc.stdout
    drawn = cv2.imread(str(out_dir / "astronaut.jpg"))
    assert drawn.shape == (512, 512, 3)
    original = cv2.cvtColor(np.asarray(Image.open(image)), cv2.COLOR_RGB2BGR)
    assert np.abs(drawn.astype(int) - original).mean() > 1, "the picture must show the instances"
    records = json.loads(json_path.read_text())
    assert len(records) == 7
    for rec in records:
        assert rec["image_id"] == 0 and rec["file_name"] == "astronaut.jpg"
        assert rec["category_id"] in COCO_CATEGORY_IDS and 0 <= rec["score"] <= 1 and len(rec["bbox"]) == 4
        assert mask_utils.decode(rec["segmentation"]).shape == (512, 512)


def test_predict_folder_and_video(tiny_checkpoints, photo, photo_wide, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(photo).save(folder / "a.png")
    Image.fromarray(photo_wide).save(folder / "b.jpg")
    (folder / "notes.txt").write_text("not an image")
    model = str(tiny_checkpoints[TEST_VARIANTS[1]])
    assert main(["predict", str(folder), "-m", model, "--conf", "0", "--max-det", "3", "--save", str(tmp_path / "o"),
                 "--json", str(tmp_path / "f.json"), "-q"]) == 0  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a.png", "b.jpg"]  # each in its own format
    assert {r["file_name"] for r in json.loads((tmp_path / "f.json").read_text())} == {"a.png", "b.jpg"}

    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (600, 400))
    for shift in range(3):
        writer.write(np.roll(photo_wide[:, :, ::-1], 20 * shift, axis=1).copy())
    writer.release()
    assert main(["predict", str(video), "-m", model, "--conf", "0", "--max-det", "2", "--save", str(tmp_path / "v"),
                 "--json", str(tmp_path / "v.json"), "-q"]) == 0  # fmt: skip
    cap = cv2.VideoCapture(str(tmp_path / "v" / "clip.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    assert {r["image_id"] for r in json.loads((tmp_path / "v.json").read_text())} == {0, 1, 2}
    assert "3 frame(s), 6 instance(s)" in capsys.readouterr().out


def test_info_describes_a_checkpoint(tiny_official, capsys) -> None:
    assert main(["info", str(tiny_official[TEST_VARIANTS[1]]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend"] == "torch" and info["config"]["backbone"] == "resnet_vd"
    assert info["config"]["deform_stages"] == [False, False, True, True] and info["parameters"] > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["info", "fastinst-r51"], "unknown model"),
        (["predict", "missing.jpg", "-m", "fastinst-r51"], "unknown model"),
    ],
)
def test_errors_are_one_clear_line(argv, message, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_source_is_reported(tiny_checkpoints, tmp_path: Path, capsys) -> None:
    assert main(["predict", str(tmp_path / "none.jpg"), "-m", str(tiny_checkpoints[TEST_VARIANTS[0]])]) == 2
    assert "no such image, folder or video" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
