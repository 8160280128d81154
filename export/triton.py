"""A Triton Inference Server model repository for an artifact: ``REPO/<name>/1/model.onnx|model.plan`` and
``REPO/<name>/config.pbtxt``.

The configuration is derived from the artifact's metadata (the ONNX ``metadata_props`` or the engine's sidecar):
platform ``onnxruntime_onnx`` or ``tensorrt_plan``; inputs and outputs by name with their Triton data types and
per-request dims; ``max_batch_size``, ``dynamic_batching`` and ``instance_group``. The metadata itself travels in
``parameters { key: "fastinst_rt" }``, so a client (``fastinst_rt.serving.triton.TritonBackend``) applies the right
pre- and post-processing without the artifact. Needs neither torch nor tritonclient.

A static-batch artifact gets ``max_batch_size: 0`` and full dims (batch included): Triton can then not batch
requests, because the graph takes exactly its batch. Dynamic batching needs a ``--dynamic`` export (or an engine
built with a batch range starting at 1).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from fastinst_rt.io.outputs import write_atomic

__all__ = ["write_model_repository", "artifact_io", "TRITON_DTYPES"]

# numpy dtype name -> Triton DataType (model_config.proto).
TRITON_DTYPES = {"uint8": "TYPE_UINT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64", "float16": "TYPE_FP16",
                 "float32": "TYPE_FP32", "bool": "TYPE_BOOL"}  # fmt: skip
# The artifact output contract: outputs are float32 whatever the precision (export casts back), labels int64.
_OUTPUT_DTYPES = {"pred_logits": "float32", "pred_masks": "float32", "scores": "float32", "labels": "int64",
                  "query": "int64", "masks": "float32", "boxes": "float32"}  # fmt: skip


def _read_artifact(path: Path) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """(platform, export metadata, engine sidecar or None) of an ``.onnx`` export or a ``.engine``/``.plan``, as
    the validated JSON-ready dicts of ``fastinst_rt.artifact``."""
    from fastinst_rt.artifact import read_onnx_meta, read_sidecar
    from fastinst_rt.runtime.backends import backend_for

    kind = backend_for(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such artifact: {path}")
    if kind == "onnxruntime":
        import onnx

        meta = read_onnx_meta(onnx.load(os.fspath(path), load_external_data=False), path)
        return "onnxruntime_onnx", meta.to_dict(), None
    if kind == "tensorrt":
        sidecar = read_sidecar(path).to_dict()
        return "tensorrt_plan", sidecar["meta"], sidecar
    raise ValueError(f"{path}: export-triton takes an .onnx export or a TensorRT engine, not a {kind} checkpoint")


def artifact_io(meta: dict[str, Any], sidecar: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Per-tensor {"dtype", "dims", "input"} of an artifact, dims per image (no batch axis; -1 where dynamic).

    Names come from the metadata's ``inputs`` and ``output_names``, sizes from ``fixed_size``, ``max_det``,
    ``num_queries``, ``class_names`` and ``mask_stride``. TensorRT before 9 has no int64 tensors: its parser casts
    them to int32, so an engine's sidecar with an 8.x version gets int32 for those.
    """
    fixed = meta.get("fixed_size")
    h, w = (int(fixed[0]), int(fixed[1])) if fixed else (-1, -1)
    stride = int(meta.get("mask_stride", 8))
    mh, mw = (h // stride, w // stride) if fixed else (-1, -1)
    n, q, k1 = meta.get("max_det"), int(meta.get("num_queries", 0)), len(meta["class_names"]) + 1
    dims = {"images": [3, h, w], "sizes": [2], "pred_logits": [q, k1], "pred_masks": [q, mh, mw],
            "scores": [n], "labels": [n], "query": [n], "masks": [n, mh, mw], "boxes": [n, 4]}  # fmt: skip
    int64_ok = sidecar is None or int(str(sidecar.get("tensorrt", "10")).split(".")[0]) >= 9
    out: dict[str, dict[str, Any]] = {}
    for spec in meta["inputs"]:
        out[spec["name"]] = {"dtype": spec["dtype"], "dims": dims[spec["name"]], "input": True}
    for name in meta["output_names"]:
        out[name] = {"dtype": _OUTPUT_DTYPES[name], "dims": dims[name], "input": False}
    for t in out.values():
        if t["dtype"] == "int64" and not int64_ok:
            t["dtype"] = "int32"
    return out


def _batching(meta: dict[str, Any], sidecar: dict[str, Any] | None, max_batch: int) -> tuple[int, int | None]:
    """(Triton max_batch_size, the artifact's fixed batch or None): 0 and B for an artifact of exactly B images."""
    if sidecar is not None:
        smallest = int(sidecar.get("profile", {}).get("images", [[1]])[0][0])
        if sidecar.get("dynamic_batch") and smallest == 1:
            return min(max_batch, int(sidecar["max_batch"])), None
        return 0, int(sidecar["max_batch"])
    if meta.get("batch") is None:  # a dynamic export: any batch
        return max_batch, None
    return 0, int(meta["batch"])


def _text(value: str) -> str:
    """A protobuf text-format string literal: printable ASCII as is, everything else as octal byte escapes."""
    out = []
    for byte in value.encode("utf-8"):
        ch = chr(byte)
        out.append("\\" + ch if ch in '"\\' else ch if 32 <= byte < 127 else f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _tensor(name: str, t: dict[str, Any], batch: int | None) -> str:
    dims = ([batch] if batch is not None else []) + [int(d) for d in t["dims"]]
    return f"  {{ name: {_text(name)} data_type: {TRITON_DTYPES[t['dtype']]} dims: [ {', '.join(map(str, dims))} ] }}"


def config_text(
    name: str, platform: str, meta: dict[str, Any], sidecar: dict[str, Any] | None, *, max_batch: int = 8,
    instances: int = 1, kind: str = "gpu", max_queue_delay_us: int = 2000,
) -> str:  # fmt: skip
    """The ``config.pbtxt`` text of an artifact (see the module docstring)."""
    if max_batch < 1 or instances < 1 or max_queue_delay_us < 0:
        raise ValueError(f"need max_batch >= 1, instances >= 1, max_queue_delay_us >= 0; got {max_batch}, "
                         f"{instances}, {max_queue_delay_us}")  # fmt: skip
    if kind not in ("gpu", "cpu"):
        raise ValueError(f"instance kind must be 'gpu' or 'cpu', got {kind!r}")
    if platform == "tensorrt_plan" and kind == "cpu":
        raise ValueError("a TensorRT plan runs on GPUs only: use --kind gpu")
    io = artifact_io(meta, sidecar)
    max_batch_size, fixed_batch = _batching(meta, sidecar, max_batch)
    inputs = ",\n".join(_tensor(n, t, fixed_batch) for n, t in io.items() if t["input"])
    outputs = ",\n".join(_tensor(n, t, fixed_batch) for n, t in io.items() if not t["input"])
    lines = [
        "# Written by `fastinst-rt export-triton` from the artifact's metadata. Dims are per request item"
        + (" (Triton adds the batch axis)." if max_batch_size else " (batch included: this artifact takes one batch)."),
        f"name: {_text(name)}",
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch_size}",
        f"input [\n{inputs}\n]",
        f"output [\n{outputs}\n]",
    ]
    if max_batch_size:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}")
    lines.append(f"instance_group [ {{ count: {instances} kind: KIND_{kind.upper()} }} ]")
    blob = json.dumps(meta, separators=(",", ":"), sort_keys=True)
    lines.append(f'parameters {{ key: "fastinst_rt" value {{ string_value: {_text(blob)} }} }}')
    return "\n".join(lines) + "\n"


