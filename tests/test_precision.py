"""Reduced precision: the instance gate of FP16/INT8 exports, the graphs it refuses, INT8 Q/DQ graphs (TensorRT's
rules, ONNX Runtime, metadata) and the INT8 accuracy of the bundled model. Real exports, real photos, real
ONNX Runtime sessions."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from fastinst_rt import Segmenter
from fastinst_rt.cli import main
from fastinst_rt.export import deploy, export_onnx
from fastinst_rt.export.checks import Agreement, check_graph, compare_instances, judge_agreement
from fastinst_rt.export.quantize import calibration_images, check_int8

from .conftest import make_model

R50 = "fastinst-test-r50-d2"


def _pairs(n: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """One image of ``n`` pairs with distinct random masks and descending scores."""
    rng = np.random.default_rng(seed)
    masks = rng.normal(size=(1, n, 24, 24)).astype(np.float32)
    return {"scores": np.linspace(0.9, 0.1, n, dtype=np.float32)[None], "labels": rng.integers(0, 3, (1, n)),
            "masks": masks}  # fmt: skip


def _perturb(pairs: dict[str, np.ndarray], **changes) -> dict[str, np.ndarray]:
    out = {k: v.copy() for k, v in pairs.items()}
    out.update(changes)
    return out


def test_agreement_of_identical_and_tie_swapped_instances() -> None:
    ref = _pairs()
    same = compare_instances(ref, ref)
    assert same == Agreement(10, 1.0, 1.0, 0.0, 0.0, 0, 0, 15) and judge_agreement(same, "fp16") == []
    # Two near-tied pairs swap ranks (a float16 effect): no rank miss, scores within the tie.
    swapped = _perturb(ref)
    order = np.arange(20)
    order[[9, 10]] = [10, 9]
    swapped = {k: v[:, order] for k, v in swapped.items()}
    swapped["scores"] = ref["scores"].copy()  # still descending; pair 9 now holds 10's score and vice versa
    a = compare_instances(ref, swapped)
    assert a.matched == 1.0 and a.rank_misses <= 1 and a.score_diff <= 0.05, a
    assert judge_agreement(a, "fp16") == []


def test_agreement_refuses_lost_moved_and_rescored_instances() -> None:
    ref = _pairs()
    lost = _perturb(ref, labels=(ref["labels"] + 1) % 3)  # every label wrong: nothing matches
    assert compare_instances(ref, lost).matched == 0.0
    assert any("instances are found" in p for p in judge_agreement(compare_instances(ref, lost), "fp16"))
    moved = _perturb(ref, masks=-ref["masks"])  # complementary masks: IoU ~ 1/3 < 0.5
    assert compare_instances(ref, moved).matched == 0.0
    rescored = _perturb(ref, scores=ref["scores"] - 0.08)  # every score 0.08 lower: 2 of 15 fall under conf 0.3
    a = compare_instances(ref, rescored)
    assert a.matched == 1.0 and a.score_diff == pytest.approx(0.08, abs=1e-6) and (a.count, a.count_diff) == (15, 2)
    problems = judge_agreement(a, "fp16")
    assert any("scores differ" in p for p in problems) and any("more or fewer" in p for p in problems)
    assert judge_agreement(a, "int8") == []  # INT8 allows a mean score difference up to 0.1 and 30% of the count


class _HalfNorm(torch.nn.Module):
    """A LayerNorm/GroupNorm module run in float16, what ``deploy._Float32`` prevents (the graph lint sees it)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.half())


class _HalfStatsNorm(torch.nn.Module):
    """A LayerNorm/GroupNorm computed in float16, what ``deploy._Float32`` prevents: the one-pass statistics
    E[x^2] - E[x]^2 of a naive float16 kernel, every intermediate rounded to float16. Written out because PyTorch's
    own float16 norms on some CPUs (AVX-512 FP16) keep float32 statistics and lose nothing."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, h = self.module, x.half()
        if isinstance(m, torch.nn.GroupNorm):
            g = h.reshape(h.shape[0], m.num_groups, -1)
            normed = _half_standardize(g, -1, m.eps).reshape(h.shape)
            shape = (1, -1) + (1,) * (h.dim() - 2)
            return normed * m.weight.half().reshape(shape) + m.bias.half().reshape(shape)
        return _half_standardize(h, -1, m.eps) * m.weight.half() + m.bias.half()


def _half_standardize(x: torch.Tensor, dim: int, eps: float) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) along ``dim``, with the mean, the mean square and the variance each rounded
    to float16 (the mean square of float16 squares)."""
    mean = x.float().mean(dim, keepdim=True).half()
    mean_square = (x * x).float().mean(dim, keepdim=True).half()
    var = (mean_square - mean * mean).clamp_min(0)
    return (x - mean) / (var + eps).sqrt()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[torch.nn.Module, object]:
    return make_model(R50, class_scale=8.0)


