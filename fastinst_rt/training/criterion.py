"""FastInst training losses: proposal CE, class CE, point-sampled mask BCE and dice, with deep supervision.

Written after FastInst ``modeling/criterion.py`` (DETR/Mask2Former ``SetCriterion``).
Changes: the criterion returns the weighted terms and their sum instead of raw terms weighted by the
trainer; the matcher's proposal path is an explicit method call rather than a dispatch on the outputs' keys.
The output contract it consumes is ``FastInst.forward``'s (training mode).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .matcher import HungarianMatcher, Indices, point_sample

__all__ = ["SetCriterion", "dice_loss", "sigmoid_ce_loss", "uncertain_points"]


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Sum over masks of 1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1), divided by ``num_masks``.

    Args:
        logits: (M, P) mask logits at P points (p = sigmoid). targets: (M, P) in {0, 1}.
    """
    p = logits.sigmoid()
    loss = 1.0 - (2.0 * (p * targets).sum(-1) + 1.0) / (p.sum(-1) + targets.sum(-1) + 1.0)
    return loss.sum() / num_masks


def sigmoid_ce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Sum over masks of the point-averaged BCE-with-logits, divided by ``num_masks``. Shapes as ``dice_loss``."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum() / num_masks


def uncertain_points(
    logits: torch.Tensor, num_points: int, oversample_ratio: float, importance_sample_ratio: float
) -> torch.Tensor:
    """PointRend importance sampling: the most uncertain of oversampled random points, plus fresh random ones.

    Args:
        logits: (M, 1, h, w) mask logits; uncertainty is -|logit| (most uncertain at the decision boundary).
        num_points: N points per mask (12544).
        oversample_ratio: N * ratio uniform candidates are drawn (3.0).
        importance_sample_ratio: this fraction of N is the most uncertain candidates (0.75); the rest is uniform.
    Returns:
        (M, N, 2) normalized (x, y) points.
    """
    m = logits.shape[0]
    num_candidates = int(num_points * oversample_ratio)
    candidates = torch.rand(m, num_candidates, 2, device=logits.device)
    uncertainty = -point_sample(logits, candidates)[:, 0].abs()  # (M, candidates)
    num_uncertain = int(importance_sample_ratio * num_points)
    index = uncertainty.topk(num_uncertain, dim=1).indices
    points = torch.gather(candidates, 1, index[..., None].expand(-1, -1, 2))
    fresh = torch.rand(m, num_points - num_uncertain, 2, device=logits.device)
    return torch.cat([points, fresh], dim=1)


def _flat_index(indices: Indices, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # (batch index, prediction index) of every matched pair, for advanced indexing of (B, Q, ...) tensors.
    batch = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)])
    src = torch.cat([src for src, _ in indices])
    return batch.to(device), src.to(device)


