"""Official parity: this model reproduces what the official FastInst code (Detectron2) computes.

tests/data/parity/ holds outputs of the official implementation for two small cases (README.md there): the official
checkpoints are rebuilt bit for bit from their seed and tensor recipe, saved as official ``.pth`` files and loaded
through the public API, as a user loads a released file. Checked, per case and photo:

- preprocessing: our resize and normalization give the official input tensor bit for bit;
- raw head outputs of ``load_model(...)`` on the official input: relative L2 error <= 1e-4 (queries matched as a set);
- final instances of ``Segmenter.predict`` (conf 0, max_det 100), on torch and on ONNX Runtime (the dynamic graph
  written by ``fastinst-rt export --dynamic``): 100/100 instances, scores within 1e-3, mask IoU median >= 0.99 and
  min >= 0.90.

The two exports take most of this module's time (dynamo tracing of the 16-block backbones), so they start in the
background when the module starts and run while the torch checks do.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util

from fastinst_rt import Results, Segmenter, load_model
from fastinst_rt.runtime.preprocess import pad_batch, resize_image, resized_size

from .compare import match_instances, matched_errors
from .official_weights import write_official_checkpoint

DATA = Path(__file__).parent / "data" / "parity"
CASES: dict[str, dict] = json.loads((DATA / "cases.json").read_text())
PAIRS = [(case, photo) for case, info in CASES.items() for photo in info["photos"]]
BACKENDS = ("torch", "onnxruntime")
RAW_TOL, SCORE_TOL, MEDIAN_IOU, MIN_IOU = 1e-4, 1e-3, 0.99, 0.90
# Detectron2's pixel mean and std (RGB, 0..255), with which the official code normalized the reference inputs.
OFFICIAL_MEAN = np.array([123.675, 116.280, 103.530], np.float32)[:, None, None]
OFFICIAL_STD = np.array([58.395, 57.120, 57.375], np.float32)[:, None, None]
EXPORT_TIMEOUT_S = 900


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _photo(name: str) -> np.ndarray:
    from skimage import data

    return getattr(data, name)()


class Reference:
    """The official outputs for one (case, photo), and the photo and its official preprocessing rebuilt here."""

    def __init__(self, case: str, photo: str) -> None:
        with np.load(DATA / f"{case}__{photo}.npz") as z:
            ref = {k: z[k] for k in z.files}
        self.pred_logits, self.pred_masks = ref["pred_logits"], ref["pred_masks"]  # (1, Q, K+1), (1, Q, H/8, W/8)
        self.scores, self.labels = ref["scores"], ref["classes"]
        self.image_sha, self.resized_sha, self.input_sha = (str(s) for s in ref["sha256"])
        self.resized_shape = tuple(int(v) for v in ref["resized_shape"])
        _, h, w = (int(v) for v in ref["mask_shape"])
        rles = [{"size": [h, w], "counts": bytes(c)} for c in ref["mask_rle"]]
        self.masks = mask_util.decode(rles).transpose(2, 0, 1).astype(bool)  # (100, H, W) at the photo's size
        self.image = _photo(photo)  # scikit-image's copy; test_photos_are_the_official_ones checks it

    def official_input(self) -> np.ndarray:
        """(1, 3, Hp, Wp) float32: the resized photo normalized as the official code does, zero-padded to /32."""
        x = resize_image(self.image, self.resized_shape).astype(np.float32).transpose(2, 0, 1) - OFFICIAL_MEAN
        x = x / OFFICIAL_STD
        h, w = self.resized_shape
        out = np.zeros((1, 3, -(-h // 32) * 32, -(-w // 32) * 32), np.float32)
        out[0, :, :h, :w] = x
        return out


@pytest.fixture(scope="session")
def references() -> dict[tuple[str, str], Reference]:
    return {pair: Reference(*pair) for pair in PAIRS}


@pytest.fixture(scope="session")
def official_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Official Detectron2 ``.pth`` of each case, rebuilt from its recipe (fails if any tensor's sha256 differs)."""
    root = tmp_path_factory.mktemp("official-parity")
    return {case: write_official_checkpoint(DATA / f"{case}.spec.json", root) for case in CASES}


class _Export:
    """``fastinst-rt export --dynamic`` of one checkpoint, running in a child process until ``path()`` is asked."""

    def __init__(self, ckpt: Path, test_size: list[int], out_dir: Path) -> None:
        self.output, self.log = out_dir / f"{ckpt.stem}.onnx", out_dir / f"{ckpt.stem}.log"
        cmd = [sys.executable, "-m", "fastinst_rt.cli", "export", str(ckpt), "--output", str(self.output), "--dynamic",
               "--min-size", str(test_size[0]), "--max-size", str(test_size[1])]  # fmt: skip
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def path(self) -> Path:
        try:
            rc = self.proc.wait(timeout=EXPORT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"export of {self.output.stem} took over {EXPORT_TIMEOUT_S} s")
        if rc != 0:
            pytest.fail(f"export of {self.output.stem} exited {rc}:\n{self.log.read_text()[-3000:]}")
        return self.output

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def official_onnx(official_checkpoints: dict[str, Path], tmp_path_factory):
    root = tmp_path_factory.mktemp("official-parity-onnx")
    exports = {case: _Export(ckpt, CASES[case]["test_size"], root) for case, ckpt in official_checkpoints.items()}
    yield exports
    for export in exports.values():
        export.stop()


