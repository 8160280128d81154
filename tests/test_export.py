"""ONNX export: the deploy wrapper's pieces against torch, exported graphs against torch on ONNX Runtime, graph lint,
the DCN plugin graph, FP16 agreement, and the CLI. Tiny test variants with seeded random weights, real photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from fastinst_rt import Segmenter
from fastinst_rt.checkpoint import load_checkpoint
from fastinst_rt.cli import main
from fastinst_rt.export import DeployModel, check_graph, export_onnx
from fastinst_rt.export.deploy import ExactAdaptiveAvgPool2d, select_pairs
from fastinst_rt.export.onnx_export import default_imgsz, parse_imgsz
from fastinst_rt.runtime.postprocess import select_pairs as select_pairs_np
from fastinst_rt.runtime.preprocess import pad_batch, prepare, resize_image

from .compare import match_instances, matched_errors
from .conftest import TEST_VARIANTS

R50, DCN = "fastinst-test-r50-d2", "fastinst-test-r50vd-dcn-d1"
assert set(TEST_VARIANTS) == {R50, DCN}


def _photos() -> list[np.ndarray]:
    from skimage import data

    return [data.astronaut(), data.coffee(), data.chelsea()]


@pytest.fixture(scope="module")
def exported(tiny_checkpoints: dict[str, Path], tmp_path_factory):
    """export(variant, **kwargs) -> path, each distinct export made once per module."""
    root, cache = tmp_path_factory.mktemp("onnx"), {}

    def export(variant: str, **kwargs) -> Path:
        key = (variant, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = export_onnx(tiny_checkpoints[variant], root / f"m{len(cache)}.onnx", progress=False, **kwargs)
        return cache[key]

    return export


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _fixed_batch(images: list[np.ndarray], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize each photo to fit ``size`` (aspect kept) and pad all of them to exactly ``size``."""
    resized = []
    for im in images:
        s = min(size[0] / im.shape[0], size[1] / im.shape[1])
        resized.append(resize_image(im, (int(im.shape[0] * s), int(im.shape[1] * s))))
    batch, sizes = pad_batch(resized)
    full = np.zeros((len(images), 3, *size), np.uint8)
    full[:, :, : batch.shape[2], : batch.shape[3]] = batch
    return full, sizes