class SetCriterion(nn.Module):
    """The FastInst loss on the outputs of ``FastInst.forward`` in training mode.

    Args:
        num_classes: K foreground classes (the logits have K+1 columns, the last "no object").
        matcher: assigns queries and proposal pixels to ground-truth instances.
        class_weight, mask_weight, dice_weight: loss weights (2, 5, 5), applied to every prediction set.
        proposal_weight: weight of the proposal-head CE (20).
        no_object_weight: CE weight of the no-object class for the decoder predictions (0.1).
        num_points, oversample_ratio, importance_sample_ratio: point sampling of the mask losses
            (12544, 3.0, 0.75).
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        proposal_weight: float = 20.0,
        no_object_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        self.num_classes, self.matcher = num_classes, matcher
        self.class_weight, self.mask_weight, self.dice_weight = class_weight, mask_weight, dice_weight
        self.proposal_weight = proposal_weight
        self.num_points, self.oversample_ratio = num_points, oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = no_object_weight
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def forward(self, outputs: dict, targets: Sequence[dict]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Compute the loss.

        Args:
            outputs: ``FastInst.forward`` in training mode: "pred_logits" (B, Q, K+1), "pred_masks" (B, Q, h, w),
                "proposal_cls_logits" (B, K+1, H/16, W/16), "query_locations" (B, Q, 2),
                "pred_matching_indices" (or None) and "aux_outputs" (list of dicts of the same keys).
            targets: per image "labels" (G,) int64 and "masks" (G, Hp, Wp) bool at the padded input size.
        Returns:
            (total, terms): the scalar sum, and every weighted term: "loss_proposal", "loss_ce", "loss_mask",
            "loss_dice", and "loss_ce_i", "loss_mask_i", "loss_dice_i" for each auxiliary prediction i.
        """
        num_masks = self._num_masks(targets, outputs["pred_logits"].device)
        terms: dict[str, torch.Tensor] = {}
        if outputs.get("proposal_cls_logits") is not None:
            indices = self.matcher.match_proposals(outputs["proposal_cls_logits"], targets)
            terms["loss_proposal"] = self.proposal_weight * self.loss_proposal(
                outputs["proposal_cls_logits"], targets, indices
            )
        sets = [("", outputs)] + [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs") or [])]
        for suffix, out in sets:
            # Guided predictions carry the last layer's matching; the others are matched on their own.
            indices = out.get("pred_matching_indices")
            if indices is None:
                indices = self.matcher(out, targets)
            terms["loss_ce" + suffix] = self.class_weight * self.loss_labels(out["pred_logits"], targets, indices)
            bce, dice = self.loss_masks(out["pred_masks"], targets, indices, num_masks)
            terms["loss_mask" + suffix] = self.mask_weight * bce
            terms["loss_dice" + suffix] = self.dice_weight * dice
        return sum(terms.values()), terms

    @staticmethod
    def _num_masks(targets: Sequence[dict], device: torch.device) -> float:
        # Averaged over the workers so every worker normalizes by the same number; at least 1.
        n = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(n)
            n = n / dist.get_world_size()
        return max(float(n.item()), 1.0)

    def loss_proposal(self, logits: torch.Tensor, targets: Sequence[dict], indices: Indices) -> torch.Tensor:
        """CE over K+1 classes at every E4 pixel: background (K) except the pixel matched to each GT.

        Args:
            logits: (B, K+1, h, w). indices: per image (flat pixel index, target index).
        Returns:
            Scalar, the plain mean over B*h*w pixels (no no-object down-weighting).
        """
        logits = logits.flatten(2).float()  # (B, K+1, hw)
        target = torch.full(
            (logits.shape[0], logits.shape[2]), self.num_classes, dtype=torch.int64, device=logits.device
        )
        self._fill_matched(target, targets, indices)
        return F.cross_entropy(logits, target)

    def loss_labels(self, logits: torch.Tensor, targets: Sequence[dict], indices: Indices) -> torch.Tensor:
        """CE over K+1 classes for every query, no-object for unmatched ones, weighted 0.1.

        Args:
            logits: (B, Q, K+1). indices: per image (query index, target index).
        Returns:
            Scalar, PyTorch's weighted mean sum(w * l) / sum(w).
        """
        logits = logits.float()
        target = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        self._fill_matched(target, targets, indices)
        return F.cross_entropy(logits.transpose(1, 2), target, weight=self.empty_weight.to(logits.device))

    @staticmethod
    def _fill_matched(target: torch.Tensor, targets: Sequence[dict], indices: Indices) -> None:
        batch, src = _flat_index(indices, target.device)
        labels = [t["labels"][tgt.to(t["labels"].device)] for t, (_, tgt) in zip(targets, indices)]
        if len(batch):
            target[batch, src] = torch.cat(labels).to(target.device)

    def loss_masks(
        self, masks: torch.Tensor, targets: Sequence[dict], indices: Indices, num_masks: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """BCE and dice of the matched masks on importance-sampled points.

        Args:
            masks: (B, Q, h, w) mask logits at 1/8 of the padded input. targets: masks (G, Hp, Wp) at the padded
                size; both are sampled at the same normalized points, so no upsampling is needed.
        Returns:
            (bce, dice), each summed over matched masks and divided by ``num_masks``.
        """
        batch, src = _flat_index(indices, masks.device)
        if len(batch) == 0:
            # Keep the graph connected (DDP expects every parameter to get a gradient).
            zero = masks.sum() * 0.0
            return zero, zero
        pred = masks[batch, src].unsqueeze(1).float()  # (M, 1, h, w); float32 even under autocast
        gt = torch.cat([t["masks"][tgt.to(t["masks"].device)] for t, (_, tgt) in zip(targets, indices)])
        gt = gt.unsqueeze(1).to(device=masks.device, dtype=torch.float32)  # (M, 1, Hp, Wp)
        with torch.no_grad():
            points = uncertain_points(pred, self.num_points, self.oversample_ratio, self.importance_sample_ratio)
            gt_points = point_sample(gt, points)[:, 0]
        pred_points = point_sample(pred, points)[:, 0]
        return sigmoid_ce_loss(pred_points, gt_points, num_masks), dice_loss(pred_points, gt_points, num_masks)
