"""Triton model repositories: config.pbtxt parsed with Triton's own schema (tritonclient's model_config_pb2) and
checked against the artifact's I/O, for both platforms; TritonBackend's gRPC request/response encoding.

No Triton server runs here (its NGC container needs a GPU host; PyTriton's bundled server is not used). The
TritonBackend test talks gRPC, through tritonclient, to a loopback server implementing the two KServe-v2 calls it
uses (ModelConfig, ModelInfer) with Triton's generated servicer and ONNX Runtime behind it. The tensorrt_plan
repository is written from a real export's metadata and a sidecar as ``fastinst-rt build`` writes it; the plan
bytes are a placeholder (no TensorRT here), which the writer copies without reading.
"""

from __future__ import annotations

import json
from concurrent import futures
from pathlib import Path

import numpy as np
import pytest

tc = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] (the serve extra) is not installed")
grpc = pytest.importorskip("grpc")

from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc  # noqa: E402

from fastinst_rt import Segmenter  # noqa: E402
from fastinst_rt.artifact import ENGINE_FORMAT, sidecar_path  # noqa: E402
from fastinst_rt.cli import main  # noqa: E402
from fastinst_rt.export import export_onnx  # noqa: E402
from fastinst_rt.export.triton import write_model_repository  # noqa: E402
from fastinst_rt.serving.triton import TritonBackend  # noqa: E402

R50 = "fastinst-test-r50-d2"
_NP = {"TYPE_UINT8": "uint8", "TYPE_INT32": "int32", "TYPE_INT64": "int64", "TYPE_FP32": "float32"}
_ORT = {"tensor(uint8)": "uint8", "tensor(int64)": "int64", "tensor(float)": "float32"}
_WIRE_NP = {"UINT8": np.uint8, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32}


@pytest.fixture(scope="module")
def exports(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("triton")
    ckpt, kw = tiny_checkpoints[R50], {"simplify": False, "progress": False}
    return {
        "dynamic": export_onnx(ckpt, root / "e2e-dyn.onnx", dynamic=True, **kw),
        "static": export_onnx(ckpt, root / "raw-b1.onnx", raw=True, opset=17, **kw),
    }


def parse(config: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(config.read_text(), model_config_pb2.ModelConfig())


def session_io(onnx_path: Path) -> dict[str, tuple[str, list]]:
    import onnxruntime as ort

    s = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return {t.name: (_ORT[t.type], [d if isinstance(d, int) else -1 for d in t.shape])
            for t in list(s.get_inputs()) + list(s.get_outputs())}  # fmt: skip


def config_io(cfg: model_config_pb2.ModelConfig) -> dict[str, tuple[str, list]]:
    """name -> (numpy dtype, full dims with the batch axis as -1 when Triton batches)."""
    batch = [-1] if cfg.max_batch_size > 0 else []
    dtype = model_config_pb2.DataType.Name
    return {t.name: (_NP[dtype(t.data_type)], batch + list(t.dims)) for t in list(cfg.input) + list(cfg.output)}


def test_onnx_dynamic_repository_matches_the_graph(exports, tmp_path: Path) -> None:
    config = write_model_repository(exports["dynamic"], tmp_path / "repo", name="fastinst", max_batch=4, instances=2)
    assert (tmp_path / "repo" / "fastinst" / "1" / "model.onnx").read_bytes() == exports["dynamic"].read_bytes()
    cfg = parse(config)
    assert (cfg.name, cfg.platform, cfg.max_batch_size) == ("fastinst", "onnxruntime_onnx", 4)
    assert config_io(cfg) == session_io(exports["dynamic"])
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_GPU)]
    meta = json.loads(cfg.parameters["fastinst_rt"].string_value)
    assert meta["outputs"] == "e2e" and meta["format"] == "fastinst-rt"


