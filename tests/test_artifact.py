"""The artifact format (``fastinst_rt.artifact``): metadata round trip, and tampered or forged files refused with one
line naming the file and the field, on real exported graphs and real sidecar files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from fastinst_rt import Segmenter
from fastinst_rt.artifact import (
    ENGINE_FORMAT,
    ArtifactError,
    ArtifactMeta,
    EngineSidecar,
    read_onnx_meta,
    read_sidecar,
    sidecar_path,
)
from fastinst_rt.cli import main
from fastinst_rt.export import export_onnx

from .conftest import TEST_VARIANTS

R50 = "fastinst-test-r50-d2"
assert R50 in TEST_VARIANTS
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def graphs(tiny_checkpoints: dict[str, Path], tmp_path_factory) -> dict[str, Path]:
    """A static end-to-end and a static raw graph (TorchScript exporter, opset 17: fast to make)."""
    root = tmp_path_factory.mktemp("artifact")
    ckpt = tiny_checkpoints[R50]
    return {
        "e2e": export_onnx(ckpt, root / "e2e.onnx", opset=17, progress=False),
        "raw": export_onnx(ckpt, root / "raw.onnx", opset=17, raw=True, progress=False),
    }


def _tamper(src: Path, dst: Path, **fields: str) -> Path:
    """A copy of ``src`` with metadata values replaced by the given raw strings (as someone editing the file)."""
    model = onnx.load(str(src))
    for prop in model.metadata_props:
        if prop.key in fields:
            prop.value = fields[prop.key]
    onnx.save(model, str(dst))
    return dst


def _cli_error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_metadata_round_trips(graphs: dict[str, Path]) -> None:
    meta = read_onnx_meta(onnx.load(str(graphs["e2e"])), graphs["e2e"])
    assert meta.outputs == "e2e" and meta.output_names == ("scores", "labels", "query", "masks")
    assert meta.fixed_size == (320, 448) and meta.batch == 1 and meta.max_det == 100 and meta.precision == "fp32"
    assert ArtifactMeta.from_props(meta.to_props(), "again") == meta
    raw = read_onnx_meta(onnx.load(str(graphs["raw"])), graphs["raw"])
    assert raw.outputs == "raw" and raw.max_det is None and len(raw.class_names) == 80


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("fixed_size", "abc"),
        ("fixed_size", "[-320, 448]"),
        ("fixed_size", "[320000000, 448]"),
        ("fixed_size", "[320]"),
        ("fixed_size", "[330, 448]"),  # not a multiple of the size divisibility
        ("fixed_size", "[640, 640]"),  # well-formed, but not the graph's input
        ("test_size", "abc"),
        ("test_size", "[-1, 5]"),
        ("test_size", "[1000000000, 1000000000]"),
        ("test_size", "[320, 427, 1]"),
        ("test_size", "[5000, 5000]"),  # well-formed, but over the bounded test-time resize (MAX_TEST_SIZE)
        ("batch", "0"),
        ("precision", '"int4"'),
    ],
)
def test_tampered_onnx_metadata_is_one_line_naming_file_and_field(
    graphs: dict[str, Path], tmp_path: Path, capsys, field: str, value: str
) -> None:
    path = _tamper(graphs["e2e"], tmp_path / "tampered.onnx", **{field: value})
    with pytest.raises(ArtifactError, match=field):
        Segmenter(path)
    err = _cli_error(capsys, "predict", str(path), "--model", str(path))
    assert str(path) in err and repr(field) in err, err


def test_class_names_must_match_the_graph(graphs: dict[str, Path], tmp_path: Path, capsys) -> None:
    path = _tamper(graphs["raw"], tmp_path / "names.onnx", class_names='["a", "b", "c"]')
    err = _cli_error(capsys, "info", str(path))
    assert "3 classes but the graph scores 80" in err and "class_names" in err


def _sidecar_of(onnx_path: Path, engine: Path, **changes) -> Path:
    """A fake engine file with a well-formed sidecar built from a real export's metadata, then ``changes``."""
    meta = read_onnx_meta(onnx.load(str(onnx_path)), onnx_path)
    side = EngineSidecar(meta, tensorrt="10.4.0.26", gpu="Tesla T4", compute_capability="7.5", max_batch=1,
                         profile={"images": [[1, 3, 320, 448]] * 3, "sizes": [[1, 2]] * 3}).to_dict()  # fmt: skip
    for key, value in changes.items():
        if key.startswith("meta_"):
            side["meta"][key[5:]] = value
        else:
            side[key] = value
    engine.write_bytes(b"serialized engine bytes (never deserialized in these tests)")
    sidecar_path(engine).write_text(json.dumps(side))
    return engine


