"""Jobs refuse bad ground truth and unwritable outputs before any work, and never leave a half-written file.

Read-only folders are real: the tests run as root, which ignores permission bits, so the folder is made immutable
with ``chattr +i`` (which binds root too) where the filesystem supports it, or given mode 0o555 when not root; a
folder under a regular file (which no one can create) is tested everywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from fastinst_rt import Segmenter
from fastinst_rt.cli import main
from fastinst_rt.coco import COCO_CATEGORY_IDS, COCO_CLASSES
from fastinst_rt.io.outputs import OutputError, check_writable, write_atomic
from fastinst_rt.jobs.coco_checks import rle_counts
from fastinst_rt.jobs.evaluate import evaluate_coco

from .conftest import TEST_VARIANTS
from .test_hardening import cli_error


@pytest.fixture
def readonly_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "readonly"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = ["chmod", "755", str(folder)]
    elif shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        undo = ["chattr", "-i", str(folder)]
    else:
        pytest.skip("running as root without chattr +i here: no way to make a folder read-only for root")
    try:
        with pytest.raises(OSError):
            (folder / "probe").write_text("x")  # the folder really refuses new files
        yield folder
    finally:
        subprocess.run(undo, check=True)


@pytest.fixture(scope="module")
def seg(tiny_checkpoints) -> Segmenter:
    return Segmenter(tiny_checkpoints[TEST_VARIANTS[0]], conf=0.0)


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _dataset(root: Path, photo: np.ndarray, **changes) -> tuple[Path, Path]:
    """(annotations JSON, image folder): one real photo with one rectangle, its first annotation changed."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo).save(images / "photo.png")
    mask = np.zeros(photo.shape[:2], bool)
    mask[100:300, 150:400] = True
    ann = {"id": 1, "image_id": 1, "category_id": 1, "segmentation": _rle(mask), "area": float(mask.sum()),
           "iscrowd": 0, "bbox": [150.0, 100.0, 250.0, 200.0]}  # fmt: skip
    for key, value in changes.items():
        if value is None:
            del ann[key]
        else:
            ann[key] = value
    data = {
        "images": [{"id": 1, "file_name": "photo.png", "height": photo.shape[0], "width": photo.shape[1]}],
        "annotations": [ann],
        "categories": [{"id": i, "name": n} for i, n in zip(COCO_CATEGORY_IDS, COCO_CLASSES)],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return path, images


def test_rle_counts_match_pycocotools() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 200, 2))
        mask = rng.random((h, w)) < rng.random()
        runs = rle_counts(_rle(mask)["counts"])
        assert sum(runs) == h * w and sum(runs[1::2]) == mask.sum() and min(runs) >= 0


def _bad_rle(photo: np.ndarray) -> dict:
    small = _rle(np.ones((10, 10), bool))
    return {"size": list(photo.shape[:2]), "counts": small["counts"]}  # runs of a 10x10 mask, labelled 512x512


@pytest.mark.parametrize(
    "changes, message",
    [
        ("bad_rle", r"annotation 0 \(id 1\): RLE counts add up to 100 pixels, not 512x512 = 262144"),
        ({"segmentation": {"size": [512, 512], "counts": "!garbage"}}, r"character '!' at 0 is not part of the RLE"),
        ({"segmentation": {"size": [10, 10], "counts": "0"}}, r"RLE size \[10, 10\] is not the image's \[512, 512\]"),
        ({"segmentation": None}, r"annotation 0 \(id 1\): missing 'segmentation'"),
        ({"category_id": None}, r"annotation 0 \(id 1\): missing 'category_id'"),
        ({"area": None}, r"annotation 0 \(id 1\): missing 'area'"),
        ({"iscrowd": None}, r"annotation 0 \(id 1\): missing 'iscrowd'"),
        ({"id": None}, r"annotation 0: missing 'id'"),
        ({"segmentation": [[10, 10, 20, 20]]}, r"\(id 1\): each polygon must be a list of at least 3 x, y pairs"),
        ({"segmentation": [[10, 10, 20, 20, 30]]}, r"\(id 1\): each polygon must be a list of at least 3 x, y pairs"),
        ({"segmentation": [[10, 10, 20, "x", 30, 5]]}, r"\(id 1\): polygon coordinates must be finite numbers"),
    ],
)
def test_bad_ground_truth_is_named_before_any_image_runs(seg, photo, tmp_path: Path, capsys, changes, message) -> None:
    if changes == "bad_rle":
        changes = {"segmentation": _bad_rle(photo)}
    ann, images = _dataset(tmp_path, photo, **changes)
    out = tmp_path / "ap.json"
    with pytest.raises(ValueError, match=message):
        evaluate_coco(seg, ann, images, json_path=out, progress=False)
    argv = ["eval", str(seg.backend.model_info.source), "--coco-json", str(ann), "--images", str(images), "-q"]
    line = cli_error(argv + ["--json", str(out)], capsys, "instances.json: annotation 0")
    assert line.startswith("fastinst-rt eval: error: ")
    assert not out.exists() and not list(tmp_path.rglob("*.tmp"))


