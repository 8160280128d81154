"""A static graph gives the dynamic graph's instances on every aspect ratio: the extra padding is masked.

The bundled trained model, real held-out synthetic images of three aspect ratios (square, portrait, wide) and a
photo. Unmasked, these images give other instances (checked first, so the agreement below is not vacuous).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from fastinst_rt import Segmenter, load_model
from fastinst_rt.artifact import read_onnx_meta
from fastinst_rt.export import DeployModel, check_graph, export_onnx
from fastinst_rt.export.onnx_export import default_imgsz
from fastinst_rt.export.padding import COMPONENTS, averaging_matrix, bilinear_matrix
from fastinst_rt.jobs.bench import STAGES, BenchRun, markdown_table
from fastinst_rt.runtime.backends.ort import OnnxRuntimeBackend
from fastinst_rt.runtime.padding import padding_caveat
from fastinst_rt.runtime.preprocess import load_image, pad_batch, prepare, resize_image
from fastinst_rt.training.synth import make_synthetic_dataset

from .compare import match_instances, matched_errors, rel_error

TEST_SIZE = (256, 341)  # fastinst-demo's; its default static input is 256x352
SIZES = ((256, 256), (320, 256), (256, 448))  # square, portrait, wide: all padded further in 256x352


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[np.ndarray]:
    """Two held-out synthetic images (seed 2025, never trained on) per aspect ratio, and the astronaut photo."""
    out = []
    for h, w in SIZES:
        root = tmp_path_factory.mktemp(f"syn{h}x{w}")
        make_synthetic_dataset(root, 2, seed=2025, size=(h, w))
        out += [load_image(p, "rgb") for p in sorted((root / "images").iterdir())]
    from skimage import data

    return [*out, data.astronaut()]


def _inputs(image: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The static graph's resized image padded (a) to /32, as the official model sees it, and (b) to 256x352."""
    static, sizes, (info,) = prepare([image], *TEST_SIZE, fixed_size=default_imgsz(TEST_SIZE))
    h, w = info.resized_size
    official, _ = pad_batch([np.ascontiguousarray(static[0, :, :h, :w].transpose(1, 2, 0))])
    return (official, sizes), (static, sizes)


