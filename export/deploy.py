"""The deploy wrapper: FastInst re-expressed for ONNX export, with the input contract and outputs of an artifact.

``DeployModel`` takes what the runtime's pre-processing produces (a padded uint8 RGB batch and each image's valid
size), normalizes inside the graph, runs the network and returns either the raw head outputs or the official
top-``max_det`` query x class pairs. ``fastinst_rt.modeling`` stays free of export concerns: at construction the
wrapper deep-copies the model and swaps in export-friendly layers (the pattern of timm's exportable layers):

* the PPM's ``nn.AdaptiveAvgPool2d`` -> ``ExactAdaptiveAvgPool2d``, two averaging matrices built from the shape,
  exact for any input size (ONNX has no adaptive pooling; a fixed AvgPool kernel is exact for one size only);
* ``DeformConv`` -> ``ExportDeformConv``, which emits ONNX ``DeformConv`` (opset 19) or TensorRT's built-in
  ``ModulatedDeformConv2d`` plugin node, and runs the pure-torch implementation when not exporting;
* with ``fp16``: the network in float16 except where float32 was measured to matter (see ``make_exportable``),
  and optionally whole regions (``fp16_regions``) left in float32 for weights that float16 hurts there.

Masked attention needs no swap: the model already uses a finite additive bias and resets fully masked rows with
a logical and (``modeling.decoder.attention_bias``), so no NonZero/ScatterND reaches the graph. With ``padding``
(static exports), ``export.padding`` swaps in region-aware modules so that each image sees only its padding to /32.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastinst_rt.artifact import INPUT_NAMES, OUTPUT_NAMES
from fastinst_rt.modeling.fastinst import FastInst
from fastinst_rt.modeling.layers import Attention, DeformConv, deform_conv2d

from .padding import Region, apply_region_masks, replicate_edge

__all__ = [
    "DeployModel", "ExactAdaptiveAvgPool2d", "ExportDeformConv", "make_exportable", "fp16_regions", "select_pairs",
    "DCN_MODES",
]  # fmt: skip

# How a deformable convolution is written into the graph: ONNX DeformConv-19 (TensorRT >= 10.1, ORT >= 1.25) or
# a node that TensorRT's parser maps to its built-in plugin by op name (TensorRT 8.6, opset <= 17).
DCN_MODES = ("onnx", "trt-plugin")
# Output stride of the mask logits: pred_masks are at 1/8 of the padded input.
MASK_STRIDE = 8
# Version "1" of TensorRT's ModulatedDeformConv2d is the IPluginV2DynamicExt creator: registered from 8.6 through
# 11.x ("2", IPluginV3, exists only from 10.11), so "1" is the one that every target TensorRT resolves.
PLUGIN_VERSION = "1"


def _averaging_matrix(n: torch.Tensor | int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """(bins, n) matrix whose row i averages the input cells of adaptive-pooling bin i.

    Bin i covers [floor(i n / bins), ceil((i + 1) n / bins)), as in ``F.adaptive_avg_pool2d``. Written as
    ``(j + 1) * bins > i * n and j * bins < (i + 1) * n``, integer-exact, from the shape only (a Range over the
    size, no data-dependent op); the row sum is the bin's cell count.
    """
    j = torch.arange(n, device=like.device)[None, :]
    i = torch.arange(bins, device=like.device)[:, None]
    member = ((j + 1) * bins > i * n) & (j * bins < (i + 1) * n)
    member = member.to(like.dtype)
    return member / member.sum(dim=1, keepdim=True)


class ExactAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d(bins)`` as two matrix products, exact for static and dynamic input sizes.

    ``pooled = P_h @ x @ P_w^T`` with the averaging matrices of ``_averaging_matrix``: (B, C, h, w) -> (B, C, k, k).
    """

    def __init__(self, bins: int) -> None:
        super().__init__()
        self.bins = int(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        p_h = _averaging_matrix(h, self.bins, x)  # (k, h)
        p_w = _averaging_matrix(w, self.bins, x)  # (k, w)
        return torch.matmul(torch.matmul(p_h, x), p_w.transpose(0, 1))


class _PluginDeformConv(torch.autograd.Function):
    """The TorchScript exporter's hook (opset <= 17, so only the plugin node): ``symbolic`` writes the node,
    ``forward`` computes the convolution in torch while tracing. Stride and padding are static per layer."""

    @staticmethod
    def forward(ctx, x, offset, weight, stride, padding):  # noqa: ANN001, ANN205
        return deform_conv2d(x, offset, weight, int(stride), int(padding))

    @staticmethod
    def symbolic(g, x, offset, weight, stride, padding):  # noqa: ANN001, ANN205
        kh, kw = _symbolic_sizes(weight)[-2:]
        # All-ones modulation (B, kh*kw, Ho, Wo), the plugin requires it: offset's first kh*kw channels * 0 + 1.
        taps = g.op("Slice", offset, _const(g, [0]), _const(g, [kh * kw]), _const(g, [1]))
        mask = g.op("Add", g.op("Mul", taps, _const(g, 0.0)), _const(g, 1.0))
        return g.op(
            "trt::ModulatedDeformConv2d",
            x,
            offset,
            mask,
            weight,
            stride_i=[stride, stride],
            padding_i=[padding, padding],
            dilation_i=[1, 1],
            group_i=1,
            deformable_group_i=1,
            plugin_version_s=PLUGIN_VERSION,
            plugin_namespace_s="",
        ).setType(
            x.type().with_sizes([*_symbolic_sizes(x)[:1], _symbolic_sizes(weight)[0], *_symbolic_sizes(offset)[2:]])
        )


def _symbolic_sizes(value) -> list[int]:  # noqa: ANN001
    sizes = value.type().sizes()
    if sizes is None:
        raise RuntimeError("a DCN input has no static shape in the traced graph (static export only)")
    return sizes


def _const(g, value):  # noqa: ANN001, ANN202
    dtype = torch.float32 if isinstance(value, float) else torch.int64
    return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))