@pytest.mark.skipif(HAS_TRT, reason="checks the message given where TensorRT is not installed")
def test_engine_without_tensorrt_reads_the_sidecar_then_names_tensorrt(
    graphs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    engine = _sidecar_of(graphs["e2e"], tmp_path / "m.engine")
    assert read_sidecar(engine).meta.fixed_size == (320, 448)
    with pytest.raises(RuntimeError, match="needs TensorRT"):
        Segmenter(engine)
    err = _cli_error(capsys, "info", str(engine))
    assert "needs TensorRT" in err and "fastinst-rt[trt]" in err


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"format": "someone-else"}, "not a fastinst-rt engine sidecar"),
        ({"max_batch": "abc"}, "'max_batch'"),
        ({"max_batch": 10**9}, "'max_batch'"),
        ({"tensorrt": 10}, "'tensorrt'"),
        ({"profile": {"images": [[1, 3, 10**9, 448]] * 3}}, "'profile'"),
        ({"meta_fixed_size": [-320, 448]}, "'fixed_size'"),
        ({"meta_test_size": "abc"}, "'test_size'"),
        ({"meta_class_names": []}, "'class_names'"),
    ],
)
def test_forged_sidecar_is_refused_before_tensorrt(
    graphs: dict[str, Path], tmp_path: Path, capsys, changes: dict, field: str
) -> None:
    engine = _sidecar_of(graphs["e2e"], tmp_path / "forged.engine", **changes)
    with pytest.raises(ArtifactError, match=field):
        read_sidecar(engine)
    err = _cli_error(capsys, "info", str(engine))
    assert field in err and "forged.engine.json" in err, err


def test_sidecar_that_is_not_json_or_too_big(tmp_path: Path, capsys) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    sidecar_path(engine).write_bytes(b"\xff\xfe not json")
    assert "not valid JSON" in _cli_error(capsys, "info", str(engine))
    sidecar_path(engine).write_text(json.dumps({"format": ENGINE_FORMAT, "meta": [1, 2]}))
    assert "not a fastinst-rt export" in _cli_error(capsys, "info", str(engine))


def test_every_backend_keeps_the_output_contract(
    graphs: dict[str, Path], tiny_checkpoints: dict[str, Path], photo
) -> None:
    """Torch, a raw graph and an end-to-end graph give the same pairs, with the keys, dtypes and shapes of
    ``Backend``'s contract (the raw ones selected in numpy, the end-to-end ones by the graph's TopK)."""
    from fastinst_rt.runtime.backends import PAIR_KEYS, open_backend
    from fastinst_rt.runtime.preprocess import prepare

    # An image that fills the static graphs' 320x448 input: static graphs mask padding beyond an image's /32 size
    # (export/padding.py), which the torch module, fed the same padded input, does not.
    batch, sizes, _ = prepare([np.ascontiguousarray(photo[:366])], 320, 448, fixed_size=(320, 448))
    assert sizes.tolist() == [[320, 448]]
    outs = {}
    for name, model in (("torch", tiny_checkpoints[R50]), ("raw", graphs["raw"]), ("e2e", graphs["e2e"])):
        with open_backend(model, device="cpu") as backend:
            outs[name] = backend.infer(batch, sizes, max_det=30)
    for out in outs.values():
        assert tuple(out) == PAIR_KEYS
        assert out["scores"].dtype == np.float32 and out["scores"].shape == (1, 30)
        assert out["labels"].dtype == out["query"].dtype == np.int64
        assert out["masks"].dtype == np.float32 and out["masks"].shape == (1, 30, 40, 56)
        assert np.all(np.diff(out["scores"][0]) <= 0)
    for name in ("raw", "e2e"):
        np.testing.assert_allclose(outs[name]["scores"], outs["torch"]["scores"], rtol=1e-4, atol=1e-6)
        assert np.array_equal(outs[name]["query"], outs["torch"]["query"]), name
        assert np.array_equal(outs[name]["labels"], outs["torch"]["labels"]), name


def test_export_refuses_sizes_the_runtime_would_refuse(tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys):
    from fastinst_rt.export.onnx_export import parse_imgsz

    with pytest.raises(ValueError, match="two sides in 32..2048"):
        parse_imgsz("100000x100000")
    out = tmp_path / "never.onnx"
    # The CLI refuses --min-size 16 in its parser now (32..2048); the library's own check still says why.
    with pytest.raises(ValueError) as e:
        export_onnx(tiny_checkpoints[R50], out, min_size=16, progress=False)
    err = str(e.value)
    assert "bad test size 16/" in err and not out.exists()
    assert "32..2048" in _cli_error(capsys, "export", str(tiny_checkpoints[R50]), "-o", str(out), "--min-size", "16")
