"""Checkpoints: official Detectron2 files and our own format load with nothing but the file, strictly and safely."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch

from fastinst_rt import load_model
from fastinst_rt.checkpoint import (
    CheckpointError,
    ModelInfo,
    load_checkpoint,
    official_state_dict,
    resolve,
    save_checkpoint,
)
from fastinst_rt.zoo import MODELS

from .conftest import TEST_VARIANTS, make_model


def _outputs(model, seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    with torch.no_grad():
        return model(torch.randn(1, 3, 192, 256))


@pytest.mark.parametrize("name", TEST_VARIANTS)
def test_official_format_round_trip(name: str, tiny_official: dict[str, Path]) -> None:
    model, info = load_checkpoint(tiny_official[name])
    assert info.config == MODELS[name].config, "the architecture must be read off the tensors"
    reference, _ = make_model(name, class_scale=8.0)
    ours, theirs = _outputs(model), _outputs(reference)
    assert torch.equal(ours["pred_logits"], theirs["pred_logits"])
    assert torch.equal(ours["pred_masks"], theirs["pred_masks"])
    assert len(info.sha256) == 64 and info.source == str(tiny_official[name])


@pytest.mark.parametrize("name", TEST_VARIANTS)
def test_own_format_round_trip(name: str, tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    model, info = load_checkpoint(tiny_checkpoints[name])
    assert info.name == name and info.test_size == MODELS[name].test_size
    assert info.class_names[0] == "person" and len(info.class_names) == 80
    custom = ModelInfo("my-model", info.config, tuple(f"thing{i}" for i in range(80)), (400, 600))
    path = save_checkpoint(model, custom, tmp_path / "mine.safetensors")
    again = load_model(path)
    assert again.info.class_names[3] == "thing3" and again.info.test_size == (400, 600)
    assert torch.equal(_outputs(again)["pred_masks"], _outputs(model)["pred_masks"])


def test_zoo_file_name_sets_the_test_size(tiny_official: dict[str, Path], tmp_path: Path) -> None:
    renamed = tmp_path / MODELS["fastinst-r50-d1"].checkpoint
    shutil.copy(tiny_official[TEST_VARIANTS[0]], renamed)
    _, info = load_checkpoint(renamed)
    assert info.name == "fastinst-r50-d1" and info.test_size == (576, 777)
    _, other = load_checkpoint(tiny_official[TEST_VARIANTS[0]])
    assert other.test_size == (640, 853), "unknown file names get the D3 default"


def _save_official(state: dict, path: Path) -> Path:
    torch.save({"model": state}, path)
    return path


def test_missing_extra_and_misshaped_keys_are_named(tmp_path: Path) -> None:
    model, _ = make_model(TEST_VARIANTS[0])
    state = official_state_dict(model)
    missing = dict(state)
    del missing["sem_seg_head.predictor.mask_embed_layers.1.layers.0.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys: decoder\.mask_embed_layers\.1\.layers\.0\.bias"):
        load_checkpoint(_save_official(missing, tmp_path / "missing.pth"))
    extra = dict(state, **{"sem_seg_head.predictor.surprise.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"unexpected keys: decoder\.surprise\.weight"):
        load_checkpoint(_save_official(extra, tmp_path / "extra.pth"))
    bad = dict(state)
    bad["sem_seg_head.pixel_decoder.layer_2.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(CheckpointError, match=r"mis-shaped keys: pixel_decoder\.layer_2\.weight"):
        load_checkpoint(_save_official(bad, tmp_path / "bad.pth"))
    not_fastinst = {"backbone.fc.weight": torch.zeros(2, 2)}
    with pytest.raises(CheckpointError, match="not a FastInst checkpoint"):
        load_checkpoint(_save_official(not_fastinst, tmp_path / "other.pth"))


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickles_that_execute_code_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _Exploit.marker = str(marker)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": {"x": _Exploit()}}, f)
    with pytest.raises(CheckpointError, match="code execution"):
        load_checkpoint(path)
    assert not marker.exists(), "loading must never run code from the file"


def test_unreadable_files_and_names(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(CheckpointError):
        load_checkpoint(junk)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.pth")
    with pytest.raises(CheckpointError, match="unknown model 'fastinst-r51'"):
        load_checkpoint("fastinst-r51")
    with pytest.raises(CheckpointError, match="no released weights"):
        load_checkpoint(TEST_VARIANTS[0])
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="metadata"):
        load_checkpoint(foreign)
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_checkpoint(tmp_path / "tensor.pth")


def test_a_folder_does_not_shadow_a_zoo_name_but_a_file_does(tmp_path: Path, monkeypatch) -> None:
    # `fastinst-rt demo` writes into ./fastinst-demo/, and a second run must still find the bundled model.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fastinst-demo").mkdir()
    assert resolve("fastinst-demo").parent.name == "assets"
    (tmp_path / "fastinst-r50-d1").write_bytes(b"not a checkpoint")
    assert resolve("fastinst-r50-d1") == Path("fastinst-r50-d1")
    with pytest.raises(CheckpointError, match="weights-only"):
        load_model("fastinst-r50-d1")
