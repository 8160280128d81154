"""Tests of fastinst_rt.runtime.preprocess on real photos and real files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

from fastinst_rt.runtime.preprocess import (
    MAX_SIDE,
    ImageError,
    PreprocessInfo,
    load_image,
    pad_batch,
    prepare,
    resize_image,
    resized_size,
)


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    return data.chelsea()  # (300, 451, 3) uint8 RGB


# ---- load_image: files -------------------------------------------------------------------------------------------


def test_exif_orientation_is_applied(tmp_path, chelsea):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(chelsea).save(path, exif=exif.tobytes(), quality=95)
    stored = np.asarray(Image.open(path).convert("RGB"))  # the pixels as stored, orientation ignored
    assert stored.shape == chelsea.shape
    out = load_image(path)
    assert out.shape == (451, 300, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, np.rot90(stored, k=-1))


def test_png_16bit_is_scaled(tmp_path):
    gray16 = (np.arange(40 * 50, dtype=np.uint32).reshape(40, 50) * 31).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(gray16).save(path)
    assert Image.open(path).mode.startswith("I;16")
    out = load_image(str(path))
    expected = (gray16 >> 8).astype(np.uint8)
    assert out.shape == (40, 50, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], expected)


def test_rgba_png_drops_alpha(tmp_path, chelsea):
    rgba = np.concatenate([chelsea, np.full(chelsea.shape[:2] + (1,), 7, np.uint8)], axis=2)
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    np.testing.assert_array_equal(load_image(path), chelsea)


def test_grayscale_jpeg(tmp_path):
    gray = data.camera()  # (512, 512) uint8
    path = tmp_path / "gray.jpg"
    Image.fromarray(gray).save(path, quality=95)
    out = load_image(path)
    assert out.shape == (512, 512, 3)
    assert np.array_equal(out[:, :, 0], out[:, :, 1]) and np.array_equal(out[:, :, 0], out[:, :, 2])
    assert np.abs(out[:, :, 0].astype(int) - gray).mean() < 3


def test_truncated_jpeg_raises(tmp_path, chelsea):
    full = tmp_path / "full.jpg"
    Image.fromarray(chelsea).save(full)
    cut = tmp_path / "cut.jpg"
    raw = full.read_bytes()
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageError, match="could not decode.*cut.jpg"):
        load_image(cut)


def test_text_file_raises(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageError, match="notes.jpg"):
        load_image(path)
    assert issubclass(ImageError, ValueError)


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")


# ---- load_image: PIL images ---------------------------------------------------------------------------------------


def test_pil_image_equals_file(tmp_path):
    img = data.coffee()
    path = tmp_path / "coffee.png"
    Image.fromarray(img).save(path)
    np.testing.assert_array_equal(load_image(Image.open(path)), load_image(path))
    np.testing.assert_array_equal(load_image(path), img)


@pytest.mark.parametrize("mode", ["L", "P", "LA", "CMYK", "YCbCr", "RGBA"])
def test_pil_modes_convert_like_pil(chelsea, mode):
    img = Image.fromarray(chelsea).convert(mode)
    out = load_image(img)
    assert out.shape == chelsea.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.asarray(img.convert("RGB")))


def test_pil_int32_mode_is_clipped_and_scaled():
    values = np.array([[-5, 0, 255, 256], [65535, 70000, 40000, 1 << 20]], dtype=np.int32)
    out = load_image(Image.fromarray(values, mode="I"))
    np.testing.assert_array_equal(out[:, :, 1], [[0, 0, 0, 1], [255, 255, 156, 255]])


def test_pil_float_mode_refused():
    with pytest.raises(ImageError, match="float"):
        load_image(Image.fromarray(np.zeros((4, 5), np.float32)))


# ---- load_image: arrays ---------------------------------------------------------------------------------------------


def test_bgr_and_rgb_are_channel_swapped():
    img = data.astronaut()
    bgr_read = load_image(img)  # default: the array is taken as BGR
    rgb_read = load_image(img, color="rgb")
    np.testing.assert_array_equal(rgb_read, img)
    np.testing.assert_array_equal(bgr_read, img[:, :, ::-1])
    assert bgr_read.flags.c_contiguous


def test_rgb_contiguous_array_is_not_copied(chelsea):
    assert load_image(chelsea, color="rgb") is chelsea


def test_four_and_one_channel_arrays(chelsea):
    bgra = np.concatenate([chelsea[:, :, ::-1], np.zeros(chelsea.shape[:2] + (1,), np.uint8)], axis=2)
    np.testing.assert_array_equal(load_image(bgra), chelsea)
    rgba = np.concatenate([chelsea, np.zeros(chelsea.shape[:2] + (1,), np.uint8)], axis=2)
    np.testing.assert_array_equal(load_image(rgba, color="rgb"), chelsea)
    gray = chelsea[:, :, 0]
    np.testing.assert_array_equal(load_image(gray), np.stack([gray] * 3, axis=2))
    np.testing.assert_array_equal(load_image(gray[:, :, None]), np.stack([gray] * 3, axis=2))


def test_uint16_array_is_scaled():
    arr = np.array([[0, 255, 256, 65535]], dtype=np.uint16)
    np.testing.assert_array_equal(load_image(arr)[0, :, 0], [0, 0, 1, 255])


@pytest.mark.parametrize("dtype", [np.float32, np.int64, bool])
def test_bad_dtype_raises(dtype):
    with pytest.raises(TypeError, match="uint8 or uint16"):
        load_image(np.zeros((4, 4, 3), dtype=dtype))


@pytest.mark.parametrize("shape", [(0, 10, 3), (10, 0), (0, 0, 1)])
def test_empty_array_raises(shape):
    with pytest.raises(ValueError, match="empty image"):
        load_image(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("shape", [(4, 4, 5), (4, 4, 2), (4,), (2, 4, 4, 3)])
def test_bad_shape_raises(shape):
    with pytest.raises(ValueError, match=r"shape \(" + ", ".join(str(s) for s in shape)):
        load_image(np.zeros(shape, np.uint8))


def test_too_large_and_bad_color_and_bad_type():
    with pytest.raises(ValueError, match="too large"):
        load_image(np.zeros((1, MAX_SIDE + 1), np.uint8))
    assert load_image(np.zeros((1, MAX_SIDE), np.uint8)).shape == (1, MAX_SIDE, 3)
    with pytest.raises(ValueError, match="color"):
        load_image(np.zeros((4, 4, 3), np.uint8), color="hsv")
    with pytest.raises(TypeError, match="list"):
        load_image([[0, 1], [2, 3]])


# ---- resize ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hw, sizes, expected",
    [
        ((480, 640), (640, 853), (640, 853)),  # spec §3: the 640 config
        ((480, 640), (576, 777), (576, 768)),  # spec §3: the 576 config
        ((640, 480), (640, 853), (853, 640)),  # portrait
        ((512, 512), (640, 853), (640, 640)),
        ((100, 2000), (640, 853), (43, 853)),  # very wide: the long side is capped, short side 42.65 -> 43
        ((300, 451), (640, 853), (567, 853)),  # 640x962.1 capped to 853 wide: 567.4 x 853
    ],
)
def test_resized_size(hw, sizes, expected):
    got = resized_size(*hw, *sizes)
    assert got == expected
    assert max(got) <= sizes[1]


def test_resized_size_rounds_half_up():
    # 3x2 with short side 3: 4.5 x 3; int(x + 0.5) gives 5 where Python's round() would give 4.
    assert resized_size(3, 2, 3, 100) == (5, 3)
    assert resized_size(500, 459, 640, 2048) == (697, 640)  # 697.17, no cap (max_size is at most MAX_TEST_SIZE)
    with pytest.raises(ValueError):
        resized_size(0, 10, 640, 853)


def test_resize_image_antialiases_on_downscale():
    # A 1-pixel checkerboard shrunk 4x: PIL's bilinear averages it to flat grey; a plain bilinear would alias.
    board = ((np.indices((64, 64)).sum(axis=0) % 2) * 255).astype(np.uint8)
    out = resize_image(np.stack([board] * 3, axis=2), (16, 16))
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert abs(float(out.mean()) - 127.5) < 2 and out.std() < 2


def test_resize_image_matches_pil_and_is_identity_when_same_size(chelsea):
    same = resize_image(chelsea, chelsea.shape[:2])
    assert same is chelsea
    up = resize_image(chelsea, (640, 962))
    assert up.shape == (640, 962, 3)
    np.testing.assert_array_equal(up, np.asarray(Image.fromarray(chelsea).resize((962, 640), Image.BILINEAR)))


# ---- batching -------------------------------------------------------------------------------------------------------


def test_pad_batch_layout():
    a, b = data.astronaut()[:100, :130], data.coffee()[:70, :200]
    batch, sizes = pad_batch([a, b])
    assert batch.shape == (2, 3, 128, 224) and batch.dtype == np.uint8
    assert sizes.dtype == np.int64 and sizes.tolist() == [[100, 130], [70, 200]]
    np.testing.assert_array_equal(batch[0, :, :100, :130], a.transpose(2, 0, 1))
    np.testing.assert_array_equal(batch[1, :, :70, :200], b.transpose(2, 0, 1))
    assert not batch[0, :, 100:].any() and not batch[0, :, :, 130:].any() and not batch[1, :, 70:].any()
    assert pad_batch([a], size_divisibility=1)[0].shape == (1, 3, 100, 130)
    with pytest.raises(ValueError):
        pad_batch([])
    with pytest.raises(ValueError, match="HxWx3"):
        pad_batch([a[:, :, 0]])


def test_prepare_real_photos():
    images = [data.astronaut(), data.coffee()]  # 512x512 and 400x600
    batch, sizes, infos = prepare(images, 640, 853)
    assert sizes.tolist() == [[640, 640], [569, 853]]
    assert infos == [PreprocessInfo((512, 512), (640, 640)), PreprocessInfo((400, 600), (569, 853))]
    assert batch.shape == (2, 3, 640, 864)
    np.testing.assert_array_equal(batch[1, :, :569, :853], resize_image(images[1], (569, 853)).transpose(2, 0, 1))
    with pytest.raises(AttributeError):
        infos[0].orig_size = (1, 1)  # frozen


# ---- the fast resize ------------------------------------------------------------------------------------------------


def _camera_frame(h: int, w: int) -> np.ndarray:
    import cv2

    return cv2.resize(data.astronaut(), (w, h), interpolation=cv2.INTER_CUBIC)  # a real photo at camera size


@pytest.mark.parametrize("hw, size", [((512, 512), (256, 256)), ((300, 451), (640, 962)), ((1080, 1350), (300, 375))])
def test_fast_resize_is_exact_under_a_4x_shrink(hw, size):
    # No halving happens until an image is 4x the target on both axes: the official pixels, byte for byte.
    image = _camera_frame(*hw)
    np.testing.assert_array_equal(resize_image(image, size, "fast"), resize_image(image, size, "exact"))


def test_fast_resize_of_a_camera_frame_is_pils_reducing_gap_and_close_to_exact():
    frame = _camera_frame(1080, 1920)
    fast, exact = resize_image(frame, (192, 341), "fast"), resize_image(frame, (192, 341), "exact")
    # One 2x2 box halving, then the official bilinear: what PIL computes with reducing_gap=2 (factor 2 here).
    pil_gap = np.asarray(Image.fromarray(frame).resize((341, 192), Image.BILINEAR, reducing_gap=2.0))
    np.testing.assert_array_equal(fast, pil_gap)
    diff = np.abs(fast.astype(int) - exact)
    assert fast.shape == (192, 341, 3) and 0 < diff.mean() < 0.5 and diff.max() <= 8
    odd = frame[:1079, :1919]  # odd sides are never halved (a 2x2 box would shift the geometry)
    np.testing.assert_array_equal(resize_image(odd, (192, 341), "fast"), resize_image(odd, (192, 341), "exact"))


def test_resize_mode_is_checked():
    image = data.astronaut()
    with pytest.raises(ValueError, match="resize must be one of exact, fast, got 'area'"):
        resize_image(image, (256, 256), "area")
    with pytest.raises(ValueError, match="resize must be one of exact, fast"):
        prepare([image], 256, 341, resize="linear")
    fast = prepare([_camera_frame(1080, 1920)], 256, 341, resize="fast")
    exact = prepare([_camera_frame(1080, 1920)], 256, 341, resize="exact")
    assert fast[0].shape == exact[0].shape and fast[1].tolist() == exact[1].tolist() == [[192, 341]]
    assert not np.array_equal(fast[0], exact[0])
