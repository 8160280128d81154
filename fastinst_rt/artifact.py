"""The artifact format: what an exported ONNX file and a built TensorRT engine carry, in one place.

An ONNX export (``fastinst-rt export``) holds an ``ArtifactMeta`` in its ``metadata_props`` (one JSON value per key),
so ``Segmenter("model.onnx")`` needs no other argument. An engine (``fastinst-rt build``) cannot carry metadata, so
an ``EngineSidecar`` is written beside it as ``model.engine.json``: the ONNX metadata plus the TensorRT version, GPU
and profile it was built for. Both are validated when read (types, ranges, sizes), so a tampered or forged file
is refused with one line naming the file and the field, before any size read from it is used.

Graph I/O (the names are part of the format; the tensors are described in ``runtime.backends.base.Backend``):
inputs ``images`` (B, 3, H, W) uint8 RGB and ``sizes`` (B, 2) int64; outputs ``OUTPUT_NAMES[meta.outputs]``.

Numpy-free and torch-free: the exporter, the builder and every backend import it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .io.outputs import write_atomic

__all__ = [
    "FORMAT",
    "ENGINE_FORMAT",
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "PRECISIONS",
    "DCN_FORMS",
    "MAX_SIDE",
    "MAX_TEST_SIZE",
    "ArtifactError",
    "EngineMismatchError",
    "ArtifactMeta",
    "EngineSidecar",
    "read_onnx_meta",
    "sidecar_path",
    "read_sidecar",
    "write_sidecar",
    "parse_version",
    "check_engine_compat",
    "cache_dir",
]

FORMAT = "fastinst-rt"  # the "format" entry of an export's metadata
ENGINE_FORMAT = "fastinst-rt-engine"  # the "format" entry of an engine sidecar
INPUT_NAMES = ("images", "sizes")
# Output names per output kind: "raw" head outputs, or "e2e" (the top max_det query x class pairs).
OUTPUT_NAMES = {"raw": ("pred_logits", "pred_masks"), "e2e": ("scores", "labels", "query", "masks")}
PRECISIONS = ("fp32", "fp16", "int8")
DCN_FORMS = ("none", "onnx", "trt-plugin")  # no DCN, ONNX DeformConv-19, TensorRT's ModulatedDeformConv2d plugin
MAX_SIDE = 2**15  # largest input side an artifact may declare (the runtime's image side limit)
#: Largest test-time resize (``max_size``, hence every side of a resized image), in pixels: 2.4x the largest
#: official test size (853). The masks are computed at this size: 100 of them at 2048x2048 already take 1.6 GB as
#: float32, and memory grows with the square of the side (100000 took 22 GB before any model ran).
MAX_TEST_SIZE = 2048
MAX_BATCH = 1024
MAX_CLASSES = 100_000


class ArtifactError(ValueError):
    """An ONNX export or engine sidecar whose fastinst-rt metadata is missing, malformed or out of range."""


class EngineMismatchError(ValueError):
    """An engine built for another TensorRT version or GPU model than the one it is loaded on."""


def cache_dir() -> Path:
    """Where downloaded checkpoints and runtime caches live: ``$FASTINST_RT_HOME``, else ``~/.cache/fastinst_rt``."""
    return Path(os.environ.get("FASTINST_RT_HOME", Path.home() / ".cache" / "fastinst_rt"))


def parse_version(text: str) -> tuple[int, ...]:
    """ "10.4.0.26" -> (10, 4, 0, 26); non-numeric parts are dropped ("8.6.1.post1" -> (8, 6, 1))."""
    out = []
    for part in str(text).split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


class _Fields:
    """Typed reads of one decoded metadata map; each failure names the file and the field."""

    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        self.data, self.where = data, where

    def fail(self, key: str, expected: str) -> ArtifactError:
        shown = repr(self.data.get(key))
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return ArtifactError(f"{self.where}: bad metadata field {key!r}: expected {expected}, got {shown}")

    def get(self, key: str, default: Any = dataclasses.MISSING) -> Any:
        if key not in self.data:
            if default is dataclasses.MISSING:
                raise ArtifactError(f"{self.where}: incomplete fastinst-rt metadata (field {key!r} is missing)")
            return default
        return self.data[key]

    def integer(self, key: str, lo: int, hi: int, default: Any = dataclasses.MISSING, optional: bool = False) -> Any:
        value = self.get(key, default)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.fail(key, f"an integer in {lo}..{hi}" + (" or null" if optional else ""))
        return value

    def text(self, key: str, default: Any = dataclasses.MISSING, choices: tuple[str, ...] | None = None) -> str:
        value = self.get(key, default)
        if not isinstance(value, str) or (choices is not None and value not in choices):
            raise self.fail(key, f"one of {', '.join(choices)}" if choices else "a string")
        return value

    def flag(self, key: str, default: Any = dataclasses.MISSING) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, "true or false")
        return value

    def size(self, key: str, lo: int, multiple: int = 1, optional: bool = False) -> tuple[int, int] | None:
        """A two-int (h, w) list, each side in lo..MAX_SIDE and a multiple of ``multiple``."""
        value = self.get(key, None if optional else dataclasses.MISSING)
        if value is None and optional:
            return None
        ok = isinstance(value, list) and len(value) == 2
        ok = ok and all(not isinstance(v, bool) and isinstance(v, int) and lo <= v <= MAX_SIDE for v in value)
        if not ok or any(v % multiple for v in value):
            what = f"two integers in {lo}..{MAX_SIDE}" + (f", multiples of {multiple}" if multiple > 1 else "")
            raise self.fail(key, what)
        return int(value[0]), int(value[1])

    def numbers(self, key: str, count: int) -> tuple[float, ...] | None:
        value = self.get(key, None)
        if value is None:
            return None
        if not isinstance(value, list) or len(value) != count or not all(_is_number(v) for v in value):
            raise self.fail(key, f"{count} numbers")
        return tuple(float(v) for v in value)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class ArtifactMeta:
    """The metadata of an export: what the runtime needs to pre- and post-process for it, and its provenance.

    Sizes are (h, w) in pixels. ``fixed_size`` is the one padded input a static graph takes (None: dynamic);
    ``batch`` its fixed batch (None: dynamic). ``max_det`` is the number of pairs an "e2e" graph returns.
    """

    model: str
    class_names: tuple[str, ...]
    test_size: tuple[int, int]  # (short side, long-side cap) of the test-time resize
    outputs: str = "e2e"  # a key of OUTPUT_NAMES
    size_divisibility: int = 32
    fixed_size: tuple[int, int] | None = None
    batch: int | None = None
    dynamic: bool = False
    precision: str = "fp32"  # one of PRECISIONS
    max_det: int | None = None
    num_queries: int | None = None
    mask_stride: int = 8
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    opset: int | None = None
    exporter: str = ""
    dcn: str = "none"  # one of DCN_FORMS
    source: str = ""
    source_sha256: str = ""
    fastinst_rt_version: str = ""
    config: dict | None = None
    extra: dict = field(default_factory=dict)  # fields this version does not know, kept as they are

    @property
    def output_names(self) -> tuple[str, ...]:
        return OUTPUT_NAMES[self.outputs]

    def to_dict(self) -> dict:
        """JSON-ready values, with ``format`` and a description of the inputs (for people reading the file)."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        inputs = [
            {"name": "images", "dtype": "uint8", "layout": "NCHW", "color": "RGB",
             "note": "resized image at the top left, zero padding bottom/right to multiples of size_divisibility"},
            {"name": "sizes", "dtype": "int64", "layout": "B2", "note": "valid (h, w) of each image"},
        ]  # fmt: skip
        return {"format": FORMAT, **self.extra, **d, "inputs": inputs, "output_names": list(self.output_names)}

    def to_props(self) -> dict[str, str]:
        """The ONNX ``metadata_props`` entries: one JSON value per key."""
        return {k: json.dumps(v) for k, v in self.to_dict().items()}

    @classmethod
    def from_props(cls, props: Mapping[str, str], where: str | os.PathLike = "model") -> ArtifactMeta:
        """Decode and validate ONNX ``metadata_props`` (string values holding JSON)."""
        decoded = {}
        for key, value in props.items():
            try:
                decoded[key] = json.loads(value)
            except ValueError:
                decoded[key] = value  # a plain string; a field that needs a number will refuse it
        return cls.from_dict(decoded, where)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str | os.PathLike = "model") -> ArtifactMeta:
        """Validate a decoded metadata map; ``ArtifactError`` naming ``where`` and the field on any problem."""
        where = str(where)
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise ArtifactError(
                f"{where} is not a fastinst-rt export (no fastinst-rt metadata); export it with `fastinst-rt export`"
            )
        f = _Fields(d, where)
        names = f.get("class_names")
        if (
            not isinstance(names, list)
            or not 1 <= len(names) <= MAX_CLASSES
            or not all(isinstance(n, str) for n in names)
        ):
            raise f.fail("class_names", f"a list of 1..{MAX_CLASSES} strings")
        short, long = f.size("test_size", lo=1)
        if not 32 <= short <= long <= MAX_TEST_SIZE:
            raise f.fail("test_size", f"[short side, long-side cap] with 32 <= short <= cap <= {MAX_TEST_SIZE}")
        div = f.integer("size_divisibility", 1, 1024, default=32)
        outputs = f.text("outputs", choices=tuple(OUTPUT_NAMES))
        dynamic = f.flag("dynamic", default=False)
        fixed = f.size("fixed_size", lo=div, multiple=div, optional=True)
        if dynamic and fixed is not None:
            raise f.fail("fixed_size", "null in a dynamic export")
        known = {fld.name for fld in dataclasses.fields(cls)} | {"format", "inputs", "output_names"}
        return cls(
            model=f.text("model", default=Path(where).stem), class_names=tuple(names), test_size=(short, long),
            outputs=outputs, size_divisibility=div, fixed_size=fixed,
            batch=f.integer("batch", 1, MAX_BATCH, default=None, optional=True), dynamic=dynamic,
            precision=f.text("precision", default="fp32", choices=PRECISIONS),
            max_det=f.integer("max_det", 1, MAX_CLASSES, optional=True, default=None if outputs == "raw" else 100),
            num_queries=f.integer("num_queries", 1, 10_000, default=None, optional=True),
            mask_stride=f.integer("mask_stride", 1, 64, default=8),
            mean=f.numbers("mean", 3), std=f.numbers("std", 3),
            opset=f.integer("opset", 1, 100, default=None, optional=True), exporter=f.text("exporter", default=""),
            dcn=f.text("dcn", default="none", choices=DCN_FORMS), source=f.text("source", default=""),
            source_sha256=f.text("source_sha256", default=""),
            fastinst_rt_version=f.text("fastinst_rt_version", default=""), config=_optional_dict(f, "config"),
            extra={k: v for k, v in d.items() if k not in known},
        )  # fmt: skip

    def check_io(self, inputs: Mapping[str, list], outputs: Mapping[str, list], where: str | os.PathLike) -> None:
        """Check a graph's I/O ({name: dims}, a dim an int or a symbol) against this metadata: the names, and where
        the dims are static, the class count, the fixed size and the batch."""
        if tuple(inputs) != INPUT_NAMES or tuple(outputs) != self.output_names:
            raise ArtifactError(
                f"{where}: unexpected graph I/O {tuple(inputs)} -> {tuple(outputs)} for a {self.outputs} export "
                f"(expected {INPUT_NAMES} -> {self.output_names}); re-export it with this fastinst-rt"
            )
        width = outputs.get("pred_logits", [None] * 3)[-1]
        if isinstance(width, int) and width != len(self.class_names) + 1:
            raise ArtifactError(f"{where}: the metadata names {len(self.class_names)} classes but the graph scores "
                                f"{width - 1} (metadata field 'class_names')")  # fmt: skip
        images = list(inputs["images"])
        if self.fixed_size is not None and all(isinstance(v, int) for v in images[2:]):
            if tuple(images[2:]) != self.fixed_size:
                raise ArtifactError(f"{where}: metadata field 'fixed_size' {list(self.fixed_size)} does not match "
                                    f"the graph input {images[2]}x{images[3]}")  # fmt: skip
        if self.batch is not None and isinstance(images[0], int) and images[0] != self.batch:
            raise ArtifactError(f"{where}: metadata field 'batch' {self.batch} does not match the graph's {images[0]}")


