"""Hungarian matching of FastInst predictions to ground-truth instances.

Written after FastInst ``modeling/matcher.py`` (itself from DETR/Mask2Former).
Changes: the decoder matcher and the proposal-pixel matcher are two methods of one object instead of one
``forward`` that dispatches on the keys of the outputs; costs are plain functions rather than TorchScript.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

__all__ = ["HungarianMatcher", "point_sample", "batch_sigmoid_ce_cost", "batch_dice_cost", "Indices"]

# Per image: (prediction indices, target indices), int64 1-D tensors of equal length.
Indices = list[tuple[torch.Tensor, torch.Tensor]]


def point_sample(inputs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample ``inputs`` at normalized points, as Detectron2's PointRend ``point_sample`` does.

    Args:
        inputs: (N, C, H, W) maps.
        coords: (N, P, 2) points as (x, y) in [0, 1] over the whole map (0 and 1 are the outer pixel edges).
    Returns:
        (N, C, P) sampled values; points outside the map read 0.
    """
    grid = 2.0 * coords.unsqueeze(2) - 1.0  # (N, P, 1, 2) in grid_sample's [-1, 1]
    return F.grid_sample(inputs, grid.to(inputs.dtype), align_corners=False).squeeze(3)


def batch_sigmoid_ce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy between every prediction and every target.

    Args:
        logits: (Q, P) mask logits at P points. targets: (G, P) in {0, 1} at the same points.
    Returns:
        (Q, G) cost, the BCE-with-logits averaged over the points.
    """
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    # Two matrix products instead of a (Q, G, P) tensor: the loss is linear in the target.
    return (pos @ targets.T + neg @ (1.0 - targets).T) / logits.shape[1]


def batch_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss 1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1) between every prediction and every target.

    Args:
        logits: (Q, P) mask logits (p = sigmoid). targets: (G, P) in {0, 1}.
    Returns:
        (Q, G) cost.
    """
    p = logits.sigmoid()
    numerator = 2.0 * p @ targets.T
    denominator = p.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


def _assign(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal assignment of a (rows, targets) cost; each target gets one row (or each row one target)."""
    if cost.numel() == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty
    rows, cols = linear_sum_assignment(cost.detach().cpu().to(torch.float64).numpy())
    return torch.as_tensor(np.asarray(rows), dtype=torch.int64), torch.as_tensor(np.asarray(cols), dtype=torch.int64)


class HungarianMatcher:
    """One-to-one assignment of queries (or proposal pixels) to ground-truth instances.

    Args:
        cost_class: weight of -p(gt class) (2.0).
        cost_mask: weight of the point-sampled sigmoid BCE (5.0).
        cost_dice: weight of the point-sampled dice loss (5.0).
        cost_location: weight of -[query pixel inside the GT mask] (1000.0): it all but forces a query whose
            origin pixel lies in an instance to be matched to it.
        num_points: uniform random points shared by all masks of an image (12544 = 112^2).
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        cost_location: float = 1000.0,
        num_points: int = 12544,
    ) -> None:
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("the class, mask and dice costs cannot all be 0")
        self.cost_class, self.cost_mask, self.cost_dice = cost_class, cost_mask, cost_dice
        self.cost_location, self.num_points = cost_location, num_points

    @torch.no_grad()
    def __call__(self, outputs: dict, targets: Sequence[dict]) -> Indices:
        """Match decoder predictions (the model's ``Matcher`` protocol).

        Args:
            outputs: "pred_logits" (B, Q, K+1), "pred_masks" (B, Q, h, w) logits, "query_locations" (B, Q, 2)
                normalized (x, y).
            targets: per image "labels" (G,) int64 and "masks" (G, Hp, Wp) bool, padded like the batch.
        Returns:
            Per image (query indices, target indices), min(Q, G) pairs, sorted by query index.
        """
        return [_assign(self.cost_matrix(outputs, targets, b)) for b in range(outputs["pred_logits"].shape[0])]

    @torch.no_grad()
    def cost_matrix(self, outputs: dict, targets: Sequence[dict], b: int) -> torch.Tensor:
        """(Q, G) matching cost of image ``b``, in float32 whatever the autocast state."""
        device = outputs["pred_masks"].device
        with torch.autocast(device.type, enabled=False):
            prob = outputs["pred_logits"][b].float().softmax(-1)  # (Q, K+1)
            pred = outputs["pred_masks"][b].float()  # (Q, h, w)
            gt = targets[b]["masks"].to(device=device, dtype=torch.float32)  # (G, Hp, Wp)
            labels = targets[b]["labels"].to(device)
            locations = outputs["query_locations"][b].float()  # (Q, 2)
            inside = point_sample(gt[None], locations[None])[0] > 0  # (G, Q)
            cost_location = -inside.T.float()
            cost_class = -prob[:, labels]
            points = torch.rand(1, self.num_points, 2, device=device)
            gt_points = point_sample(gt[None], points)[0]  # (G, P)
            pred_points = point_sample(pred[None], points)[0]  # (Q, P)
            cost_mask = batch_sigmoid_ce_cost(pred_points, gt_points)
            cost_dice = batch_dice_cost(pred_points, gt_points)
        return (
            self.cost_mask * cost_mask
            + self.cost_class * cost_class
            + self.cost_dice * cost_dice
            + self.cost_location * cost_location
        )

    @torch.no_grad()
    def match_proposals(self, proposal_logits: torch.Tensor, targets: Sequence[dict]) -> Indices:
        """Assign one E4 pixel to each ground-truth instance for the proposal loss.

        Args:
            proposal_logits: (B, K+1, h, w) logits of the query-selection head (h, w = H/16, W/16).
            targets: as for ``__call__``; masks at the padded input size.
        Returns:
            Per image (flat pixel indices into h*w, target indices).
        """
        size = proposal_logits.shape[-2:]
        out = []
        with torch.autocast(proposal_logits.device.type, enabled=False):
            for b, t in enumerate(targets):
                prob = proposal_logits[b].float().flatten(1).T.softmax(-1)  # (hw, K+1)
                gt = t["masks"].to(device=prob.device, dtype=torch.float32)
                labels = t["labels"].to(prob.device)
                if len(gt):
                    # Any overlap with the GT counts as inside (average pooling, then > 0).
                    inside = F.adaptive_avg_pool2d(gt[None], tuple(size))[0] > 0
                else:
                    inside = torch.zeros(0, *size, dtype=torch.bool, device=prob.device)
                cost = self.cost_class * -prob[:, labels] + self.cost_location * -inside.flatten(1).T.float()
                out.append(_assign(cost))
        return out
