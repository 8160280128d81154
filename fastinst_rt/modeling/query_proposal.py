"""Instance activation-guided query selection of FastInst.

Ported from FastInst ``modeling/transformer_decoder/utils.py`` (``QueryProposal``). Changes: the local-maximum
test runs on the per-pixel best foreground class instead of on all K+1 one-hot-masked planes. The two are the
same selection: after the one-hot masking a pixel is non-zero only in its own argmax plane, so it is a local
maximum there iff its probability is >= that of every 8-neighbour sharing its class (neighbours of another
class, or outside the map, read 0 in that plane), and the score is ``p + 1`` for a maximum and ``p`` otherwise.
This works on (B, h, w) maps instead of (B, K+1, h, w) ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["QueryProposal", "selection_scores"]


def selection_scores(probs: torch.Tensor, epsilon: float = 1e-6) -> torch.Tensor:
    """Per-pixel proposal score: best foreground probability, plus 1 where it is a local maximum of its class.

    Args:
        probs: (B, K+1, h, w) softmax probabilities; the last channel is "no object".
    Returns:
        (B, h*w) scores, ordered like ``probs.flatten(2)``.
    """
    value, label = probs[:, :-1].max(dim=1)  # (B, h, w): the background never wins the argmax
    v = F.pad(value, (1, 1, 1, 1))
    lab = F.pad(label, (1, 1, 1, 1), value=-1)
    h, w = value.shape[-2:]
    is_max = value >= epsilon
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy == 1 and dx == 1:
                continue
            nv = v[:, dy : dy + h, dx : dx + w]
            nl = lab[:, dy : dy + h, dx : dx + w]
            is_max = is_max & ((nl != label) | (value >= nv))
    return (value + is_max.to(value.dtype)).flatten(1)


class QueryProposal(nn.Module):
    """Pick the top-k pixels of E4 by instance activation and use their features as queries.

    Args:
        num_features: C of E4.
        num_queries: k, the number of IA-guided queries (100).
        num_classes: K foreground classes.
    """

    def __init__(self, num_features: int, num_queries: int, num_classes: int) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.num_classes = num_classes
        self.conv_proposal_cls_logits = nn.Sequential(
            nn.Conv2d(num_features, num_features, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(num_features, num_classes + 1, 1),
        )

    def forward(
        self, x: torch.Tensor, pos_embed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Select queries.

        Args:
            x: (B, C, h, w) E4 features.
            pos_embed: (1, C, h, w) positional map at E4 size.
        Returns:
            features (B, k, C), positions (B, k, C), locations (B, k, 2) as normalised (x, y) in [0, 1]
            (corner-aligned, used by the training matcher) and proposal logits (B, K+1, h, w).
        """
        logits = self.conv_proposal_cls_logits(x)
        with torch.no_grad():
            scores = selection_scores(logits.softmax(dim=1))
            index = torch.topk(scores, self.num_queries, dim=1).indices  # (B, k), sorted by score
        b, c, h, w = x.shape
        features = torch.gather(x.flatten(2), 2, index[:, None, :].expand(b, c, -1)).transpose(1, 2)
        pos = pos_embed.flatten(2).expand(b, -1, -1)
        positions = torch.gather(pos, 2, index[:, None, :].expand(b, pos.shape[1], -1)).transpose(1, 2)
        # Official locations come from linspace(0, 1) grids, i.e. corner-aligned; kept for the matcher.
        xs = torch.linspace(0, 1, w, device=x.device, dtype=x.dtype)
        ys = torch.linspace(0, 1, h, device=x.device, dtype=x.dtype)
        locations = torch.stack([xs[index % w], ys[torch.div(index, w, rounding_mode="floor")]], dim=-1)
        return features, positions, locations, logits
