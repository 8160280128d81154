"""Segmenter on the torch backend: real photos in, official-order results out; bad input gets clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastinst_rt import Results, Segmenter
from fastinst_rt.runtime.postprocess import instances_from_outputs
from fastinst_rt.runtime.preprocess import ImageError, prepare

from .conftest import TEST_VARIANTS


@pytest.fixture(scope="module")
def seg(tiny_checkpoints: dict[str, Path]) -> Segmenter:
    return Segmenter(tiny_checkpoints[TEST_VARIANTS[0]], device="cpu", conf=0.0, max_det=100)


def test_predict_returns_official_instances(seg: Segmenter, photo: np.ndarray) -> None:
    res = seg.predict(photo, color="rgb")
    assert isinstance(res, Results) and len(res) == 100
    assert res.masks.shape == (100, 512, 512) and res.masks.dtype == bool
    assert res.scores.dtype == np.float32 and np.all(np.diff(res.scores) <= 0)
    assert res.labels.dtype == np.int64 and res.boxes.shape == (100, 4)
    assert set(res.speed) == {"preprocess", "inference", "postprocess"}
    # Same numbers as the raw model + the official post-processing order, computed independently here.
    batch, _, (meta,) = prepare([photo], 320, 427)
    model = seg.backend.model
    with torch.no_grad():
        out = model(model.normalize(torch.from_numpy(batch), torch.tensor([meta.resized_size])))
    scores, labels, masks = instances_from_outputs(
        out["pred_logits"][0].numpy(), out["pred_masks"][0].numpy(), meta.resized_size, batch.shape[-2:], (512, 512)
    )
    np.testing.assert_allclose(res.scores, scores, rtol=1e-5)
    assert np.array_equal(res.labels, labels) and np.array_equal(res.masks, masks)


def test_conf_and_max_det(tiny_checkpoints: dict[str, Path], photo: np.ndarray) -> None:
    everything = Segmenter(tiny_checkpoints[TEST_VARIANTS[0]], conf=0.0).predict(photo, color="rgb")
    threshold = float(np.median(everything.scores))
    kept = Segmenter(tiny_checkpoints[TEST_VARIANTS[0]], conf=threshold).predict(photo, color="rgb")
    assert 0 < len(kept) < 100 and kept.scores.min() >= threshold
    np.testing.assert_allclose(kept.scores, everything.scores[: len(kept)], rtol=1e-6)
    five = Segmenter(tiny_checkpoints[TEST_VARIANTS[0]], conf=0.0, max_det=5).predict(photo, color="rgb")
    assert len(five) == 5
    with pytest.raises(ValueError, match="conf"):
        Segmenter(tiny_checkpoints[TEST_VARIANTS[0]], conf=1.5)


def test_input_kinds_agree(seg: Segmenter, photo_wide: np.ndarray, tmp_path: Path) -> None:
    png = tmp_path / "coffee.png"
    Image.fromarray(photo_wide).save(png)
    from_rgb = seg.predict(photo_wide, color="rgb")
    from_bgr = seg.predict(np.ascontiguousarray(photo_wide[:, :, ::-1]))  # BGR is the default for arrays
    from_file = seg.predict(png)
    from_pil = seg.predict(Image.fromarray(photo_wide))
    for other in (from_bgr, from_file, from_pil):
        np.testing.assert_array_equal(other.scores, from_rgb.scores)
        np.testing.assert_array_equal(other.masks, from_rgb.masks)
    assert from_rgb.masks.shape[1:] == photo_wide.shape[:2]


def test_unusual_images_work(seg: Segmenter, photo: np.ndarray, tmp_path: Path) -> None:
    gray = tmp_path / "gray.jpg"
    Image.fromarray(photo).convert("L").save(gray)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(photo).convert("RGBA").save(rgba)
    deep = tmp_path / "deep.png"
    Image.fromarray(photo[:, :, 0].astype(np.uint16) * 257).save(deep)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: a viewer rotates it by 90 degrees
    Image.fromarray(photo[:300]).save(rotated, exif=exif)
    for path, shape in ((gray, (512, 512)), (rgba, (512, 512)), (deep, (512, 512)), (rotated, (512, 300))):
        res = seg.predict(path)
        assert res.masks.shape[1:] == shape, path.name
    tiny = seg.predict(photo[:20, :30])
    assert tiny.masks.shape[1:] == (20, 30), "tiny images are upscaled by the resize and come back at their size"


def test_bad_input_gets_clear_errors(seg: Segmenter, photo: np.ndarray, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    Image.fromarray(photo).save(broken)
    broken.write_bytes(broken.read_bytes()[:2000])
    with pytest.raises(ImageError, match="broken.jpg"):
        seg.predict(broken)
    with pytest.raises(FileNotFoundError):
        seg.predict(tmp_path / "nothing.jpg")
    with pytest.raises(TypeError, match="float32"):
        seg.predict(photo.astype(np.float32))
    with pytest.raises(ValueError, match="empty"):
        seg.predict(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        seg.predict(np.zeros((10, 10, 5), np.uint8))


def test_batch_and_stream(seg: Segmenter, photo: np.ndarray, photo_wide: np.ndarray) -> None:
    batch = seg.predict_batch([photo, photo_wide], color="rgb")
    assert [r.masks.shape[1:] for r in batch] == [(512, 512), (400, 600)]
    # Images of one size need no extra padding, so each batch entry is its batch-1 result.
    mirrored = np.ascontiguousarray(photo[:, ::-1])
    same_size = seg.predict_batch([photo, mirrored], color="rgb")
    for image, res in zip((photo, mirrored), same_size):
        np.testing.assert_allclose(res.scores, seg.predict(image, color="rgb").scores, rtol=1e-3, atol=1e-6)
    streamed = list(seg.stream([photo, photo], color="rgb"))
    assert len(streamed) == 2 and np.array_equal(streamed[0].masks, streamed[1].masks)
    assert seg.predict_batch([]) == []


def test_dcn_variant_and_official_checkpoint(tiny_official: dict[str, Path], photo_wide: np.ndarray) -> None:
    seg = Segmenter(tiny_official[TEST_VARIANTS[1]], conf=0.0, max_det=20, min_size=320, max_size=427)
    res = seg.predict(photo_wide, color="rgb")
    assert len(res) == 20 and res.masks.shape == (20, 400, 600)
    assert "Segmenter" in repr(seg) and seg.min_size == 320


def test_half_precision_needs_cuda(tiny_checkpoints: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="CUDA"):
        Segmenter(tiny_checkpoints[TEST_VARIANTS[0]], device="cpu", half=True)