def test_fp16_export_with_norms_in_float16_is_refused(tiny, tmp_path: Path, monkeypatch) -> None:
    """An FP16 export with its normalizations forced to float16 is refused before anything is written: the lint on
    its own (the numerical gate, which runs first, is bypassed here and tested next) sees float16 norms."""
    from fastinst_rt.export import onnx_export

    model, info = tiny
    monkeypatch.setattr(onnx_export, "_fp16_float32_regions", lambda *args: ())
    monkeypatch.setattr(deploy, "_Float32", _HalfNorm)
    out = tmp_path / "broken.onnx"
    with pytest.raises(RuntimeError, match="runs in float16"):
        export_onnx(model, out, fp16=True, imgsz=(256, 320), progress=False, simplify=False)
    assert not out.exists()


@pytest.fixture(scope="module")
def demo_fp16(tmp_path_factory) -> dict:
    """The bundled model exported as FP16 through the gate, with the regions its weights need in float32."""
    from fastinst_rt.jobs.demo import DEMO_MODEL

    path = export_onnx(DEMO_MODEL, tmp_path_factory.mktemp("fp16") / "demo-fp16.onnx", imgsz=(256, 320), fp16=True,
                       progress=False)  # fmt: skip
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    return {"path": path, "regions": tuple(meta["fp16"]["float32_regions"]), "model": DEMO_MODEL}


