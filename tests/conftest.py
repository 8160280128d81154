"""Shared fixtures: tiny FastInst checkpoints with seeded random weights, and real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fastinst_rt.checkpoint import ModelInfo, official_state_dict, save_checkpoint
from fastinst_rt.zoo import MODELS, build_model

TEST_VARIANTS = [name for name in MODELS if "-test-" in name]


def make_model(name: str, seed: int = 0, class_scale: float = 1.0):
    """A test variant with seeded random weights (BN statistics randomised too, so FrozenBN is exercised).

    ``class_scale`` multiplies the last class layer so that scores spread like a trained model's.
    """
    spec = MODELS[name]
    torch.manual_seed(seed)
    model = build_model(spec.config)
    with torch.no_grad():
        for n, b in model.named_buffers():
            if n.endswith("running_var"):
                b.uniform_(0.5, 1.5)
            elif n.endswith("running_mean"):
                b.normal_(0, 0.1)
        for layer in model.decoder.class_embed_layers:
            layer.layers[-1].weight.mul_(class_scale)
    info = ModelInfo(name, spec.config, spec.class_names, spec.test_size)
    return model.eval(), info


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Our-format (.safetensors) checkpoint of every test variant, keyed by variant name."""
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for name in TEST_VARIANTS:
        model, info = make_model(name, class_scale=8.0)
        out[name] = save_checkpoint(model, info, root / f"{name}.safetensors")
    return out


@pytest.fixture(scope="session")
def tiny_official(tmp_path_factory) -> dict[str, Path]:
    """Official Detectron2-format (.pth) checkpoint of every test variant."""
    root = tmp_path_factory.mktemp("official")
    out = {}
    for name in TEST_VARIANTS:
        model, _ = make_model(name, class_scale=8.0)
        state = official_state_dict(model)
        state["criterion.empty_weight"] = torch.ones(model.num_classes + 1)
        out[name] = root / f"{name}.pth"
        torch.save({"model": state, "iteration": 7}, out[name])
    return out


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real RGB photo (scikit-image's astronaut, 512x512)."""
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def photo_wide() -> np.ndarray:
    """A real RGB photo of another aspect ratio (scikit-image's coffee, 400x600)."""
    from skimage import data

    return data.coffee()


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster for one test module, bound to 127.0.0.1, 6 logical CPUs (replicas and batch actors take
    whole ones, Ray Data's reads a quarter): its GCS address. Shut down after the module."""
    ray = pytest.importorskip("ray", reason="ray[serve,data] (the serve extra) is not installed")
    ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
