"""Load official FastInst checkpoints and read/write our own format.

Official files are Detectron2 ``.pth`` pickles of ``{"model": state_dict, ...}``. They carry no config, so the
architecture is read off the tensor shapes (backbone kind, depth, widths, DCN, decoder layers, classes,
queries). The attention head count is the one thing no shape shows: it is 8 (head width 32) for the official
256-wide models and width / 16 for narrower ones (head width 16, as in the narrow reference models of the
parity suite), unless given. Files are opened with ``torch.load(weights_only=True)``: a pickle that needs code
execution is refused.

Our format is a ``.safetensors`` file whose metadata holds the config, class names and test size, so the file
alone rebuilds the model. Every key of a checkpoint must be consumed or be one of ``IGNORED_KEYS`` (the
criterion's ``empty_weight`` and ``pixel_mean``/``pixel_std``: the normalization constants are the model's own).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .artifact import cache_dir
from .coco import COCO_CLASSES
from .modeling.fastinst import FastInst
from .zoo import DEFAULT_TEST_SIZE, MODELS, FastInstConfig, build_model

__all__ = [
    "CheckpointError",
    "ModelInfo",
    "load_checkpoint",
    "save_checkpoint",
    "config_from_official",
    "official_state_dict",
    "load_state_strict",
    "first_non_finite",
    "resolve",
]

FORMAT_KEY = "fastinst_rt"
FORMAT_VERSION = 1
# Present in official checkpoints but not part of the network: the criterion's class weights, and the
# normalization constants (not normally saved; ours come from the model's metadata).
IGNORED_KEYS = ("criterion.empty_weight", "sem_seg_head.predictor.criterion.empty_weight", "pixel_mean", "pixel_std")
_OFFICIAL_PREFIXES = (("sem_seg_head.pixel_decoder.", "pixel_decoder."), ("sem_seg_head.predictor.", "decoder."))


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: unsafe, unreadable, or not matching the architecture."""