def _raw(wrapper: DeployModel, batch: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        logits, masks = wrapper(torch.from_numpy(batch), torch.from_numpy(sizes))
    return logits.numpy(), masks.numpy()


# ---------------------------------------------------------------- the pieces, eager torch


@pytest.mark.parametrize(("n_in", "n_out"), [(7, 32), (7, 13), (9, 18), (3, 40), (1, 5), (12, 12)])
def test_bilinear_matrix_is_torch_interpolation_over_the_region(n_in: int, n_out: int) -> None:
    x = torch.randn(2, 3, n_in, 5)  # float32, as the graph computes: torch's own scale is float32 there
    ref = F.interpolate(x, size=(n_out, 5), mode="bilinear", align_corners=False)
    big = F.pad(x, (0, 0, 0, 4), value=7.0)  # cells beyond the region must not be read
    m = bilinear_matrix(torch.tensor([n_out, n_out]), torch.tensor([n_in, n_in]), n_out + 3, n_in + 4)
    ours = torch.matmul(m[:, None], big)[:, :, :n_out]
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n", [1, 5, 6, 11, 18])
def test_averaging_matrix_pools_only_the_region(n: int) -> None:
    x = torch.randn(1, 2, n, 1, dtype=torch.float64)
    big = F.pad(x, (0, 0, 0, 9), value=100.0)
    for bins in (1, 2, 3, 6):
        m = averaging_matrix(torch.tensor([n]), bins, n + 9, big)
        pooled = torch.matmul(m[:, None], big)
        torch.testing.assert_close(pooled, F.adaptive_avg_pool2d(x, (bins, 1)), rtol=0, atol=1e-12)


def test_masking_changes_nothing_at_the_official_padding(images: list[np.ndarray]) -> None:
    """On an input padded to /32 (the dynamic graph's, batch 1) the masked wrapper computes the unmasked one."""
    model = load_model("fastinst-demo")
    plain, masked = DeployModel(model, raw=True).eval(), DeployModel(model, raw=True, padding=COMPONENTS).eval()
    for image in images[::2]:
        batch, sizes, _ = prepare([image], *TEST_SIZE)
        (l0, m0), (l1, m1) = _raw(plain, batch, sizes), _raw(masked, batch, sizes)
        assert rel_error(l1, l0) < 1e-5 and rel_error(m1, m0) < 1e-5, (batch.shape, rel_error(l1, l0))


def test_eager_static_input_equals_the_official_one(images: list[np.ndarray]) -> None:
    """Unmasked, the padding to 256x352 changes the outputs; masked, the region's outputs are the official ones."""
    model = load_model("fastinst-demo")
    plain, masked = DeployModel(model, raw=True).eval(), DeployModel(model, raw=True, padding=COMPONENTS).eval()
    unmasked_errors = []
    for image in images:
        official, static = _inputs(image)
        ref_l, ref_m = _raw(plain, *official)
        h, w = ref_m.shape[-2:]
        l0, m0 = _raw(plain, *static)
        unmasked_errors.append(matched_errors(l0, m0[..., :h, :w], ref_l, ref_m)[0])
        l1, m1 = _raw(masked, *static)
        # As sets of queries: on flat synthetic backgrounds proposal scores tie, and top-k may order ties otherwise.
        errors = matched_errors(l1, m1[..., :h, :w], ref_l, ref_m)
        assert max(errors) < 1e-5, errors
    assert min(unmasked_errors) > 1e-2, unmasked_errors  # every image here is padded further, and that shows


# ---------------------------------------------------------------- exported graphs on ONNX Runtime


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("static-padding")
    return {
        "static": export_onnx("fastinst-demo", root / "static.onnx", progress=False),
        "dynamic": export_onnx("fastinst-demo", root / "dynamic.onnx", dynamic=True, progress=False),
    }


@pytest.mark.slow
def test_static_export_gives_the_dynamic_instances(exports: dict[str, Path], images: list[np.ndarray]) -> None:
    """Both graphs on the image the static one takes (a portrait one shrunk to fit 256x352, which no mask undoes):
    the dynamic graph pads it to /32, the static one to 256x352."""
    assert check_graph(exports["static"]) == []  # no NonZero/ScatterND/Loop/If, fixed shapes
    static, dynamic = (OnnxRuntimeBackend(exports[k], device="cpu") for k in ("static", "dynamic"))
    for image in images:
        (_, sizes), _ = _inputs(image)
        fitted = resize_image(image, tuple(int(v) for v in sizes[0]))
        # A test size whose resize leaves the fitted image as it is, for both graphs.
        test = {"min_size": min(fitted.shape[:2]), "max_size": max(fitted.shape[:2])}
        seg_s, seg_d = Segmenter(static, **test), Segmenter(dynamic, **test)
        assert seg_s.prepare([fitted])[0].shape[-2:] == (256, 352)
        assert seg_d.prepare([fitted])[0].shape[-2:] != (256, 352)  # the official input is smaller
        a, b = seg_d.predict(fitted, color="rgb"), seg_s.predict(fitted, color="rgb")
        assert len(a) == len(b) > 0 and sorted(a.labels.tolist()) == sorted(b.labels.tolist())
        dmax, _, min_iou, same = match_instances(a, b)
        assert dmax <= 1e-3 and min_iou >= 0.9 and same == 1.0, (image.shape, dmax, min_iou, same)


@pytest.mark.slow
def test_static_export_says_what_it_pads(exports: dict[str, Path]) -> None:
    meta = read_onnx_meta(onnx.load(str(exports["static"])), "static")
    assert meta.extra["padding"] == {"pads_to": [256, 352], "masked": True, "components": list(COMPONENTS)}
    with OnnxRuntimeBackend(exports["static"], device="cpu") as backend:
        line = backend.describe()["padding"]
    assert "256x352" in line and "masks that extra padding" in line
    with OnnxRuntimeBackend(exports["dynamic"], device="cpu") as backend:
        assert "padding" not in backend.describe()
    # An older static export (no padding entry) is said not to mask, and bench prints the line under its table.
    old = dataclasses.replace(meta, extra={})
    assert "does NOT mask" in padding_caveat(old)
    stages = {k: {"p50": 1.0, "p90": 1.0, "p99": 1.0} for k in STAGES}
    run = BenchRun("static.onnx", "onnxruntime", "cpu", "fp32", 1, [256, 352], stages=stages, padding=line)
    assert markdown_table([run]).splitlines()[-1] == f"static.onnx: {line}"
