"""Small building blocks shared by the FastInst modules.

Ported from the official FastInst code (``transformer_decoder/utils.py``) and the Detectron2 layers it
relies on (``FrozenBatchNorm2d``, ``Conv2d`` with a norm child, ``DeformConv``). Changes:

* attention is written out (same parameter names as ``nn.MultiheadAttention``) in batch-first layout
  and runs ``F.scaled_dot_product_attention`` with an additive mask that broadcasts over heads, instead
  of repeating a boolean mask eight times;
* DCN v1 is computed with ``F.grid_sample`` (zero padding, corner-aligned pixel coordinates), which is
  the same bilinear sampling as ``torchvision.ops.deform_conv2d``, so torchvision is not needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FrozenBatchNorm2d",
    "Conv2d",
    "MLP",
    "Attention",
    "CrossAttentionLayer",
    "SelfAttentionLayer",
    "FFNLayer",
    "deform_conv2d",
    "DeformConv",
    "MASKED",
]

# Additive attention bias for a blocked key. Finite so that a half-precision graph stays NaN-free; exp(-1e4)
# underflows to exactly 0 in float32 and float16, so the softmax equals the one with -inf.
MASKED = -1e4


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (Detectron2's ``FrozenBatchNorm2d``).

    All four tensors are buffers, so they are never trained and appear in the state dict exactly as in
    the official checkpoints (``weight``, ``bias``, ``running_mean``, ``running_var``).
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` followed by an optional norm child and activation (Detectron2's ``Conv2d``).

    The norm is a child named ``norm`` so that checkpoint keys read ``<name>.weight``, ``<name>.norm.weight``.
    """

    def __init__(self, *args, norm: nn.Module | None = None, activation: nn.Module | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class MLP(nn.Module):
    """Linear layers with ReLU between them (DETR's MLP); keys ``layers.{i}.weight``."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class Attention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameters, batch-first.

    Args:
        embed_dim: model width C.
        num_heads: number of heads; C must be divisible by it.
    """

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attend ``query`` (B, Lq, C) to ``key``/``value`` (B, Lk, C).

        ``attn_bias`` is an additive float mask broadcastable to (B, heads, Lq, Lk), e.g. (B, 1, Lq, Lk)
        holding 0 (may attend) or ``MASKED``. Returns (B, Lq, C).
        """
        c, h = self.embed_dim, self.num_heads
        w_q, w_k, w_v = self.in_proj_weight.split(c)
        b_q, b_k, b_v = self.in_proj_bias.split(c)
        q = F.linear(query, w_q, b_q).unflatten(-1, (h, c // h)).transpose(1, 2)
        k = F.linear(key, w_k, b_k).unflatten(-1, (h, c // h)).transpose(1, 2)
        v = F.linear(value, w_v, b_v).unflatten(-1, (h, c // h)).transpose(1, 2)
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)  # under autocast q is half while the bias was built in float32
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class CrossAttentionLayer(nn.Module):
    """Post-norm cross-attention block: ``x = norm(x + attn(x + x_pos, mem + mem_pos, mem))``."""

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.multihead_attn = Attention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)
        _xavier_(self)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        x_pos: torch.Tensor,
        memory_pos: torch.Tensor,
        attn_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = self.multihead_attn(x + x_pos, memory + memory_pos, memory, attn_bias)
        return self.norm(x + out)


class SelfAttentionLayer(nn.Module):
    """Post-norm self-attention block: ``x = norm(x + attn(x + pos, x + pos, x))``."""

    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.self_attn = Attention(d_model, nhead)
        self.norm = nn.LayerNorm(d_model)
        _xavier_(self)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        q = x + pos
        return self.norm(x + self.self_attn(q, q, x))


class FFNLayer(nn.Module):
    """Post-norm feed-forward block: ``x = norm(x + linear2(relu(linear1(x))))``."""

    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        _xavier_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


def _xavier_(module: nn.Module) -> None:
    # The official layers re-initialise every parameter with more than one dimension this way.
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


def deform_conv2d(
    x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, stride: int = 1, padding: int = 1, dilation: int = 1
) -> torch.Tensor:
    """Deformable convolution v1 (no modulation mask, one offset group, no bias).

    Same definition as ``torchvision.ops.deform_conv2d``: kernel tap k of output pixel (i, j) reads the input
    bilinearly at (i * stride - padding + ky * dilation + dy, j * stride - padding + kx * dilation + dx),
    with zeros outside the image.

    Args:
        x: (B, Cin, H, W) input.
        offset: (B, 2 * kh * kw, Ho, Wo) offsets, (dy, dx) interleaved per kernel tap in row-major tap order.
        weight: (Cout, Cin, kh, kw) kernel.
    Returns:
        (B, Cout, Ho, Wo).
    """
    b, cin, h, w = x.shape
    cout, _, kh, kw = weight.shape
    ho, wo = offset.shape[-2:]
    dtype = x.dtype
    ys = torch.arange(ho, device=x.device, dtype=dtype) * stride - padding
    xs = torch.arange(wo, device=x.device, dtype=dtype) * stride - padding
    ky = torch.arange(kh, device=x.device, dtype=dtype).repeat_interleave(kw) * dilation
    kx = torch.arange(kw, device=x.device, dtype=dtype).repeat(kh) * dilation
    off = offset.unflatten(1, (kh * kw, 2))  # (B, K, 2, Ho, Wo)
    py = ys[None, None, :, None] + ky[None, :, None, None] + off[:, :, 0]  # (B, K, Ho, Wo)
    px = xs[None, None, None, :] + kx[None, :, None, None] + off[:, :, 1]
    # Pixel coordinate p -> normalised (2p + 1) / size - 1 under align_corners=False lands on pixel p for any
    # size; grid_sample's zero padding then reproduces torchvision's bilinear tap with zeros outside.
    gx = (2.0 * px + 1.0) / w - 1.0
    gy = (2.0 * py + 1.0) / h - 1.0
    grid = torch.stack([gx, gy], dim=-1).flatten(1, 2)  # (B, K*Ho, Wo, 2)
    cols = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    cols = cols.view(b, cin, kh * kw, ho * wo)  # (B, Cin, K, Ho*Wo)
    out = torch.einsum("ock,bckl->bol", weight.flatten(2), cols)
    return out.view(b, cout, ho, wo)


class DeformConv(nn.Module):
    """3x3 deformable convolution v1 without bias (Detectron2's ``DeformConv``), run in float32."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.stride, self.padding = stride, padding
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        # The official block casts to float32 before the op; mixed precision would change the sampling.
        return deform_conv2d(x.float(), offset.float(), self.weight.float(), self.stride, self.padding)
