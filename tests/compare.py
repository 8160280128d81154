"""How two runs of FastInst are compared: raw head outputs as query sets, final instances by greedy matching.

Used by the export tests (exported graph vs torch) and the official-parity tests (ours vs the official code).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """Relative L2 error of ``a`` against the reference ``b``, in float64."""
    return float(np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(b.astype(np.float64)), 1e-12))


def query_order(logits: np.ndarray, masks: np.ndarray, ref_logits: np.ndarray, ref_masks: np.ndarray) -> np.ndarray:
    """Our query index for each reference query of one image (logits (Q, K+1), masks (Q, h, w)).

    Queries whose selection scores tie may leave top-k in another order, and the decoder is permutation-equivariant,
    so the queries are compared as a set: matched greedily by squared distance, the closest pairs first.
    """
    ours = np.concatenate([logits, masks.reshape(len(masks), -1)], 1).astype(np.float64)
    theirs = np.concatenate([ref_logits, ref_masks.reshape(len(ref_masks), -1)], 1).astype(np.float64)
    d = (theirs**2).sum(1)[:, None] + (ours**2).sum(1)[None, :] - 2 * theirs @ ours.T
    order, free = np.empty(len(theirs), int), np.ones(len(ours), bool)
    for i in np.argsort(d.min(1)):
        j = np.where(free, d[i], np.inf).argmin()
        order[i], free[j] = j, False
    return order


def matched_errors(
    logits: np.ndarray, masks: np.ndarray, ref_logits: np.ndarray, ref_masks: np.ndarray
) -> tuple[float, float]:
    """Worst relative error of (B, Q, K+1) logits and (B, Q, h, w) masks over the batch, queries matched per image."""
    worst_l = worst_m = 0.0
    for lg, mk, rl, rm in zip(logits, masks, ref_logits, ref_masks):
        order = query_order(lg, mk, rl, rm)
        worst_l, worst_m = max(worst_l, rel_error(lg[order], rl)), max(worst_m, rel_error(mk[order], rm))
    return worst_l, worst_m


class InstanceMatch(NamedTuple):
    max_score_diff: float  # inf when some reference instance found no partner of its label
    median_iou: float
    min_iou: float
    label_agreement: float  # share of reference instances matched to one of the same label


def match_instances(ref, ours) -> InstanceMatch:
    """Match each instance of ``ref`` (highest score first) to the unused one of ``ours`` with the same label and the
    closest score. Both have ``masks`` (N, H, W) bool, ``scores`` (N,) and ``labels`` (N,), e.g. ``Results``."""
    used, diffs, ious, same = np.zeros(len(ours.scores), bool), [], [], 0
    for i in np.argsort(-np.asarray(ref.scores)):
        cand = np.flatnonzero((ours.labels == ref.labels[i]) & ~used)
        if cand.size == 0:
            diffs.append(np.inf)
            ious.append(0.0)
            continue
        j = cand[np.argmin(np.abs(ours.scores[cand] - ref.scores[i]))]
        used[j], same = True, same + 1
        diffs.append(abs(float(ours.scores[j]) - float(ref.scores[i])))
        union = np.logical_or(ref.masks[i], ours.masks[j]).sum()
        ious.append(1.0 if union == 0 else float(np.logical_and(ref.masks[i], ours.masks[j]).sum() / union))
    if not diffs:
        return InstanceMatch(0.0, 1.0, 1.0, 1.0)
    return InstanceMatch(max(diffs), float(np.median(ious)), min(ious), same / len(diffs))