def _photo_batch(size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The shipped photo as the FP16 gate sees it: pre-processed at the bundled test size into ``size``."""
    import fastinst_rt
    from fastinst_rt.runtime.preprocess import load_image, prepare

    photo = load_image(Path(fastinst_rt.__file__).parent / "assets" / "astronaut.jpg", "rgb")
    return tuple(torch.from_numpy(a) for a in prepare([photo], 256, 341, 32, size)[:2])  # type: ignore[return-value]


def test_the_bundled_model_exports_fp16_with_no_more_float32_than_its_weights_need(demo_fp16: dict) -> None:
    """The bundled model's FP16 graph is lint-clean, runs, and keeps at most two regions in float32; its float16
    network passes the gate with them, and breaks it with the last one taken away (the fallback adds a region only
    when the gate needs it)."""
    from fastinst_rt import load_model
    from fastinst_rt.export.verify import judge_half

    regions = demo_fp16["regions"]
    assert check_graph(onnx.load(str(demo_fp16["path"]))) == [] and len(regions) <= 2
    model = load_model(demo_fp16["model"])
    images, sizes = _photo_batch((256, 320))
    reference = deploy.DeployModel(model).eval()

    def broken(kept: tuple[str, ...]) -> list[str]:
        half = deploy.DeployModel(model, fp16=True, float32_regions=kept).eval()
        return judge_half(reference, half, images, sizes, progress=False)[1]

    assert broken(regions) == []
    if regions:
        assert broken(regions[:-1]), f"{regions[-1]} was kept in float32 without need"
    result = Segmenter(str(demo_fp16["path"])).predict(images[0].permute(1, 2, 0).numpy())
    assert len(result) > 0 and np.isfinite(result.scores).all()


def test_fp16_norms_in_float16_lose_accuracy_and_the_gate_sees_it(demo_fp16: dict, tmp_path: Path, monkeypatch) -> None:
    """The numerical gate on its own (the lint bypassed), on held-out images rather than the gate's photo: the
    bundled model's FP16-mixed network as exported (with its float32 regions) passes, the same network with its norms
    forced to float16 is refused (as exported, score differences up to 0.023 against FP32, 0.009 on average;
    tolerances 0.05 and 0.01: benchmarks/fp16_islands.py)."""
    from fastinst_rt import load_model
    from fastinst_rt.export.verify import verify_half
    from fastinst_rt.runtime.preprocess import load_image, prepare
    from fastinst_rt.training.synth import make_synthetic_dataset

    model = load_model(demo_fp16["model"])
    ann = make_synthetic_dataset(tmp_path / "held-out", 16, seed=7)
    rgb = [load_image(p, "rgb") for p in sorted((ann.parent / "images").iterdir())]
    images, sizes = (torch.from_numpy(a) for a in prepare(rgb, 256, 341)[:2])
    reference = deploy.DeployModel(model).eval()
    exported = deploy.DeployModel(model, fp16=True, float32_regions=demo_fp16["regions"]).eval()
    shipped = verify_half(reference, exported, images, sizes, progress=False)
    assert shipped.matched == 1.0 and shipped.score_diff < 0.03, shipped
    monkeypatch.setattr(deploy, "_Float32", _HalfStatsNorm)
    broken = deploy.DeployModel(model, fp16=True, float32_regions=demo_fp16["regions"]).eval()
    with pytest.raises(RuntimeError, match="PyTorch float16: scores differ"):
        verify_half(reference, broken, images, sizes, progress=False)


@pytest.fixture(scope="module")
def demo_int8(tmp_path_factory) -> dict:
    """The bundled model exported as INT8: 32 calibration images of another seed than the held-out set (as in
    benchmarks/README.md result 7), 4 more that the export's gate judges it on."""
    from fastinst_rt.jobs.demo import DEMO_MODEL
    from fastinst_rt.training.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("int8")
    calib = make_synthetic_dataset(root / "calib", 36, seed=3).parent / "images"  # 32 calibrate, 4 judge
    held_out = make_synthetic_dataset(root / "held-out", 60, seed=7)
    path = export_onnx(DEMO_MODEL, root / "demo-int8.onnx", imgsz=(256, 320), int8=True, calib=calib,
                       calib_images=32, progress=False)  # fmt: skip
    return {"path": path, "held_out": held_out, "model": DEMO_MODEL}


def test_int8_graph_follows_tensorrt_rules_and_says_int8(demo_int8: dict, capsys) -> None:
    proto = onnx.load(str(demo_int8["path"]))
    assert check_graph(proto) == [] and check_int8(proto) == []
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["precision"] == "int8" and meta["quantization"]["method"] == "percentile"
    assert meta["quantization"]["calibration_images"] == 32
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") > 20 and ops.count("DequantizeLinear") >= ops.count("QuantizeLinear")
    # Kept in float32 as measured: the query selection and the decoder (no Q/DQ on their weights or inputs).
    weights = {i.name for i in proto.graph.initializer}
    quantized = {n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights}
    assert quantized and not any(".decoder." in w for w in quantized)
    # Regions the gate needed in float32 for these weights (result 11) carry no Q/DQ either, and every float
    # convolution reads a float tensor (export/quantize.py: float_convs_read_float).
    float_regions = meta["quantization"]["float32_regions"]
    assert len(float_regions) <= 2 and not any(w.startswith(f"model.{r}.") for r in float_regions for w in quantized)
    producer = {o: n.op_type for n in proto.graph.node for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    float_convs = [n for n in convs if producer.get(n.input[1]) != "DequantizeLinear"]
    assert float_convs and not any(producer.get(n.input[0]) == "DequantizeLinear" for n in float_convs)
    assert Segmenter(str(demo_int8["path"])).backend.describe()["precision"] == "int8"
    assert main(["info", str(demo_int8["path"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "int8"


def test_a_region_left_in_float32_keeps_no_qdq_and_the_rest_stays_quantized(tiny, tmp_path: Path) -> None:
    """What the gate's fallback writes when a region passes, whatever weights are bundled (of result 11's models only
    hr needs the fallback): that region's convolutions read float tensors and float weights, every other quantizable
    convolution is quantized, and the metadata names the region."""
    from fastinst_rt.export.quantize import conv_regions, quantizable_convs, quantizable_nodes, quantize_onnx
    from fastinst_rt.training.synth import make_synthetic_dataset

    model, _ = tiny
    proto = onnx.load(str(export_onnx(model, tmp_path / "m.onnx", imgsz=(256, 320), progress=False)))
    files = calibration_images(make_synthetic_dataset(tmp_path / "calib", 3, seed=3).parent / "images", 3)
    region = "backbone.res4"
    kept = conv_regions(proto)[region]
    graph = quantize_onnx(proto, files, nodes=quantizable_nodes(proto, keep_float=kept), float_regions=(region,),
                          progress=False)  # fmt: skip
    assert check_graph(graph) == [] and check_int8(graph) == []
    meta = {p.key: json.loads(p.value) for p in graph.metadata_props}
    assert meta["precision"] == "int8" and meta["quantization"]["float32_regions"] == [region]
    producer = {o: n.op_type for n in graph.graph.node for o in n.output}
    convs = {n.name: n for n in graph.graph.node if n.op_type == "Conv"}
    assert kept and all(producer.get(convs[c].input[i]) != "DequantizeLinear" for c in kept for i in (0, 1))
    others = set(quantizable_convs(proto)) - set(kept)
    assert others and all(producer.get(convs[c].input[1]) == "DequantizeLinear" for c in others)


def test_int8_export_leaves_regions_in_float32_then_refuses(tiny, tmp_path: Path, monkeypatch, caplog) -> None:
    """An INT8 graph past its tolerances is made again with one region, then two, left in float32, and refused
    with what was tried and what to change when that does not help either; nothing is written. onnxruntime's
    warnings, repeated by each of the ten tries, are shown once."""
    from fastinst_rt.export import checks
    from fastinst_rt.training.synth import make_synthetic_dataset

    model, _ = tiny
    calib = make_synthetic_dataset(tmp_path / "calib", 6, seed=3).parent / "images"
    impossible = dataclasses.replace(checks.TOLERANCES["int8"], mean_score_diff=-1.0)
    monkeypatch.setitem(checks.TOLERANCES, "int8", impossible)
    out = tmp_path / "refused.onnx"
    with pytest.raises(RuntimeError, match=r"on average .*; also with [\w.]+, [\w.]+ left in float32\. What to change: "
                       r"calibrate on more images .*\(2 used: .*--fp16$"):  # fmt: skip
        export_onnx(model, out, imgsz=(256, 320), int8=True, calib=calib, calib_images=2, progress=False)
    assert not out.exists()
    warnings = [r.getMessage() for r in caplog.records if r.name == "root" and r.levelno >= logging.WARNING]
    assert warnings and len(warnings) == len(set(warnings)), warnings


def _conv_weight_dtypes(proto: onnx.ModelProto) -> dict[str, int]:
    """{weight initializer name: ONNX element type} of every Conv whose weight is an initializer."""
    inits = {i.name: i.data_type for i in proto.graph.initializer}
    return {n.input[1]: inits[n.input[1]] for n in proto.graph.node if n.op_type == "Conv" and n.input[1] in inits}


def test_an_fp16_region_left_in_float32_holds_float32_weights_and_the_rest_stays_float16(
    tiny, tmp_path: Path, monkeypatch
) -> None:
    """What the FP16 fallback writes when it keeps a region, whatever weights are bundled: that region's
    convolutions hold float32 weights, every other backbone convolution float16, the graph passes the TensorRT lint
    and ONNX Runtime's gate, and the metadata (and ``info``) name the region. The region is given here; which region
    the gate picks is the next tests' subject."""
    from fastinst_rt.export import onnx_export

    model, _ = tiny
    assert deploy.fp16_regions(model) == (*(f"backbone.{s}" for s in ("stem", "res2", "res3", "res4", "res5")),
                                          "pixel_decoder")  # fmt: skip
    with pytest.raises(ValueError, match="float32 regions"):
        deploy.DeployModel(model, fp16=True, float32_regions=("decoder",))
    monkeypatch.setattr(onnx_export, "_fp16_float32_regions", lambda *args: ("backbone.res3",))
    path = export_onnx(model, tmp_path / "m.onnx", fp16=True, imgsz=(256, 320), progress=False)
    proto = onnx.load(str(path))
    assert check_graph(proto) == []
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["precision"] == "fp16" and meta["fp16"]["float32_regions"] == ["backbone.res3"]
    weights = _conv_weight_dtypes(proto)
    res3 = {w: t for w, t in weights.items() if w.startswith("model.backbone.res3.")}
    rest = {w: t for w, t in weights.items() if w.startswith("model.backbone.") and w not in res3}
    assert res3 and set(res3.values()) == {onnx.TensorProto.FLOAT}
    assert rest and set(rest.values()) == {onnx.TensorProto.FLOAT16}
    assert Segmenter(str(path)).backend.describe()["float32_regions"] == ["backbone.res3"]


def test_fp16_export_leaves_regions_in_float32_then_refuses(tiny, tmp_path: Path, monkeypatch) -> None:
    """An FP16 network past its tolerances is judged again with one region, then two, left in float32 (before the
    trace), and refused with what was tried when that does not help either; nothing is written."""
    from fastinst_rt.export import checks

    model, _ = tiny
    impossible = dataclasses.replace(checks.TOLERANCES["fp16"], mean_score_diff=-1.0)
    monkeypatch.setitem(checks.TOLERANCES, "fp16", impossible)
    out = tmp_path / "refused.onnx"
    with pytest.raises(RuntimeError, match=r"^the fp16 graph loses accuracy.*PyTorch float16: .*; also with "
                                           r"[\w.]+, [\w.]+ left in float32$"):  # fmt: skip
        export_onnx(model, out, fp16=True, imgsz=(256, 320), progress=False)
    assert not out.exists()


def test_entropy_calibration_searches_a_threshold_where_min_max_keeps_the_range(tiny, tmp_path: Path) -> None:
    """``entropy`` is TensorRT's KL search (2048 bins into 128): it clips ranges that min-max keeps whole, and never
    widens one. (quantize_static's own entropy setup gives the min-max ranges: export/quantize.py.)"""
    from onnxruntime.quantization.calibrate import load_tensors_data

    from fastinst_rt.export.quantize import calibrate
    from fastinst_rt.training.synth import make_synthetic_dataset

    model, _ = tiny
    proto = onnx.load(str(export_onnx(model, tmp_path / "m.onnx", imgsz=(256, 320), progress=False)))
    files = calibration_images(make_synthetic_dataset(tmp_path / "calib", 3, seed=3).parent / "images", 3)
    bound = {}
    for method in ("entropy", "minmax"):
        ranges = load_tensors_data(calibrate(proto, files, tmp_path / f"{method}.json", method, progress=False))
        bound[method] = {
            k: float(np.abs(np.asarray(v.range_value, dtype=np.float64)).max()) for k, v in ranges.data.items()
        }
    entropy, minmax = bound["entropy"], bound["minmax"]
    assert entropy.keys() == minmax.keys() and len(entropy) > 20
    assert all(entropy[k] <= minmax[k] * (1 + 1e-6) for k in entropy)
    assert sum(entropy[k] < 0.9 * minmax[k] for k in entropy) > len(entropy) // 4


def test_float_convolutions_read_the_float_tensor_and_unread_qdq_goes() -> None:
    """A Q/DQ pair that feeds a quantized and a float convolution keeps only the quantized reader; a pair that fed
    only float convolutions is removed."""
    from onnx import TensorProto, helper, numpy_helper

    from fastinst_rt.export.quantize import float_convs_read_float

    w = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    wq = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.int8), "wq")
    scale, zero = numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(0), "z")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
        helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"], name="wdq"),
        helper.make_node("Conv", ["xd", "wd"], ["a"], name="quantized"),
        helper.make_node("Conv", ["xd", "w"], ["b"], name="float"),
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["yq"], name="q_only_float"),
        helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["yd"], name="dq_only_float"),
        helper.make_node("Conv", ["yd", "w"], ["c"], name="float2"),
    ]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, 2, 2]) for n in ("x", "a", "b", "c")]
    model = helper.make_model(helper.make_graph(nodes, "g", io[:1], io[1:], [w, wq, scale, zero]))
    assert float_convs_read_float(model) == 2
    by_name = {n.name: n for n in model.graph.node}
    assert (
        by_name["quantized"].input[0] == "xd" and by_name["float"].input[0] == "x" and by_name["float2"].input[0] == "x"
    )
    assert "q" in by_name and "dq" in by_name and not {"q_only_float", "dq_only_float"} & by_name.keys()
    onnx.checker.check_model(model)