def test_onnx_static_batch_repository_cannot_batch(exports, tmp_path: Path) -> None:
    cfg = parse(write_model_repository(exports["static"], tmp_path / "repo", kind="cpu"))
    assert (cfg.name, cfg.max_batch_size) == ("raw-b1", 0)
    assert config_io(cfg) == session_io(exports["static"])  # full dims, batch 1 included
    assert not cfg.HasField("dynamic_batching")
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_export_triton_command_writes_the_instance_kind_asked(exports, tmp_path: Path, capsys) -> None:
    repo, kinds = tmp_path / "repo", model_config_pb2.ModelInstanceGroup
    base = ["export-triton", str(exports["dynamic"]), "--repo", str(repo)]
    assert main([*base, "--name", "on-cpu", "--kind", "cpu", "--instances", "3"]) == 0
    assert main([*base, "--name", "default"]) == 0
    assert main([*base, "--name", "on-gpu", "--kind", "gpu"]) == 0
    groups = {n: [(g.count, g.kind) for g in parse(repo / n / "config.pbtxt").instance_group] for n in sorted(
        p.name for p in repo.iterdir())}  # fmt: skip
    assert groups == {
        "default": [(1, kinds.KIND_GPU)],
        "on-cpu": [(3, kinds.KIND_CPU)],
        "on-gpu": [(1, kinds.KIND_GPU)],
    }
    capsys.readouterr()
    engine = _plan(exports["dynamic"], tmp_path, "10.4.0", dynamic_batch=True, max_batch=2)
    assert main(["export-triton", str(engine), "--repo", str(tmp_path / "plans"), "--kind", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "GPUs only" in err[0] and not (tmp_path / "plans").exists()
    assert main([*base, "--kind", "tpu"]) == 2 and "invalid choice: 'tpu'" in capsys.readouterr().err


def _plan(onnx_path: Path, tmp_path: Path, tensorrt: str, dynamic_batch: bool, max_batch: int) -> Path:
    """A placeholder engine with the sidecar ``fastinst-rt build`` writes for ``onnx_path`` (meta = its metadata)."""
    import onnx

    meta = {p.key: json.loads(p.value) for p in onnx.load(str(onnx_path)).metadata_props}
    engine = tmp_path / f"model-trt{tensorrt}.engine"
    engine.write_bytes(b"placeholder: TensorRT plans cannot be built without a GPU")
    profile = {"images": [[1, 3, 64, 64], [1, 3, 320, 448], [max_batch, 3, 448, 448]], "sizes": [[1, 2]] * 3}
    sidecar = {"format": ENGINE_FORMAT, "meta": meta, "tensorrt": tensorrt, "gpu": "NVIDIA T4",
               "compute_capability": "7.5", "precision": "fp16", "profile": profile, "max_batch": max_batch,
               "dynamic_batch": dynamic_batch, "onnx": onnx_path.name}  # fmt: skip
    sidecar_path(engine).write_text(json.dumps(sidecar))
    return engine


@pytest.mark.parametrize("tensorrt,int_type", [("10.4.0", "int64"), ("8.6.1", "int32")])
def test_plan_repository_matches_the_graph_it_was_built_from(exports, tmp_path: Path, tensorrt, int_type) -> None:
    engine = _plan(exports["dynamic"], tmp_path, tensorrt, dynamic_batch=True, max_batch=4)
    config = write_model_repository(engine, tmp_path / "repo", name="plan", max_batch=16)
    assert (config.parent / "1" / "model.plan").read_bytes() == engine.read_bytes()
    cfg = parse(config)
    assert (cfg.platform, cfg.max_batch_size) == ("tensorrt_plan", 4)  # capped by the engine's profile
    expected = session_io(exports["dynamic"])
    if int_type == "int32":  # TensorRT 8.x casts int64 tensors to int32
        expected = {k: ("int32" if t == "int64" else t, d) for k, (t, d) in expected.items()}
    assert config_io(cfg) == expected
    with pytest.raises(ValueError, match="GPUs only"):
        write_model_repository(engine, tmp_path / "repo2", kind="cpu")


def test_fixed_batch_plan_and_bad_arguments(exports, tmp_path: Path) -> None:
    engine = _plan(exports["dynamic"], tmp_path, "10.4.0", dynamic_batch=False, max_batch=2)
    cfg = parse(write_model_repository(engine, tmp_path / "repo"))
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims)[:2] == [2, 3]
    with pytest.raises(ValueError, match="max_batch"):
        write_model_repository(exports["dynamic"], tmp_path / "r", max_batch=0)
    with pytest.raises(FileNotFoundError):
        write_model_repository(tmp_path / "missing.onnx", tmp_path / "r")
    assert main(["export-triton", str(tmp_path / "missing.onnx"), "--repo", str(tmp_path / "r")]) == 2


class _OrtTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The KServe-v2 gRPC calls TritonBackend makes, answered from a model repository with ONNX Runtime."""

    def __init__(self, repo: Path) -> None:
        import onnxruntime as ort

        self.models = {}
        for config in repo.glob("*/config.pbtxt"):
            session = ort.InferenceSession(str(config.parent / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
            self.models[config.parent.name] = (parse(config), session)
        self.requests: list = []

    def ModelConfig(self, request, context):  # noqa: N802 - the gRPC method name
        return service_pb2.ModelConfigResponse(config=self.models[request.name][0])

    def ModelInfer(self, request, context):  # noqa: N802
        self.requests.append(request)
        cfg, session = self.models[request.model_name]
        feeds = {
            t.name: np.frombuffer(raw, _WIRE_NP[t.datatype]).reshape(list(t.shape))
            for t, raw in zip(request.inputs, request.raw_input_contents)
        }
        names = [o.name for o in request.outputs] or [o.name for o in cfg.output]
        response = service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id)
        for name, value in zip(names, session.run(names, feeds)):
            wire = {np.dtype(v): k for k, v in _WIRE_NP.items()}[value.dtype]
            response.outputs.add(name=name, datatype=wire, shape=list(value.shape))
            response.raw_output_contents.append(np.ascontiguousarray(value).tobytes())
        return response


def test_triton_backend_encoding_round_trip(exports, tmp_path: Path, photo: np.ndarray, photo_wide) -> None:
    write_model_repository(exports["dynamic"], tmp_path / "repo", name="fastinst", max_batch=2)
    servicer = _OrtTriton(tmp_path / "repo")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        backend = TritonBackend(f"127.0.0.1:{port}", "fastinst")
        assert backend.info.max_batch == 2 and not backend.info.fixed_batch
        assert backend.info.class_names == Segmenter(exports["dynamic"]).class_names
        remote = Segmenter(backend, conf=0.0).predict_batch([photo, photo_wide, photo], color="rgb")
        local = Segmenter(exports["dynamic"], conf=0.0).predict_batch([photo, photo_wide, photo], color="rgb")
    finally:
        server.stop(None)
    # Three images at max_batch_size 2: two requests, shapes and Triton types as the config declares.
    assert [list(r.inputs[0].shape)[0] for r in servicer.requests] == [2, 1]
    assert [(t.name, t.datatype) for t in servicer.requests[0].inputs] == [("images", "UINT8"), ("sizes", "INT64")]
    for a, b in zip(remote, local):
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
        assert (a.masks == b.masks).all() and len(a) > 0


def test_config_without_metadata_is_refused(exports, tmp_path: Path) -> None:
    config = write_model_repository(exports["static"], tmp_path / "repo", name="bare")
    config.write_text("\n".join(line for line in config.read_text().splitlines() if "fastinst_rt" not in line))
    servicer = _OrtTriton(tmp_path / "repo")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with pytest.raises(ValueError, match="export-triton"):
            TritonBackend(f"127.0.0.1:{port}", "bare")
    finally:
        server.stop(None)