class ExportDeformConv(nn.Module):
    """A ``DeformConv`` (3x3, DCN v1, no bias) that exports as one DCN node.

    Args:
        conv: the ``DeformConv`` to re-express (its weight is shared, not copied).
        mode: one of ``DCN_MODES``.

    Under the dynamo exporter the node comes from ``torch.onnx.ops.symbolic``, under the TorchScript exporter from
    ``_PluginDeformConv.symbolic``; otherwise the pure-torch ``deform_conv2d`` runs. Computed in float32 like the
    official block (the input is cast, the output cast back), so the node stays float32 in an FP16 graph.
    """

    def __init__(self, conv: DeformConv, mode: str = "onnx") -> None:
        super().__init__()
        if mode not in DCN_MODES:
            raise ValueError(f"unknown DCN mode {mode!r}; expected one of {DCN_MODES}")
        self.weight = conv.weight
        self.stride, self.padding, self.mode = conv.stride, conv.padding, mode

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """x (B, Cin, H, W), offset (B, 2*kh*kw, Ho, Wo) -> (B, Cout, Ho, Wo) in x's dtype."""
        dtype = x.dtype
        x, offset, weight = x.float(), offset.float(), self.weight.float()
        if torch.jit.is_tracing():  # the TorchScript exporter (opset <= 17)
            if self.mode != "trt-plugin":
                raise RuntimeError("ONNX DeformConv needs opset >= 19 (the dynamo exporter); use the plugin node")
            out = _PluginDeformConv.apply(x, offset, weight, self.stride, self.padding)
        elif torch.onnx.is_in_onnx_export():  # the dynamo exporter
            out = self._symbolic(x, offset, weight)
        else:
            out = deform_conv2d(x, offset, weight, self.stride, self.padding)
        return out.to(dtype)

    def _symbolic(self, x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        b, (cout, _, kh, kw) = x.shape[0], weight.shape
        shape = (b, cout, offset.shape[2], offset.shape[3])
        s, p = self.stride, self.padding
        if self.mode == "onnx":
            attrs = {"kernel_shape": [kh, kw], "strides": [s, s], "pads": [p, p, p, p], "dilations": [1, 1],
                     "group": 1, "offset_group": 1}  # fmt: skip
            return torch.onnx.ops.symbolic(
                "DeformConv", (x, weight, offset), attrs, dtype=x.dtype, shape=shape, version=19
            )
        mask = torch.ones_like(offset[:, : kh * kw])
        attrs = {"stride": [s, s], "padding": [p, p], "dilation": [1, 1], "group": 1, "deformable_group": 1,
                 "plugin_version": PLUGIN_VERSION, "plugin_namespace": ""}  # fmt: skip
        return torch.onnx.ops.symbolic(
            "trt::ModulatedDeformConv2d", (x, offset, mask, weight), attrs, dtype=x.dtype, shape=shape, version=1
        )


class _Float32(nn.Module):
    """Runs ``module`` in float32 on an input of any float dtype and returns the input's dtype (normalization
    statistics: a float16 mean/variance over a 256-wide row or a GroupNorm group loses too many bits)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.float()).to(x.dtype)


class _Float32Output(nn.Module):
    """Runs ``module`` as is and casts its output to float32 (class logits, mask embeddings, selection logits:
    what the selection, the softmaxes and the output mask logits are computed from)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x).float()