@dataclass(frozen=True)
class ModelInfo:
    """What a model is: its variant name, architecture, classes, test-time resize and source file."""

    name: str
    config: FastInstConfig
    class_names: tuple[str, ...]
    test_size: tuple[int, int]
    source: str = ""
    sha256: str = ""

    def to_dict(self) -> dict:
        return {
            "name": self.name, "config": self.config.to_dict(), "class_names": list(self.class_names),
            "test_size": list(self.test_size), "source": self.source, "sha256": self.sha256,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> ModelInfo:
        return cls(
            d["name"], FastInstConfig.from_dict(d["config"]), tuple(d["class_names"]), tuple(d["test_size"]),
            d.get("source", ""), d.get("sha256", ""),
        )  # fmt: skip


def resolve(model: str | os.PathLike) -> Path:
    """A file path, or a zoo name whose released checkpoint is found in (or downloaded to) ``cache_dir()``.

    A file of that name wins over a zoo name; a folder does not (``fastinst-rt demo`` writes to ``./fastinst-demo/``).
    """
    path = Path(model)
    name = str(model)
    if path.is_file():
        return path
    if path.exists() and name not in MODELS:
        raise CheckpointError(f"{name} is a folder, not a checkpoint file")
    if name in MODELS:
        spec = MODELS[name]
        if spec.bundled:
            bundled = Path(__file__).parent / "assets" / spec.bundled
            if not bundled.is_file():
                raise CheckpointError(f"{name}: the bundled weights {bundled} are missing from this installation")
            return bundled
        if spec.checkpoint is None:
            raise CheckpointError(f"{name} has no released weights; build it with zoo.build_model or train it")
        target = cache_dir() / spec.checkpoint
        if not target.exists():
            _download(spec.url, target)
        return target
    if path.suffix or os.sep in name:
        raise FileNotFoundError(f"no such checkpoint file: {name}")
    close = difflib.get_close_matches(name, MODELS, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known names: {', '.join(MODELS)}"
    raise CheckpointError(f"unknown model {name!r}; {hint}")


def _download(url: str, target: Path) -> None:
    from tqdm import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(partial, "wb") as f:
            total = int(r.headers.get("Content-Length", 0)) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {target.name}") as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise CheckpointError(f"could not download {url} ({e}); download it by hand and pass the file path") from e
    partial.rename(target)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _safetensors_header(path: Path) -> tuple[dict[str, tuple[int, ...]], str]:
    """(shape of every tensor, our metadata as JSON text) from a ``.safetensors`` header; no tensor is loaded."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file (empty, truncated or corrupt): {e}") from e
    if FORMAT_KEY not in meta:
        raise CheckpointError(f"{path} has no '{FORMAT_KEY}' metadata; it was not written by save_checkpoint")
    return shapes, meta[FORMAT_KEY]


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e


def _read_pickle(path: Path) -> tuple[dict[str, torch.Tensor], object]:
    """(state dict, our metadata or None for an official checkpoint) of a ``.pth``, loaded weights-only."""
    if path.suffix == ".pkl":
        raise CheckpointError(f"{path}: Detectron2 .pkl files are plain pickles and are not loaded for safety")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), not a checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for unsafe globals, RuntimeError/EOFError for corrupt files
        # torch's own text suggests weights_only=False, which is exactly what is refused: keep only its reason.
        text = str(e).partition("WeightsUnpickler error:")[2] or str(e)
        reason = next((line.strip().split(". ")[0] for line in text.splitlines() if line.strip()), type(e).__name__)
        raise CheckpointError(
            f"{path} could not be loaded as a weights-only checkpoint (it is corrupt, truncated, not a checkpoint, "
            f"or needs code execution to unpickle, which is refused): {reason}"
        ) from e
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        state, meta = obj["model"], obj.get(FORMAT_KEY)
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, meta = obj, None
    else:
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict or a {{'model': state_dict}}")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: the state dict holds non-tensor entries: {', '.join(map(str, bad[:5]))}")
    return state, meta


def _info_from_meta(meta: object, path: Path) -> ModelInfo:
    """The ``ModelInfo`` in our metadata (JSON text or a dict), checked: a CheckpointError names what is wrong."""
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: the '{FORMAT_KEY}' metadata is not valid JSON ({e})") from None
    info = meta.get("info") if isinstance(meta, dict) else None
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: the '{FORMAT_KEY}' metadata has no 'info' object")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer fastinst-rt (format {version!r})")
    missing = [k for k in ("name", "config", "class_names", "test_size") if k not in info]
    if missing or not isinstance(info["config"], dict):
        raise CheckpointError(f"{path}: the metadata has no {', '.join(repr(k) for k in missing or ['config'])}")
    try:
        parsed = ModelInfo.from_dict(info)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad metadata: {e}") from None
    _check_info(parsed, path)
    return parsed


def _check_info(info: ModelInfo, path: Path) -> None:
    """Bounds of the config and test size, and one class name per classifier output, before anything is built."""
    from .runtime.preprocess import check_test_size

    try:
        info.config.check()
        if len(info.test_size) != 2 or not all(isinstance(v, int) for v in info.test_size):
            raise ValueError(f"test_size must be two integers, got {list(info.test_size)}")
        check_test_size(*info.test_size)
    except ValueError as e:
        raise CheckpointError(f"{path}: bad metadata: {e}") from None
    if not all(isinstance(n, str) for n in info.class_names):
        raise CheckpointError(f"{path}: bad metadata: class_names must be strings")
    if len(info.class_names) != info.config.num_classes:
        raise CheckpointError(
            f"{path}: {len(info.class_names)} class names for a classifier of {info.config.num_classes} classes"
        )


def _check_shapes(config: FastInstConfig, shapes: dict[str, tuple[int, ...]], path: Path) -> None:
    """Compare the tensor shapes with those ``config`` implies, on the meta device: nothing is allocated."""
    with torch.device("meta"):
        _check_keys(_shapes(build_model(config).state_dict()), shapes, path)


def _count(state: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in state if (m := rx.match(k))}
    return max(found) + 1 if found else 0


def default_nheads(hidden_dim: int) -> int:
    """Attention heads assumed for an official checkpoint of width ``hidden_dim`` (no shape stores it)."""
    return max(1, min(8, hidden_dim // 16))


def config_from_official(state: dict[str, torch.Tensor], nheads: int | None = None) -> FastInstConfig:
    """Read the architecture off the tensor shapes of an official (Detectron2-named) state dict."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointError(f"not a FastInst checkpoint: missing key {key}")
        return tuple(state[key].shape)

    p = "sem_seg_head.predictor."
    if "backbone.stem.conv1.weight" in state:
        kind, stem = "resnet", shape("backbone.stem.conv1.weight")[0]
        stages = [f"backbone.res{i}" for i in range(2, 6)]
        deform = (False,) * 4
    elif "backbone.conv1.0.weight" in state:
        kind, stem = "resnet_vd", shape("backbone.conv1.0.weight")[0]
        stages = [f"backbone.layer{i}" for i in range(1, 5)]
        deform = tuple(f"{s}.0.conv2_offset.weight" in state for s in stages)
    else:
        raise CheckpointError("not a FastInst checkpoint: no ResNet stem (backbone.stem.conv1 or backbone.conv1.0)")
    layers = tuple(_count(state, re.escape(s) + r"\.(\d+)\.conv1\.weight$") for s in stages)
    widths = tuple(shape(f"{s}.0.conv1.weight")[0] for s in stages)
    out_channels = tuple(shape(f"{s}.0.conv3.weight")[0] for s in stages)
    side = shape(p + "meta_pos_embed")[-1]
    hidden_dim = shape("sem_seg_head.pixel_decoder.layer_1.weight")[0]
    return FastInstConfig(
        backbone=kind,
        layers=layers,
        stem_width=stem,
        widths=widths,
        out_channels=out_channels,
        deform_stages=deform,
        hidden_dim=hidden_dim,
        num_classes=shape(p + "class_embed_layers.0.layers.2.weight")[0] - 1,
        # The positional map is round(sqrt(Q)) wide; the official Q = 100 is the square.
        num_queries=side * side,
        num_aux_queries=shape(p + "empty_query_features.weight")[0]
        if p + "empty_query_features.weight" in state
        else 0,
        nheads=nheads or default_nheads(hidden_dim),
        dim_feedforward=shape(p + "transformer_query_ffn_layers.0.linear1.weight")[0],
        dec_layers=_count(state, re.escape(p) + r"transformer_query_ffn_layers\.(\d+)\.linear1\.weight$"),
        mask_dim=shape(p + "mask_features_layers.0.weight")[0],
    )


def _official_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key in IGNORED_KEYS:
            continue
        for old, new in _OFFICIAL_PREFIXES:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


def official_state_dict(model: FastInst) -> dict[str, torch.Tensor]:
    """``model``'s weights under the official Detectron2 key names (``torch.save({"model": ...})`` to share)."""
    out = {}
    for key, value in model.state_dict().items():
        for old, new in _OFFICIAL_PREFIXES:
            if key.startswith(new):
                key = old + key[len(new) :]
                break
        out[key] = value.detach().cpu()
    return out


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _check_keys(expected: dict[str, tuple[int, ...]], got: dict[str, tuple[int, ...]], path: Path) -> None:
    """CheckpointError naming missing, unexpected and mis-shaped keys of ``got`` (shapes by key), a few of each."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    mismatched = [f"{k}: checkpoint {got[k]} vs model {v}" for k, v in expected.items() if got.get(k, v) != v]
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", mismatched)):
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(f"{path} does not match the FastInst architecture: " + "; ".join(problems))


def first_non_finite(named: Iterable[tuple[str, torch.Tensor | np.ndarray]]) -> str | None:
    """The name of the first floating-point tensor or array holding NaN or inf, or None: one ``isfinite`` pass each.

    Checkpoint loading refuses such weights with it, and the exporter refuses such ONNX Runtime outputs."""
    for name, value in named:
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                return name
        elif np.issubdtype(np.asarray(value).dtype, np.floating) and not np.isfinite(value).all():
            return name
    return None


def load_state_strict(model: FastInst, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load ``state`` (our key names) into ``model``; any missing, unexpected or mis-shaped key, or a tensor holding
    NaN or inf, is an error that names it (``path`` is only used in the message)."""
    expected = model.state_dict()
    _check_keys(_shapes(expected), _shapes(state), path)
    bad = first_non_finite(state.items())
    if bad is not None:
        raise CheckpointError(f"{path}: tensor {bad} holds NaN or inf (corrupt weights, or a diverged training run)")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def _official_info(state: dict[str, torch.Tensor], path: Path, nheads: int | None) -> ModelInfo:
    """Architecture from the shapes; name, test size and classes from the zoo entry of that file name, if any."""
    try:
        config = config_from_official(state, nheads)
    except IndexError:  # a tensor of fewer dimensions than its layer has
        raise CheckpointError(
            f"{path}: not a FastInst checkpoint (a tensor has the wrong number of dimensions)"
        ) from None
    spec = next((s for s in MODELS.values() if s.checkpoint == path.name), None)
    names = spec.class_names if spec else COCO_CLASSES[: config.num_classes]
    if len(names) != config.num_classes:
        names = tuple(f"class{i}" for i in range(config.num_classes))
    info = ModelInfo(
        spec.name if spec else path.stem, config, tuple(names), tuple(spec.test_size if spec else DEFAULT_TEST_SIZE)
    )
    _check_info(info, path)
    return info


def load_checkpoint(
    model: str | os.PathLike, device: str | torch.device = "cpu", nheads: int | None = None
) -> tuple[FastInst, ModelInfo]:
    """Build and load a FastInst from an official ``.pth``, our ``.safetensors``/``.pth`` or a zoo name.

    Everything read from the file is checked before the model is built: the metadata, the config's bounds
    (``FastInstConfig.check``), one class name per class, and every tensor shape against the config (a
    ``.safetensors`` header gives the shapes without loading the tensors); NaN or inf weights are refused at
    load. Returns the model in eval mode on ``device`` and its ``ModelInfo``; ``CheckpointError`` (a ValueError)
    names the file and the problem.
    """
    path = resolve(model)
    if path.suffix == ".safetensors":
        shapes, meta = _safetensors_header(path)
        info = _info_from_meta(meta, path)
        _check_shapes(info.config, shapes, path)
        state = _load_safetensors(path)
    else:
        state, meta = _read_pickle(path)
        if meta is None:
            info = _official_info(state, path, nheads)
            state = _official_to_ours(state)
        else:
            info = _info_from_meta(meta, path)
        _check_shapes(info.config, _shapes(state), path)
    info = ModelInfo(info.name, info.config, info.class_names, info.test_size, str(path), _sha256(path))
    net = build_model(info.config)
    load_state_strict(net, state, path)
    return net.to(device).eval(), info


def save_checkpoint(model: FastInst, info: ModelInfo, path: str | os.PathLike) -> Path:
    """Write ``model`` with its ``info`` as ``.safetensors`` (weights + JSON metadata); returns the path."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"our checkpoints are .safetensors files, got {path.name}")
    meta_info = ModelInfo(info.name, info.config, info.class_names, info.test_size)
    meta = {"format_version": FORMAT_VERSION, "info": meta_info.to_dict()}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={FORMAT_KEY: json.dumps(meta)})
    return path