def _optional_dict(f: _Fields, key: str) -> dict | None:
    value = f.get(key, None)
    if value is not None and not isinstance(value, dict):
        raise f.fail(key, "an object or null")
    return value


def read_onnx_meta(proto: Any, where: str | os.PathLike) -> ArtifactMeta:
    """The validated metadata of a loaded ``onnx.ModelProto`` (graph I/O checked too)."""
    meta = ArtifactMeta.from_props({p.key: p.value for p in proto.metadata_props}, where)
    meta.check_io(_graph_dims(proto.graph.input), _graph_dims(proto.graph.output), where)
    return meta


def _graph_dims(values: Any) -> dict[str, list]:
    out = {}
    for vi in values:
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
    return out


@dataclass(frozen=True)
class EngineSidecar:
    """The ``.engine.json`` beside an engine: the export's metadata and what the engine is tied to."""

    meta: ArtifactMeta
    tensorrt: str  # the TensorRT version that built it, e.g. "10.4.0.26"
    gpu: str  # the GPU model's name, e.g. "Tesla T4"
    compute_capability: str  # e.g. "7.5"
    precision: str = "fp32"
    max_batch: int = 1  # largest batch the engine's profile takes
    dynamic_batch: bool = False  # whether it takes 1..max_batch images (else exactly max_batch)
    profile: dict = field(default_factory=dict)  # {input name: [min, opt, max] shapes}
    build: dict = field(default_factory=dict)  # provenance: onnx, onnx_sha256, strongly_typed, workspace_gb, ...

    def to_dict(self) -> dict:
        return {"format": ENGINE_FORMAT, "meta": self.meta.to_dict(), "tensorrt": self.tensorrt, "gpu": self.gpu,
                "compute_capability": self.compute_capability, "precision": self.precision,
                "max_batch": self.max_batch, "dynamic_batch": self.dynamic_batch, "profile": self.profile,
                **self.build}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Any, where: str | os.PathLike) -> EngineSidecar:
        where = str(where)
        if not isinstance(d, dict) or d.get("format") != ENGINE_FORMAT or "meta" not in d:
            raise ArtifactError(f"{where} is not a fastinst-rt engine sidecar")
        f = _Fields(d, where)
        meta = ArtifactMeta.from_dict(f.get("meta"), f"{where} (meta)")
        profile = f.get("profile", {})
        if not isinstance(profile, dict) or not all(_is_profile(v) for v in profile.values()):
            raise f.fail("profile", f"{{input: [min, opt, max] shapes}} with sides in 1..{MAX_SIDE}")
        known = {"format", "meta", "tensorrt", "gpu", "compute_capability", "precision", "max_batch", "dynamic_batch",
                 "profile"}  # fmt: skip
        return cls(
            meta=meta, tensorrt=f.text("tensorrt"), gpu=f.text("gpu"), compute_capability=f.text("compute_capability"),
            precision=f.text("precision", default=meta.precision, choices=PRECISIONS),
            max_batch=f.integer("max_batch", 1, MAX_BATCH, default=meta.batch or 1),
            dynamic_batch=f.flag("dynamic_batch", default=False), profile=profile,
            build={k: v for k, v in d.items() if k not in known},
        )  # fmt: skip