def write_model_repository(
    artifact: str | os.PathLike, repo: str | os.PathLike, *, name: str | None = None, max_batch: int = 8,
    instances: int = 1, kind: str = "gpu", max_queue_delay_us: int = 2000,
) -> Path:  # fmt: skip
    """Write ``repo/<name>/1/model.{onnx,plan}`` and ``repo/<name>/config.pbtxt``; returns the config path.

    Args:
        artifact: an ``.onnx`` export, or an ``.engine``/``.plan`` with its ``.json`` sidecar.
        name: the model's name in the repository (default: the artifact's file stem, made Triton-safe).
        max_batch: ``max_batch_size`` of a dynamic-batch artifact (an engine's is capped by its profile).
        instances, kind: ``instance_group`` (count per device, "gpu" or "cpu").
        max_queue_delay_us: how long the dynamic batcher waits to fill a batch.
    """
    path = Path(artifact)
    platform, meta, sidecar = _read_artifact(path)
    name = name or re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)
    text = config_text(name, platform, meta, sidecar, max_batch=max_batch, instances=instances, kind=kind,
                       max_queue_delay_us=max_queue_delay_us)  # fmt: skip
    model_dir = Path(repo) / name
    version_dir = model_dir / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    target = version_dir / ("model.onnx" if platform == "onnxruntime_onnx" else "model.plan")
    shutil.copyfile(path, target)
    config = model_dir / "config.pbtxt"
    return write_atomic(config, text)