def _cast(value: Any, dtype: torch.dtype) -> Any:
    """``value`` (a tensor, or tuples, lists and dicts of them) with its floating-point tensors in ``dtype``."""
    if torch.is_tensor(value):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    return value


class _Float32Region(nn.Module):
    """A whole region (a backbone stage, the pixel decoder) in float32 inside the FP16-mixed network: its weights
    and arithmetic float32, its float16 inputs cast up and its outputs cast back down to float16 (one Cast pair at
    each boundary in the graph)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.float()

    def forward(self, *args: Any) -> Any:
        return _cast(self.module(*_cast(args, torch.float32)), torch.float16)


class _MixedAttention(nn.Module):
    """``Attention`` with float16 projections and products but a float32 softmax (with the float32 bias added).

    Q is scaled before the first product, so the graph keeps the MatMul -> Add -> Softmax -> MatMul pattern that
    TensorRT's attention fusion looks for.
    """

    def __init__(self, attn: Attention) -> None:
        super().__init__()
        self.attn = attn

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        a = self.attn
        c, h = a.embed_dim, a.num_heads
        w_q, w_k, w_v = a.in_proj_weight.split(c)
        b_q, b_k, b_v = a.in_proj_bias.split(c)
        q = F.linear(query, w_q, b_q).unflatten(-1, (h, c // h)).transpose(1, 2) * (c // h) ** -0.5
        k = F.linear(key, w_k, b_k).unflatten(-1, (h, c // h)).transpose(1, 2)
        v = F.linear(value, w_v, b_v).unflatten(-1, (h, c // h)).transpose(1, 2)
        logits = torch.matmul(q, k.transpose(-2, -1)).float()
        if attn_bias is not None:
            logits = logits + attn_bias.float()
        weights = logits.softmax(dim=-1).to(v.dtype)
        out = torch.matmul(weights, v)
        return a.out_proj(out.transpose(1, 2).flatten(2))


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def fp16_regions(model: FastInst) -> tuple[str, ...]:
    """The regions an FP16 export may leave in float32, as module paths: each child of the backbone (``stem``,
    ``res2``..``res5``; ``conv1``, ``bn1``, ``layer1``..``layer4`` for ResNet-D) and the pixel decoder. The decoder
    is not one: its heads and softmaxes already are float32, and float32 elsewhere in it changed nothing measured
    (benchmarks/README.md, result 11)."""
    return (*(f"backbone.{name}" for name, _ in model.backbone.named_children()), "pixel_decoder")


def make_exportable(
    model: FastInst, *, dcn: str = "onnx", fp16: bool = False, float32_regions: Sequence[str] = ()
) -> FastInst:
    """Swap export-friendly layers into ``model`` in place (use a copy) and return it.

    Args:
        model: a FastInst in eval mode.
        dcn: how deformable convolutions are written, one of ``DCN_MODES``.
        fp16: convert to the FP16-mixed form: weights and activations float16, except the normalization
            constants and the input normalization, LayerNorm/GroupNorm (computed in float32), the attention
            softmax, the query-selection logits (softmax + local maxima + top-k), the class logits, the last mask
            head (so the output mask logits are float32 products), and DCN (float32 like the official block).
        float32_regions: with ``fp16``, regions of ``fp16_regions`` computed wholly in float32 as well (the FP16
            export's fallback picks them per weights when the float16 network fails its gate).

    Per-island evidence (benchmarks/README.md, result 5): the bundled trained model run by PyTorch in float16 on
    16 held-out images, instances against FP32, one island removed at a time: shipped, largest score difference
    0.010 and mask IoU 0.988; norms in float16, 0.079 (refused by the export gate); heads and selection logits in
    float16, 0.381 and IoU 0.920 (refused); nothing in float32, 0.382. The attention softmax in float16 changed
    nothing measurable there (PyTorch's CPU softmax accumulates in float32); it stays float32 for TensorRT, where
    float16 attention is a reported source of wrong outputs in transformer models (NVIDIA/TensorRT #4723, #3893).
    """
    if fp16:
        model.half()
        # The official selection thresholds against float32 statistics; normalize the uint8 input in float32.
        model.pixel_mean, model.pixel_std = model.pixel_mean.float(), model.pixel_std.float()
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.AdaptiveAvgPool2d):
            size = module.output_size
            bins = size if isinstance(size, int) else size[0]
            if not isinstance(size, int) and (len(set(size)) != 1 or None in size):
                raise ValueError(f"{name}: only square adaptive pooling is re-expressed, got {size}")
            _replace(model, name, ExactAdaptiveAvgPool2d(bins))
        elif isinstance(module, DeformConv):
            _replace(model, name, ExportDeformConv(module, dcn).float())
        elif fp16 and isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            _replace(model, name, _Float32(module))
        elif fp16 and isinstance(module, Attention):
            _replace(model, name, _MixedAttention(module))
    if fp16:
        dec = model.decoder
        prop = dec.query_proposal
        prop.conv_proposal_cls_logits = _Float32Output(prop.conv_proposal_cls_logits)
        last = dec.num_layers  # the prediction head of the last layer is the one whose outputs leave the graph
        dec.class_embed_layers[last] = _Float32Output(dec.class_embed_layers[last])
        dec.mask_embed_layers[last] = _Float32Output(dec.mask_embed_layers[last])
        dec.mask_features_layers[last] = _Float32Output(dec.mask_features_layers[last])
    unknown = set(float32_regions) - set(fp16_regions(model))
    if unknown or (float32_regions and not fp16):
        raise ValueError(f"float32 regions {sorted(unknown) or list(float32_regions)} need fp16 and one of "
                         f"{fp16_regions(model)}")  # fmt: skip
    for region in float32_regions:
        _replace(model, region, _Float32Region(model.get_submodule(region)))
    return model


def select_pairs(
    logits: torch.Tensor, masks: torch.Tensor, max_det: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The official top-``max_det`` query x class pairs by class probability, with their query and masks.

    Args:
        logits: (B, Q, K+1) float32 class logits (last column no-object). masks: (B, Q, h, w) mask logits.
        max_det: a Python int (TopK's k must be a constant for TensorRT); at most Q*K.
    Returns:
        ``(scores, labels, query, masks)``, the backends' output contract (``runtime.backends.base.Backend``):
        (B, N) float32 class probabilities, descending; (B, N) int64 classes; (B, N) int64 queries; (B, N, h, w)
        float32 mask logits of each pair's query. N = max_det.
    """
    b, q, k1 = logits.shape
    num_classes = k1 - 1
    probs = logits.softmax(dim=-1)[:, :, :num_classes].flatten(1)  # (B, Q*K), pair index = query * K + class
    scores, index = torch.topk(probs, max_det, dim=1)
    # Indices are non-negative, so truncating division is the floor; labels by subtraction rather than Mod.
    query = torch.div(index, num_classes, rounding_mode="trunc")
    labels = index - query * num_classes
    # The query index broadcast over (h, w) with a zero map: GatherElements on the 4-D masks, no reshapes.
    spread = query[:, :, None, None] + torch.zeros_like(masks[:, :1], dtype=torch.int64)  # (B, N, h, w)
    return scores, labels, query, torch.gather(masks, 1, spread)


class DeployModel(nn.Module):
    """FastInst with the artifact's input contract and outputs.

    Args:
        model: a FastInst (eval mode); it is deep-copied, the original is left untouched.
        raw: return the raw head outputs instead of the selected pairs.
        max_det: pairs returned by the end-to-end head (clamped to Q*K).
        fp16: FP16-mixed network (see ``make_exportable``); inputs and outputs keep their dtypes.
        float32_regions: with ``fp16``, regions of ``fp16_regions`` left wholly in float32.
        dcn: how deformable convolutions are exported, one of ``DCN_MODES``.
        padding: components of ``export.padding.COMPONENTS`` that mask each image's padding beyond its valid size
            rounded up to /32 (a static graph's extra padding, which the official model never sees); () for none.

    ``forward(images, sizes)``: images (B, 3, H, W) uint8 RGB, zero-padded bottom/right to multiples of 32; sizes
    (B, 2) int64, each image's valid (h, w). Returns ``(pred_logits (B, Q, K+1), pred_masks (B, Q, H/8, W/8))``
    float32 when ``raw``, else ``select_pairs``' ``(scores, labels, query, masks)`` (see ``output_names``).
    """

    def __init__(
        self, model: FastInst, *, raw: bool = False, max_det: int = 100, fp16: bool = False, dcn: str = "onnx",
        float32_regions: Sequence[str] = (), padding: Sequence[str] = (),
    ):  # fmt: skip
        super().__init__()
        self.model = make_exportable(copy.deepcopy(model).eval(), dcn=dcn, fp16=fp16, float32_regions=float32_regions)
        self.region, self.padding = Region(), tuple(padding)
        if self.padding:
            apply_region_masks(self.model, self.region, self.padding)
        self.raw, self.fp16, self.float32_regions = raw, fp16, tuple(float32_regions)
        q, k = model.decoder.num_queries, model.num_classes
        if max_det < 1:
            raise ValueError(f"max_det must be positive, got {max_det}")
        self.max_det = min(int(max_det), q * k)

    @property
    def input_names(self) -> tuple[str, ...]:
        return INPUT_NAMES

    @property
    def output_names(self) -> tuple[str, ...]:
        return OUTPUT_NAMES["raw" if self.raw else "e2e"]

    def forward(self, images: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        if self.padding:
            self.region.set(sizes, tuple(images.shape[-2:]))
        x = m.normalize(images, sizes)
        if self.fp16:
            x = x.half()
        # FastInst.forward minus its eager input checks, which would turn into shape guards under torch.export.
        e3, e4, _ = m.pixel_decoder(m.backbone(x))
        out = m.decoder(e3, e4)
        logits, masks = out["pred_logits"].float(), out["pred_masks"].float()
        if "edge" in self.padding:
            masks = replicate_edge(masks, self.region)
        if self.raw:
            return logits, masks
        return select_pairs(logits, masks, self.max_det)
