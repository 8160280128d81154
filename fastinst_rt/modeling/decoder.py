"""Dual-path transformer decoder of FastInst.

Ported from FastInst ``modeling/transformer_decoder/fastinst_decoder.py`` (``FastInstDecoder``). Changes:
batch-first tensors; the attention mask is an additive (B, 1, Q, HW) bias shared by the heads instead of a
boolean (B*heads, Q, HW) copy; the ground-truth mask-guided pass takes its matching from a callable passed
to ``forward`` (the training code owns the matcher) rather than from a criterion attached to the module.
Module and parameter names follow the official checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import MASKED, MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer
from .query_proposal import QueryProposal

__all__ = ["FastInstDecoder", "attention_bias"]

# matcher(outputs, targets) -> per image (query indices, target indices); see training/matcher.py.
Matcher = Callable[[dict, Sequence[dict]], list[tuple[torch.Tensor, torch.Tensor]]]


def attention_bias(blocked: torch.Tensor) -> torch.Tensor:
    """(B, Q, L) bool "may not attend" -> (B, 1, Q, L) additive bias, rows that block everything reopened.

    A query whose mask is empty would otherwise attend to nothing (a NaN softmax); like the official code it
    attends everywhere instead. Written with ``all`` and a logical and, so there is no data-dependent indexing.
    """
    blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
    return (blocked.to(torch.float32) * MASKED).unsqueeze(1)


class FastInstDecoder(nn.Module):
    """Query proposal, then L dual-path layers that update pixel and query features in turn.

    Args:
        hidden_dim: width C of queries and pixel features (equal to the pixel decoder's width).
        num_classes: K.
        num_queries: IA-guided queries (100); also fixes the learned positional map to round(sqrt(.))^2.
        num_aux_queries: learnable auxiliary queries (8), never decoded and never masked.
        nheads: attention heads.
        dim_feedforward: FFN width.
        dec_layers: L.
        mask_dim: width of mask embeddings and mask features.
    """

    def __init__(
        self,
        hidden_dim: int = 256,
        num_classes: int = 80,
        num_queries: int = 100,
        num_aux_queries: int = 8,
        nheads: int = 8,
        dim_feedforward: int = 1024,
        dec_layers: int = 3,
        mask_dim: int = 256,
    ) -> None:
        super().__init__()
        self.num_queries, self.num_aux_queries, self.num_layers = num_queries, num_aux_queries, dec_layers
        side = int(round(math.sqrt(num_queries)))
        # Uninitialised in the official code (torch.empty); a small normal init makes training from scratch sane.
        self.meta_pos_embed = nn.Parameter(torch.randn(1, hidden_dim, side, side) * 0.02)
        if num_aux_queries > 0:
            self.empty_query_features = nn.Embedding(num_aux_queries, hidden_dim)
            self.empty_query_pos_embed = nn.Embedding(num_aux_queries, hidden_dim)
        self.query_proposal = QueryProposal(hidden_dim, num_queries, num_classes)

        def layers(make: Callable[[], nn.Module], n: int) -> nn.ModuleList:
            return nn.ModuleList(make() for _ in range(n))

        self.transformer_query_cross_attention_layers = layers(
            lambda: CrossAttentionLayer(hidden_dim, nheads), dec_layers
        )
        self.transformer_query_self_attention_layers = layers(
            lambda: SelfAttentionLayer(hidden_dim, nheads), dec_layers
        )
        self.transformer_query_ffn_layers = layers(lambda: FFNLayer(hidden_dim, dim_feedforward), dec_layers)
        self.transformer_mask_cross_attention_layers = layers(
            lambda: CrossAttentionLayer(hidden_dim, nheads), dec_layers
        )
        self.transformer_mask_ffn_layers = layers(lambda: FFNLayer(hidden_dim, dim_feedforward), dec_layers)
        # Prediction heads: index 0 decodes the initial queries, index l + 1 the output of layer l.
        self.decoder_query_norm_layers = layers(lambda: nn.LayerNorm(hidden_dim), dec_layers + 1)
        self.class_embed_layers = layers(lambda: MLP(hidden_dim, hidden_dim, num_classes + 1, 3), dec_layers + 1)
        self.mask_embed_layers = layers(lambda: MLP(hidden_dim, hidden_dim, mask_dim, 3), dec_layers + 1)
        self.mask_features_layers = layers(lambda: nn.Linear(hidden_dim, mask_dim), dec_layers + 1)

    def forward(
        self,
        e3: torch.Tensor,
        e4: torch.Tensor,
        targets: Sequence[dict] | None = None,
        matcher: Matcher | None = None,
    ) -> dict:
        """Decode queries from E4 (selection) and E3 (pixel features).

        Args:
            e3: (B, C, H/8, W/8) pixel features. e4: (B, C, H/16, W/16) selection features.
            targets, matcher: training only; with both, the ground-truth mask-guided pass runs.
        Returns:
            See ``FastInst.forward``.
        """
        b = e3.shape[0]
        size3 = e3.shape[-2:]
        pixel_pos = F.interpolate(self.meta_pos_embed, size=size3, mode="bilinear", align_corners=False)
        pixel_pos = pixel_pos.flatten(2).transpose(1, 2)  # (1, HW, C), broadcast over the batch
        proposal_pos = F.interpolate(self.meta_pos_embed, size=e4.shape[-2:], mode="bilinear", align_corners=False)
        queries, query_pos, locations, proposal_logits = self.query_proposal(e4, proposal_pos)
        if self.num_aux_queries > 0:
            queries = torch.cat([queries, self.empty_query_features.weight.expand(b, -1, -1)], dim=1)
            query_pos = torch.cat([query_pos, self.empty_query_pos_embed.weight.expand(b, -1, -1)], dim=1)
        pixels = e3.flatten(2).transpose(1, 2)  # (B, HW, C)

        training = self.training
        logits, masks = self.heads(0, queries, pixels, size3, with_class=training)
        predictions = [(logits, masks)]
        memory = []
        for i in range(self.num_layers):
            queries, pixels = self.layer(i, queries, pixels, query_pos, pixel_pos, self._mask_bias(masks))
            last = i == self.num_layers - 1
            logits, masks = self.heads(i + 1, queries, pixels, size3, with_class=training or last)
            predictions.append((logits, masks))
            memory.append((queries, pixels))

        out = {"pred_logits": logits, "pred_masks": masks}
        if not training:
            return out
        out["proposal_cls_logits"] = proposal_logits
        out["query_locations"] = locations
        guided, indices = [], None
        if targets is not None and matcher is not None:
            indices = matcher({"pred_logits": logits, "pred_masks": masks, "query_locations": locations}, targets)
            gt_bias = self._gt_mask_bias(indices, targets, size3, b, e3.device)
            for i, (q, p) in enumerate(memory):
                # As the official code does: layer i runs again on its own outputs, masked by the ground truth.
                q, p = self.layer(i, q, p, query_pos, pixel_pos, gt_bias)
                guided.append(self.heads(i + 1, q, p, size3, with_class=True))
        out["pred_matching_indices"] = indices
        aux = [(lg, mk, indices) for lg, mk in guided] + [(lg, mk, None) for lg, mk in predictions[:-1]]
        out["aux_outputs"] = [
            {"pred_logits": lg, "pred_masks": mk, "pred_matching_indices": ix, "query_locations": locations}
            for lg, mk, ix in aux
        ]
        return out

    def layer(
        self,
        i: int,
        queries: torch.Tensor,
        pixels: torch.Tensor,
        query_pos: torch.Tensor,
        pixel_pos: torch.Tensor,
        attn_bias: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder layer i: pixels attend to queries (unmasked), then queries attend to the updated pixels
        (masked), self-attend and pass an FFN. queries (B, Q+A, C), pixels (B, HW, C)."""
        pixels = self.transformer_mask_cross_attention_layers[i](pixels, queries, pixel_pos, query_pos)
        pixels = self.transformer_mask_ffn_layers[i](pixels)
        queries = self.transformer_query_cross_attention_layers[i](queries, pixels, query_pos, pixel_pos, attn_bias)
        queries = self.transformer_query_self_attention_layers[i](queries, query_pos)
        queries = self.transformer_query_ffn_layers[i](queries)
        return queries, pixels

    def heads(
        self, idx: int, queries: torch.Tensor, pixels: torch.Tensor, size: Sequence[int], with_class: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Prediction head idx on the IA-guided queries only.

        Returns class logits (B, Q, K+1) or None, and mask logits (B, Q, h, w) at the pixel-feature size.
        """
        q = self.decoder_query_norm_layers[idx](queries[:, : self.num_queries])
        logits = self.class_embed_layers[idx](q) if with_class else None
        embed = self.mask_embed_layers[idx](q)
        features = self.mask_features_layers[idx](pixels)
        masks = torch.bmm(embed, features.transpose(1, 2))
        return logits, masks.unflatten(2, tuple(size))

    def _mask_bias(self, masks: torch.Tensor) -> torch.Tensor:
        # Block pixels where the previous mask logit is negative; the auxiliary queries get all-open rows.
        blocked = masks.detach().flatten(2) < 0
        blocked = F.pad(blocked, (0, 0, 0, self.num_aux_queries), value=False)
        return attention_bias(blocked)

    def _gt_mask_bias(
        self, indices: list, targets: Sequence[dict], size: Sequence[int], batch: int, device: torch.device
    ) -> torch.Tensor:
        # Matched queries may attend only inside their ground-truth mask (nearest-resized to 1/8); every other
        # query, auxiliary ones included, attends everywhere.
        blocked = torch.zeros(batch, self.num_queries + self.num_aux_queries, *size, dtype=torch.bool, device=device)
        for b, ((src, tgt), t) in enumerate(zip(indices, targets)):
            if len(src) == 0:
                continue
            gt = F.interpolate(t["masks"][None].float(), size=tuple(size), mode="nearest")[0].bool()
            blocked[b, src.to(device)] = ~gt[tgt.to(device)]
        return attention_bias(blocked.flatten(2))