@pytest.fixture(scope="module", autouse=True)
def _start_exports_early(request) -> None:
    """Start the exports with the module when any ONNX Runtime check is selected, so they overlap the torch ones."""
    if any("onnxruntime" in item.nodeid for item in request.session.items if item.module is request.module):
        request.getfixturevalue("official_onnx")


@pytest.fixture(scope="session")
def segmenters() -> dict[tuple[str, str], Segmenter]:
    """(case, backend) -> Segmenter, each made once."""
    return {}


@pytest.fixture(scope="session")
def official_models(official_checkpoints: dict[str, Path]):
    return {case: load_model(path) for case, path in official_checkpoints.items()}


def test_recipe_rebuilds_every_official_tensor(official_checkpoints: dict[str, Path]) -> None:
    # write_official_checkpoint already compared each tensor's sha256; here the files are what a user would load.
    for case, path in official_checkpoints.items():
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert len(ckpt["model"]) == CASES[case]["keys"]
        assert all(v.dtype == torch.float32 for v in ckpt["model"].values())


@pytest.mark.parametrize("case,photo", PAIRS)
def test_photos_and_preprocessing_are_the_official_ones(case: str, photo: str, references, official_models) -> None:
    ref = references[case, photo]
    assert _sha(ref.image) == ref.image_sha, f"scikit-image's {photo} is not the photo the official code saw"
    h, w = ref.image.shape[:2]
    size = resized_size(h, w, *CASES[case]["test_size"])
    assert size == ref.resized_shape
    resized = resize_image(ref.image, size)
    assert _sha(resized) == ref.resized_sha, "the resize differs from Detectron2's ResizeShortestEdge"
    assert _sha(ref.official_input()) == ref.input_sha
    # The model's own normalization and padding give the same tensor (+ 0.0 turns the padding's -0.0 into 0.0).
    batch, sizes = pad_batch([resized])
    ours = official_models[case].normalize(torch.from_numpy(batch), torch.from_numpy(sizes)).numpy() + np.float32(0.0)
    assert _sha(ours) == ref.input_sha, "normalization or padding differs from Detectron2's"


@pytest.mark.parametrize("case,photo", PAIRS)
def test_raw_head_outputs_match_official(case: str, photo: str, references, official_models) -> None:
    ref = references[case, photo]
    with torch.no_grad():
        out = official_models[case](torch.from_numpy(ref.official_input()))
    logits, masks = out["pred_logits"].numpy(), out["pred_masks"].numpy()
    assert logits.shape == ref.pred_logits.shape and masks.shape == ref.pred_masks.shape
    e_logits, e_masks = matched_errors(logits, masks, ref.pred_logits, ref.pred_masks)
    assert e_logits <= RAW_TOL and e_masks <= RAW_TOL, f"relative error: logits {e_logits:.2e}, masks {e_masks:.2e}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case,photo", PAIRS)
def test_instances_match_official(
    case: str, photo: str, backend: str, references, official_checkpoints, segmenters, request
) -> None:
    ref = references[case, photo]
    if (case, backend) not in segmenters:
        # The torch backend loads the official .pth; ONNX Runtime the graph exported from it.
        if backend == "torch":
            path = official_checkpoints[case]
        else:
            path = request.getfixturevalue("official_onnx")[case].path()
        min_size, max_size = CASES[case]["test_size"]
        segmenters[case, backend] = Segmenter(path, backend=backend, device="cpu", conf=0.0, max_det=100,
                                              min_size=min_size, max_size=max_size)  # fmt: skip
    seg = segmenters[case, backend]
    res = seg.predict(ref.image, color="rgb")
    official = Results(ref.masks, ref.scores, ref.labels, seg.class_names)
    assert len(res) == len(official) == 100
    m = match_instances(official, res)
    summary = f"{m.label_agreement:.0%} labels matched, score diff {m.max_score_diff:.1e}, IoU median/min " \
              f"{m.median_iou:.4f}/{m.min_iou:.4f}"  # fmt: skip
    assert m.label_agreement == 1.0 and m.max_score_diff <= SCORE_TOL, summary
    assert m.median_iou >= MEDIAN_IOU and m.min_iou >= MIN_IOU, summary