def _optimized_ops(path: Path, optimized: Path, disabled_optimizers: list[str]) -> list[str]:
    """Node types, in order, of ONNX Runtime's CPU-optimized form of ``path``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath, opts.log_severity_level = str(optimized), 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"], disabled_optimizers=disabled_optimizers)
    return [n.op_type for n in onnx.load(str(optimized)).graph.node]


def _integer_convolutions(path: Path, optimized: Path, disabled_optimizers: list[str]) -> int:
    """QLinearConv nodes in ONNX Runtime's CPU-optimized form of ``path``."""
    return _optimized_ops(path, optimized, disabled_optimizers).count("QLinearConv")


def test_every_quantized_convolution_runs_as_an_integer_kernel(demo_int8: dict, tmp_path: Path) -> None:
    """With the backend's session settings ONNX Runtime fuses each DQ -> Conv -> Q of the graph into an integer
    convolution; with its defaults, a third stay float convolutions between Q/DQ (why: backends/ort.py)."""
    from fastinst_rt.runtime.backends.ort import DISABLED_OPTIMIZERS

    proto = onnx.load(str(demo_int8["path"]))
    producer = {o: n.op_type for n in proto.graph.node for o in n.output}
    quantized = sum(n.op_type == "Conv" and producer.get(n.input[1]) == "DequantizeLinear" for n in proto.graph.node)
    assert quantized >= 30
    assert _integer_convolutions(demo_int8["path"], tmp_path / "a.onnx", DISABLED_OPTIMIZERS) == quantized
    # If ONNX Runtime's defaults ever fuse them all, the setting in backends/ort.py can go.
    assert _integer_convolutions(demo_int8["path"], tmp_path / "b.onnx", []) < quantized


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_float_graphs_lose_nothing_to_the_int8_session_setting(tiny, fp16: bool, tmp_path: Path) -> None:
    """The backend opens every file with the pass off that INT8 graphs need off (backends/ort.py): on FP32 and
    FP16 exports, dynamic ones with their shape arithmetic included, ONNX Runtime optimizes to the same graph."""
    from fastinst_rt.runtime.backends.ort import DISABLED_OPTIMIZERS

    model, _ = tiny
    path = export_onnx(model, tmp_path / "m.onnx", fp16=fp16, dynamic=True, progress=False)
    ops = _optimized_ops(path, tmp_path / "a.onnx", DISABLED_OPTIMIZERS)
    assert len(ops) > 100 and ops == _optimized_ops(path, tmp_path / "b.onnx", [])