def test_max_images_must_be_positive(seg, photo, tmp_path: Path, capsys) -> None:
    ann, images = _dataset(tmp_path, photo)
    for bad in (-1, 0):
        with pytest.raises(ValueError, match=f"--max-images must be a positive number of images, got {bad}"):
            evaluate_coco(seg, ann, images, max_images=bad, progress=False)
        argv = ["eval", str(seg.backend.model_info.source), "--coco-json", str(ann), "--images", str(images)]
        cli_error(
            argv + ["--max-images", str(bad)], capsys, f"argument --max-images: must be an integer >= 1, got '{bad}'"
        )
    assert evaluate_coco(seg, ann, images, max_images=1, progress=False)["images"] == 1


def test_check_writable(tmp_path: Path, readonly_dir: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(OutputError, match=r"--json .*readonly/res\.json: cannot write in .*readonly"):
        check_writable(readonly_dir / "res.json", "--json")
    with pytest.raises(OutputError, match=r"--save .*readonly/out: cannot write in"):
        check_writable(readonly_dir / "out", "--save", folder=True)
    with pytest.raises(OutputError, match=r"--json .* is a folder; give a file name"):
        check_writable(tmp_path, "--json")
    with pytest.raises(OutputError, match=r"--save .*file\.txt is a file, not a folder"):
        check_writable(tmp_path / "file.txt", "--save", folder=True)
    with pytest.raises(OutputError, match=r"file\.txt is a file, so no folder can be made there"):
        check_writable(tmp_path / "file.txt" / "deeper" / "res.json", "--json")
    assert check_writable(tmp_path / "new" / "res.json", "--json") == tmp_path / "new" / "res.json"
    assert not (tmp_path / "new").exists(), "checking creates nothing"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "readonly"], "the probe file is removed"


def test_write_atomic_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "res.json"
    write_atomic(target, "[1]")
    write_atomic(target, b"[2]")
    assert target.read_text() == "[2]"
    blocked = tmp_path / "blocked.json"
    blocked.mkdir()
    (blocked / "inside").write_text("x")  # a non-empty folder: the final rename fails
    with pytest.raises(OSError):
        write_atomic(blocked, "[3]")
    assert not list(tmp_path.glob("*.tmp")) and (blocked / "inside").exists()


def test_jobs_check_outputs_before_the_work(tiny_checkpoints, photo, tmp_path: Path, readonly_dir, capsys) -> None:
    ckpt = str(tiny_checkpoints[TEST_VARIANTS[0]])
    image = tmp_path / "photo.png"
    Image.fromarray(photo).save(image)
    ro = str(readonly_dir)
    # The sources below do not exist: the output error comes first, so it is found before any work.
    absent = str(tmp_path / "absent.png")
    cli_error(["predict", absent, "-m", ckpt, "--json", f"{ro}/res.json", "-q"], capsys, "--json", "cannot write in")
    cli_error(["predict", absent, "-m", ckpt, "--save", f"{ro}/out", "-q"], capsys, "--save", "cannot write in")
    cli_error(["predict", absent, "-m", ckpt, "--json", str(tmp_path), "-q"], capsys, "is a folder; give a file name")
    cli_error(["eval", ckpt, "--coco-json", absent, "--images", str(tmp_path), "--json", f"{ro}/ap.json"], capsys,
              "--json", "cannot write in")  # fmt: skip
    cli_error(["bench", "absent.onnx", "--json", f"{ro}/b.json"], capsys, "--json", "cannot write in")
    cli_error(["bench", "absent.onnx", "--plot", f"{ro}/b.png"], capsys, "--plot", "cannot write in")
    cli_error(["export", "absent-model", "-o", f"{ro}/m.onnx"], capsys, "output", "cannot write in")
    cli_error(["demo", "-o", str(image)], capsys, "--output", "is a file, not a folder")
    cli_error(
        ["train", "--data", absent, "--images", str(tmp_path), "-o", str(image)], capsys, "is a file, not a folder"
    )
    cli_error(["build", absent, "-o", f"{ro}/m.engine"], capsys, "--output", "cannot write in")
    # A real run next to it still works, and nothing temporary is left anywhere.
    assert main(["predict", str(image), "-m", ckpt, "--json", str(tmp_path / "ok.json"), "-q"]) == 0
    assert isinstance(json.loads((tmp_path / "ok.json").read_text()), list)
    assert not list(tmp_path.rglob("*.tmp")) and not list(readonly_dir.iterdir())