def _is_profile(shapes: Any) -> bool:
    return (
        isinstance(shapes, list)
        and len(shapes) == 3
        and all(isinstance(s, list) and s and all(_is_side(v) for v in s) for s in shapes)
    )


def _is_side(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIDE


def sidecar_path(engine: str | os.PathLike) -> Path:
    """The metadata file beside an engine: ``model.engine`` -> ``model.engine.json``."""
    return Path(str(engine) + ".json")


def read_sidecar(engine: str | os.PathLike) -> EngineSidecar:
    """The validated sidecar of ``engine``; clear errors when either file is missing or the sidecar is not ours."""
    engine = Path(engine)
    if not engine.is_file():
        raise FileNotFoundError(f"no such engine file: {engine}")
    side = sidecar_path(engine)
    if not side.is_file():
        raise ArtifactError(
            f"{engine} has no {side.name} beside it; rebuild it with `fastinst-rt build` (the sidecar records the "
            "classes, the input size, and the TensorRT version and GPU it was built for)"
        )
    if side.stat().st_size > 2**24:  # a sidecar is a few kB: refuse to read a huge file into memory
        raise ArtifactError(f"{side} is not a fastinst-rt engine sidecar ({side.stat().st_size} bytes)")
    try:
        data = json.loads(side.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{side} is not valid JSON: {e}") from None
    return EngineSidecar.from_dict(data, side)


def write_sidecar(engine: str | os.PathLike, sidecar: EngineSidecar) -> Path:
    """Write ``sidecar`` beside ``engine``; returns its path."""
    path = sidecar_path(engine)
    return write_atomic(path, json.dumps(sidecar.to_dict(), indent=2))


def check_engine_compat(sidecar: EngineSidecar, trt_version: str, gpu_name: str, compute_capability: str) -> None:
    """Refuse an engine built with another TensorRT version or for another GPU model (engines are not portable)."""
    built, here = sidecar.tensorrt, trt_version
    if parse_version(built)[:3] != parse_version(here)[:3]:
        raise EngineMismatchError(
            f"the engine was built with TensorRT {built} but this is TensorRT {here}; engines do not move between "
            "TensorRT versions: rebuild it here with `fastinst-rt build` from the ONNX file"
        )
    if sidecar.gpu != gpu_name or sidecar.compute_capability != compute_capability:
        raise EngineMismatchError(
            f"the engine was built for {sidecar.gpu} (sm {sidecar.compute_capability}) but this GPU is "
            f"{gpu_name} (sm {compute_capability}); build engines on the GPU model that runs them"
        )