def test_bundled_model_int8_keeps_its_mask_ap(demo_int8: dict) -> None:
    """INT8 within 1.0 mask AP of FP32 on held-out images (benchmarks/README.md result 5 measured +0.3 on 60)."""
    from fastinst_rt.jobs.evaluate import evaluate_coco

    ann = demo_int8["held_out"]
    ap = {}
    for name, model in (("fp32", demo_int8["model"]), ("int8", str(demo_int8["path"]))):
        r = evaluate_coco(Segmenter(model, conf=0.0), ann, ann.parent / "images", progress=False)
        ap[name] = r["segm"]["AP"]
    assert ap["fp32"] > 55.0 and ap["int8"] >= ap["fp32"] - 1.0, ap


def test_int8_cli_mistakes_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["export", "fastinst-demo", "-o", str(tmp_path / "x.onnx"), "--int8"]) == 2
    assert "--calib" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    args = ["export", "fastinst-demo", "-o", str(tmp_path / "x.onnx"), "--int8", "--calib", str(tmp_path / "empty")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "no images" in err and len(err.splitlines()) == 1 and not (tmp_path / "x.onnx").exists()
    with pytest.raises(ValueError, match="positive"):
        calibration_images(tmp_path, 0)


def test_a_calibration_cache_rebuilds_the_identical_int8_graph_without_images(tmp_path: Path, capsys) -> None:
    """``export --int8 --calib DIR --calib-cache F`` writes the ranges; ``--calib-cache F`` alone (no images, the
    folder deleted) rebuilds the same graph byte for byte; a cache of another graph is refused."""
    from fastinst_rt.training.synth import make_synthetic_dataset

    calib = make_synthetic_dataset(tmp_path / "calib", 12, seed=3).parent / "images"
    cache, first, second = tmp_path / "demo.calib.json", tmp_path / "a.onnx", tmp_path / "b.onnx"
    common = ["export", "fastinst-demo", "--imgsz", "256x320", "--int8", "--calib-cache", str(cache)]
    assert main([*common, "-o", str(first), "--calib", str(calib), "--calib-images", "8"]) == 0
    data = json.loads(cache.read_text())
    assert data["format"] == "fastinst-rt calibration" and data["version"] == 1 and data["images"] == 8
    shutil.rmtree(calib.parent)
    assert main([*common, "-o", str(second)]) == 0
    assert second.read_bytes() == first.read_bytes()
    capsys.readouterr()
    assert main(["export", "fastinst-demo", "--imgsz", "256x352", "--int8", "--calib-cache", str(cache), "-o",
                 str(tmp_path / "c.onnx")]) == 2  # fmt: skip
    assert "calibrated on another graph" in capsys.readouterr().err and not (tmp_path / "c.onnx").exists()