def _official_raw(run, batch: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``run(batch, sizes) -> (logits, masks)`` on each image padded only to /32, as the official model sees it (a
    static graph masks the rest): logits (B, Q, K+1), masks (B, Q, H/8, W/8) zero beyond each image's /32 region."""
    logits, masks = [], []
    for i, (h, w) in enumerate(sizes):
        hp, wp = -(-int(h) // 32) * 32, -(-int(w) // 32) * 32
        lg, mk = run(np.ascontiguousarray(batch[i : i + 1, :, :hp, :wp]), sizes[i : i + 1])
        full = np.zeros((*mk.shape[:2], batch.shape[2] // 8, batch.shape[3] // 8), np.float32)
        full[:, :, : hp // 8, : wp // 8] = mk
        logits.append(lg)
        masks.append(full)
    return np.concatenate(logits), np.concatenate(masks)


def _region_only(masks: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """A static graph's (B, Q, H/8, W/8) mask logits, zero beyond each image's /32 region (as ``_official_raw``)."""
    out = np.zeros_like(masks)
    for i, (h, w) in enumerate(sizes):
        hp, wp = -(-int(h) // 32) * 4, -(-int(w) // 32) * 4
        out[i, :, :hp, :wp] = masks[i, :, :hp, :wp]
    return out


def _torch_raw(ckpt: Path, batch: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    model, _ = load_checkpoint(ckpt)
    with torch.no_grad():
        out = model(model.normalize(torch.from_numpy(batch), torch.from_numpy(sizes)))
    return out["pred_logits"].numpy(), out["pred_masks"].numpy()


# ---------------------------------------------------------------- the wrapper's pieces (eager torch)


@pytest.mark.parametrize("hw", [(20, 27), (18, 24), (7, 5), (1, 1), (3, 40), (13, 6)])
def test_exact_adaptive_pool_matches_torch(hw: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    for bins in (1, 2, 3, 6):
        torch.testing.assert_close(ExactAdaptiveAvgPool2d(bins)(x), F.adaptive_avg_pool2d(x, bins), rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant", TEST_VARIANTS)
def test_deploy_wrapper_raw_equals_fastinst(variant: str, tiny_checkpoints: dict[str, Path]) -> None:
    model, _ = load_checkpoint(tiny_checkpoints[variant])
    batch, sizes = _fixed_batch(_photos()[:2], (320, 448))
    images, sizes_t = torch.from_numpy(batch), torch.from_numpy(sizes)
    with torch.no_grad():
        ref = model(model.normalize(images, sizes_t))
        logits, masks = DeployModel(model, raw=True)(images, sizes_t)
    # Relative L2 error, as the parity check measures it: the export-friendly DCN and pooling round differently,
    # which may flip a mask logit near 0 and so one query's attention; element-wise bounds would call that a bug.
    for ours, theirs in ((logits, ref["pred_logits"]), (masks, ref["pred_masks"])):
        assert float((ours - theirs).norm() / theirs.norm()) < 1e-4


def test_select_pairs_is_the_official_topk_and_matches_the_runtime_selection() -> None:
    g = torch.Generator().manual_seed(0)
    logits, masks = torch.randn(2, 10, 6, generator=g) * 3, torch.randn(2, 10, 12, 16, generator=g)
    scores, labels, query, picked = select_pairs(logits, masks, 25)
    probs = logits.softmax(-1)[:, :, :-1].flatten(1)
    ref_scores, ref_index = probs.topk(25, dim=1)
    torch.testing.assert_close(scores, ref_scores)
    assert torch.equal(labels, ref_index % 5) and torch.equal(query, ref_index // 5)
    for b in range(2):
        assert torch.equal(picked[b], masks[b, ref_index[b] // 5])
    # The runtime's numpy selection (torch backend, raw graphs) picks the same pairs (no ties in random logits).
    ours = select_pairs_np(logits.numpy(), masks.numpy(), 25)
    np.testing.assert_allclose(ours["scores"], scores.numpy(), rtol=1e-6)
    assert np.array_equal(ours["labels"], labels.numpy()) and np.array_equal(ours["query"], query.numpy())
    np.testing.assert_array_equal(ours["masks"], picked.numpy())


def test_imgsz_defaults_and_parsing() -> None:
    assert default_imgsz((576, 777)) == (576, 800) and default_imgsz((640, 853)) == (640, 864)
    assert (
        parse_imgsz("640x864") == (640, 864)
        and parse_imgsz(600) == (608, 608)
        and parse_imgsz((320, 447)) == (320, 448)
    )
    with pytest.raises(ValueError, match="imgsz"):
        parse_imgsz("big")


# ---------------------------------------------------------------- exported graphs on ONNX Runtime


@pytest.mark.slow
@pytest.mark.parametrize("variant", TEST_VARIANTS)
def test_static_raw_graph_matches_torch(variant: str, exported, tiny_checkpoints: dict[str, Path]) -> None:
    path = exported(variant, raw=True, batch=2)
    model = onnx.load(str(path))
    assert check_graph(model) == [] and model.opset_import[0].version == 19
    dims = [[d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in model.graph.input]
    assert dims == [[2, 3, 320, 448], [2, 2]]
    if variant == DCN:
        assert sum(n.op_type == "DeformConv" for n in model.graph.node) == 2  # res4 + res5, one block each
    batch, sizes = _fixed_batch(_photos()[:2], (320, 448))
    logits, masks = _session(path).run(None, {"images": batch, "sizes": sizes})
    # The astronaut (320x320 in 320x448) is padded further than the official input: the graph masks that padding.
    ref = _official_raw(lambda b, s: _torch_raw(tiny_checkpoints[variant], b, s), batch, sizes)
    e_l, e_m = matched_errors(logits, _region_only(masks, sizes), *ref)
    assert e_l <= 1e-4 and e_m <= 1e-4, (e_l, e_m)


@pytest.mark.slow
@pytest.mark.parametrize("variant", TEST_VARIANTS)
def test_dynamic_raw_graph_matches_torch_at_any_size_and_batch(
    variant: str, exported, tiny_checkpoints: dict[str, Path]
) -> None:
    path = exported(variant, raw=True, dynamic=True)
    assert check_graph(path) == []
    sess = _session(path)
    for photos, min_size, max_size in ((_photos()[:1], 288, 400), (_photos()[1:], 320, 480)):
        batch, sizes, _ = prepare(photos, min_size, max_size)
        logits, masks = sess.run(None, {"images": batch, "sizes": sizes})
        assert masks.shape == (len(photos), 100, batch.shape[2] // 8, batch.shape[3] // 8)
        e_l, e_m = matched_errors(logits, masks, *_torch_raw(tiny_checkpoints[variant], batch, sizes))
        assert e_l <= 1e-4 and e_m <= 1e-4, (batch.shape, e_l, e_m)


@pytest.mark.slow
@pytest.mark.parametrize("variant", TEST_VARIANTS)
def test_e2e_graph_with_runtime_equals_torch_segmenter(
    variant: str, exported, tiny_checkpoints: dict[str, Path]
) -> None:
    path = exported(variant)  # static, batch 1, 320x448 (the 320/427 test size rounded up)
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    assert meta["outputs"] == "e2e" and meta["fixed_size"] == [320, 448] and meta["max_det"] == 100
    onnx_seg = Segmenter(path, conf=0.0)  # metadata only: no size, class or backend argument
    torch_seg = Segmenter(tiny_checkpoints[variant], device="cpu", conf=0.0)
    # 384x512 (4:3) -> 320x427, padded to 320x448: the official input is exactly the fixed one.
    photo = np.ascontiguousarray(_photos()[0][:384])
    a, b = torch_seg.predict(photo, color="rgb"), onnx_seg.predict(photo, color="rgb")
    assert len(a) == len(b) == 100 and b.masks.shape == (100, 384, 512)
    dmax, iou, _, same = match_instances(a, b)
    assert dmax <= 1e-4 and iou >= 0.999 and same == 1.0, (dmax, iou, same)


@pytest.mark.slow
def test_fixed_size_graph_takes_other_aspect_ratios(exported, tiny_checkpoints: dict[str, Path]) -> None:
    """coffee (400x600 -> 320x480) and a portrait crop exceed 320x448: shrunk to fit, padded to 320x448 beyond the
    official padding to /32; the same instances as torch on the official input of that shrunk image."""
    from fastinst_rt.runtime.backends.pytorch import TorchBackend
    from fastinst_rt.runtime.postprocess import instances_from_outputs

    seg = Segmenter(exported(R50), conf=0.0)
    reference = TorchBackend(tiny_checkpoints[R50], device="cpu")
    for photo in (_photos()[1], np.ascontiguousarray(_photos()[2][:, :200])):
        batch, sizes, (meta,) = seg.prepare([photo])
        assert batch.shape[2:] == (320, 448) and meta.resized_size[0] <= 320 and meta.resized_size[1] <= 448
        res = seg.predict(photo, color="rgb")
        assert res.masks.shape[1:] == photo.shape[:2] and len(res) == 100
        hp, wp = -(-meta.resized_size[0] // 32) * 32, -(-meta.resized_size[1] // 32) * 32
        out = reference.forward(np.ascontiguousarray(batch[:, :, :hp, :wp]), sizes)
        scores, labels, _ = instances_from_outputs(
            out["pred_logits"][0], out["pred_masks"][0], meta.resized_size, (hp, wp), photo.shape[:2]
        )
        # The graph masks the padding beyond /32 with its own (float32-exact, differently ordered) arithmetic: a mask
        # logit near 0 may flip one pixel of a low-scoring mask, which moves its mask score by ~1e-5 (measured 1.3e-5).
        np.testing.assert_allclose(np.sort(res.scores), np.sort(scores), rtol=1e-4, atol=1e-4)
        assert sorted(res.labels.tolist()) == sorted(labels.tolist())


@pytest.mark.slow
def test_fp16_graph_runs_nan_free_and_agrees_with_fp32(exported, tiny_checkpoints: dict[str, Path]) -> None:
    """FP16-mixed graphs: raw outputs (R50, TorchScript opset 17) and end-to-end instances (DCN, dynamo, dynamic)
    against FP32 torch on real photos. Bounds are the measured agreement with ~2-5x margin."""
    raw16 = exported(R50, raw=True, fp16=True, opset=17)
    model = onnx.load(str(raw16))
    assert check_graph(model) == [] and any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer)
    batch, sizes = _fixed_batch(_photos()[:1], (320, 448))
    logits, masks = _session(raw16).run(None, {"images": batch, "sizes": sizes})
    assert logits.dtype == masks.dtype == np.float32 and np.isfinite(logits).all() and np.isfinite(masks).all()
    ref = _official_raw(lambda b, s: _torch_raw(tiny_checkpoints[R50], b, s), batch, sizes)
    e_l, e_m = matched_errors(logits, _region_only(masks, sizes), *ref)
    assert e_l <= 2e-2 and e_m <= 2e-2, (e_l, e_m)  # measured ~4e-3 / ~4e-3

    seg16 = Segmenter(exported(DCN, fp16=True, dynamic=True), conf=0.0)
    seg32 = Segmenter(tiny_checkpoints[DCN], device="cpu", conf=0.0)
    for photo in _photos():
        a, b = seg32.predict(photo, color="rgb"), seg16.predict(photo, color="rgb")
        assert np.isfinite(b.scores).all() and len(b) == 100
        top = a[a.scores >= a.scores[9]]  # the ten best instances must survive FP16
        dmax, iou, _, same = match_instances(top, b)
        assert dmax <= 1e-2 and iou >= 0.9 and same == 1.0, (dmax, iou, same)


@pytest.mark.slow
def test_fully_masked_attention_rows_stay_finite(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """Every query's first mask all negative -> every attention row fully blocked -> reset to all-open. FP16 and
    FP32 graphs (static, TorchScript opset 17) must stay NaN-free and agree with torch."""
    model, _ = load_checkpoint(tiny_checkpoints[R50])
    with torch.no_grad():  # head 0: mask logit = embed . features = constant -1 everywhere
        model.decoder.mask_features_layers[0].weight.zero_()
        model.decoder.mask_features_layers[0].bias.fill_(1.0)
        last = model.decoder.mask_embed_layers[0].layers[-1]
        last.weight.zero_()
        last.bias.fill_(-1.0 / last.bias.numel())
    batch, sizes = _fixed_batch(_photos()[:1], (320, 448))
    ref = _official_raw(lambda b, s: _torch_raw_model(model, b, s), batch, sizes)
    for fp16, tol in ((False, 1e-4), (True, 2e-2)):
        path = export_onnx(
            model, tmp_path / f"m{fp16}.onnx", raw=True, fp16=fp16, opset=17, imgsz=(320, 448), progress=False
        )
        logits, masks = _session(path).run(None, {"images": batch, "sizes": sizes})
        assert np.isfinite(logits).all() and np.isfinite(masks).all()
        assert max(matched_errors(logits, _region_only(masks, sizes), *ref)) <= tol


def _torch_raw_model(model, batch: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        out = model(model.normalize(torch.from_numpy(batch), torch.from_numpy(sizes)))
    return out["pred_logits"].numpy(), out["pred_masks"].numpy()


# ---------------------------------------------------------------- DCN plugin graph, lint, errors, CLI


def test_dcn_plugin_graph_has_trt_nodes_at_opset_17(exported) -> None:
    model = onnx.load(str(exported(DCN, dcn_plugin=True)))
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 17), ("trt", 1)}
    nodes = [n for n in model.graph.node if n.op_type == "ModulatedDeformConv2d"]
    assert len(nodes) == 2 and all(n.domain == "trt" for n in nodes)
    assert not any(n.op_type == "DeformConv" for n in model.graph.node)
    attrs = {a.name: helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs["stride"] == [2, 2] and attrs["padding"] == [1, 1] and attrs["dilation"] == [1, 1]
    assert attrs["group"] == 1 and attrs["deformable_group"] == 1 and attrs["plugin_version"] == b"1"
    assert len(nodes[0].input) == 4  # x, offset, mask (all ones), weight; no bias
    assert check_graph(model) == []
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert meta["dcn"] == "trt-plugin" and meta["opset"] == 17


def test_check_graph_flags_what_tensorrt_cannot_take() -> None:
    def graph(nodes, inputs, outputs, opset=17, inits=()):
        g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    n = helper.make_tensor_value_info("n", TensorProto.INT64, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    bad = graph(
        [helper.make_node("NonZero", ["x"], ["nz"]), helper.make_node("Range", ["z", "n", "one"], ["r"]),
         helper.make_node("TopK", ["x", "k"], ["y", "i"]), helper.make_node("Identity", ["n"], ["k"])],
        [x, n], [y], inits=[helper.make_tensor(v, TensorProto.INT64, [], [i]) for i, v in enumerate(("z", "one"))],
    )  # fmt: skip
    problems = " | ".join(check_graph(bad, opset=19))
    for needle in ("banned op NonZero", "Range on data", "computed k", "declares opset 17, expected 19"):
        assert needle in problems
    h = helper.make_tensor_value_info("h", TensorProto.FLOAT16, [4])
    half = graph([helper.make_node("Softmax", ["h"], ["s"]), helper.make_node("Cast", ["s"], ["y"], to=1)], [h], [y])
    problems = " | ".join(check_graph(half))
    assert "exposes a float16 h" in problems and "Softmax" in problems and "runs in float16" in problems
    assert check_graph(graph([helper.make_node("Relu", ["x"], ["y"])], [x], [y]), opset=17, fixed=True) == []


def test_export_refuses_what_it_cannot_write(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="DeformConv needs opset >= 19"):
        export_onnx(tiny_checkpoints[DCN], tmp_path / "a.onnx", opset=17, progress=False)
    with pytest.raises(ValueError, match="dynamic shapes need opset >= 18"):
        export_onnx(tiny_checkpoints[R50], tmp_path / "b.onnx", opset=17, dynamic=True, progress=False)
    with pytest.raises(ValueError, match="opset 16 is not supported"):
        export_onnx(tiny_checkpoints[R50], tmp_path / "c.onnx", opset=16, progress=False)
    with pytest.raises(ValueError, match="too small"):
        export_onnx(tiny_checkpoints[R50], tmp_path / "d.onnx", imgsz="64x64", opset=17, progress=False)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_simplification_keeps_outputs(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    kw = {"raw": True, "opset": 17, "progress": False}
    plain = export_onnx(tiny_checkpoints[R50], tmp_path / "plain.onnx", simplify=False, **kw)
    slim = export_onnx(tiny_checkpoints[R50], tmp_path / "slim.onnx", simplify=True, **kw)
    assert len(onnx.load(str(slim)).graph.node) < 0.5 * len(onnx.load(str(plain)).graph.node)
    batch, sizes = _fixed_batch(_photos()[1:2], (320, 448))
    for a, b in zip(
        _session(plain).run(None, {"images": batch, "sizes": sizes}),
        _session(slim).run(None, {"images": batch, "sizes": sizes}),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_cli_export_and_info(tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli.onnx"
    args = ["export", str(tiny_checkpoints[R50]), "--output", str(out), "--opset", "17", "--imgsz", "288x416"]
    assert main([*args, "--max-det", "50", "--batch", "2", "--min-size", "288", "--max-size", "400"]) == 0
    assert "wrote" in capsys.readouterr().err
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend"] == "onnxruntime" and info["outputs"] == "e2e" and info["max_det"] == 50
    assert info["fixed_size"] == [288, 416] and info["batch"] == 2 and info["test_size"] == [288, 400]
    assert main(["export", str(tiny_checkpoints[DCN]), "-o", str(tmp_path / "x.onnx"), "--opset", "17"]) == 2
    assert "--dcn-plugin" in capsys.readouterr().err
