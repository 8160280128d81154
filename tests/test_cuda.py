"""The torch backend on CUDA (FP32 and FP16). Runs wherever PyTorch sees a GPU; skipped elsewhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fastinst_rt import Segmenter

from .conftest import TEST_VARIANTS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU visible to PyTorch"),
]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.mark.parametrize("name", TEST_VARIANTS)
def test_cuda_fp32_matches_cpu(name: str, tiny_checkpoints: dict[str, Path], photo: np.ndarray) -> None:
    # TF32 would change convolution numerics on Ampere and newer; the official evaluation ran in full FP32.
    torch.backends.cudnn.allow_tf32 = False
    cpu = Segmenter(tiny_checkpoints[name], device="cpu", conf=0.0, max_det=20).predict(photo, color="rgb")
    gpu = Segmenter(tiny_checkpoints[name], device="cuda", conf=0.0, max_det=20).predict(photo, color="rgb")
    np.testing.assert_allclose(gpu.scores, cpu.scores, rtol=1e-3, atol=1e-5)
    assert np.median([_iou(a, b) for a, b in zip(gpu.masks, cpu.masks)]) > 0.99


@pytest.mark.parametrize("name", TEST_VARIANTS)
def test_cuda_fp16_runs_and_agrees(name: str, tiny_checkpoints: dict[str, Path], photo: np.ndarray) -> None:
    full = Segmenter(tiny_checkpoints[name], device="cuda", conf=0.0, max_det=20).predict(photo, color="rgb")
    half = Segmenter(tiny_checkpoints[name], device="cuda", conf=0.0, max_det=20, half=True).predict(photo, color="rgb")
    assert np.isfinite(half.scores).all()
    top = min(5, len(full))
    assert np.abs(half.scores[:top] - full.scores[:top]).max() < 0.02
