"""Rebuild the official-parity checkpoints from a seed and a tensor recipe (tests/data/parity/*.spec.json).

The official FastInst code produced the reference outputs in tests/data/parity/ from two checkpoints with seeded
random weights. Their 34 MB are not committed: each ``<case>.spec.json`` lists every tensor's name and shape in the
order it was drawn from one ``torch.Generator`` and the sha256 of its float32 bytes, so the weights come back bit for
bit. The draw rules (tests/data/parity/README.md) are the recipe's; a changed rule or torch generator shows up as a
hash mismatch, never as a silently different model.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import torch

# The classifier layers whose weights and biases are multiplied by 8 after the parameter draws, so that scores spread
# like a trained model's (flat random logits tie to the float32 ulp and make the top-k order arbitrary).
_CLASSIFIER = re.compile(r"(conv_proposal_cls_logits\.2\.|class_embed_layers\.\d+\.layers\.2\.)")


def _draw_param(name: str, shape: list[int], g: torch.Generator) -> torch.Tensor:
    if name.endswith("meta_pos_embed"):
        return torch.randn(shape, generator=g) * 0.5
    if len(shape) == 1:
        if ("norm" in name or ".bn" in name) and name.endswith("weight"):
            return 0.8 + 0.4 * torch.rand(shape, generator=g)
        return (torch.rand(shape, generator=g) - 0.5) * 0.2
    return torch.randn(shape, generator=g) * math.sqrt(1.0 / math.prod(shape[1:]))


def _draw_buffer(name: str, shape: list[int], g: torch.Generator) -> torch.Tensor | None:
    """A buffer no rule covers (the criterion's ``empty_weight``) draws nothing: its values come from ``const``."""
    if name.endswith("running_var"):
        return 0.5 + torch.rand(shape, generator=g)
    if name.endswith("running_mean"):
        return torch.randn(shape, generator=g) * 0.1
    if len(shape) == 1 and name.endswith(".weight"):
        return 0.3 + 0.5 * torch.rand(shape, generator=g)
    if len(shape) == 1 and name.endswith(".bias"):
        return (torch.rand(shape, generator=g) - 0.5) * 0.2
    return None


def tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().to(torch.float32).contiguous().numpy().tobytes()).hexdigest()


def rebuild_state(spec: dict) -> dict[str, torch.Tensor]:
    """The official state dict (key order of the file) that ``spec`` describes; raises if any tensor's hash differs."""
    g = torch.Generator().manual_seed(int(spec["seed"]))
    tensors: dict[str, torch.Tensor] = {}
    shapes: dict[str, list[int]] = {}
    for name, shape in spec["params"]:
        tensors[name], shapes[name] = _draw_param(name, shape, g), shape
    for name in tensors:
        if _CLASSIFIER.search(name):
            tensors[name] = tensors[name] * 8
    for name, shape in spec["buffers"]:
        shapes[name] = shape
        drawn = _draw_buffer(name, shape, g)
        if drawn is not None:
            tensors[name] = drawn
    for name, values in {**spec["fixed"], **spec["const"]}.items():
        tensors[name] = torch.tensor(values, dtype=torch.float32).reshape(shapes.get(name, [len(values)]))
    state = {name: tensors[name].contiguous() for name in spec["order"] if name in tensors}
    wrong = [name for name, t in state.items() if tensor_sha256(t) != spec["sha256"].get(name)]
    missing = sorted((set(spec["sha256"]) | set(spec["order"])) - set(state))
    if wrong or missing:
        raise AssertionError(
            f"{spec['name']}: the recipe no longer rebuilds the official weights ({len(wrong)} of {len(state)} tensors "
            f"differ, first {wrong[:3]}; {len(missing)} missing): the torch generator or the recipe changed, and the "
            "official reference outputs do not apply to these weights"
        )
    return state


def write_official_checkpoint(spec_path: Path, out_dir: Path) -> Path:
    """Rebuild ``spec_path``'s checkpoint and save it as the official Detectron2 file: ``{"model": state, **extra}``."""
    spec = json.loads(Path(spec_path).read_text())
    out = Path(out_dir) / f"{spec['name']}.pth"
    torch.save({"model": rebuild_state(spec), **spec["extra"]}, out)
    return out
