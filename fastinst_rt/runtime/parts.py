"""Separated parts of a mask: boxes that hold all its pixels and that no 8-connected piece of it crosses.

A low-score mask often has a second part far from the first, so its tight box is mostly empty. Work that only
needs the pixels (upsampling, COCO RLE, blending, contours) can run on each part's box instead of the whole box,
provided the boxes are *separated*: any two are at least one empty row or column apart (``gap >= 1``). Then no two
pixels of different boxes touch, not even diagonally, so a contour or a run of pixels never crosses two boxes, and
no box lies in another's hole (their extents are disjoint), so ``RETR_EXTERNAL`` finds the same outer contours box
by box as on the whole mask.

Boxes are (k, 4) int64 xyxy, x2/y2 exclusive, in image coordinates. Numpy only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["merge_separated", "split_parts"]

#: Depth of the row/column cuts in ``split_parts``: a complex mask keeps larger boxes rather than costing many scans.
MAX_CUT_DEPTH = 3


def merge_separated(boxes: np.ndarray) -> np.ndarray:
    """(k, 4) boxes -> (m, 4), m <= k: boxes that overlap or touch (gap < 1) merged into their union until all are
    separated. The union of the result covers the input's. Sorted by (y1, x1)."""
    out = [b for b in np.asarray(boxes, np.int64).reshape(-1, 4).tolist() if b[2] > b[0] and b[3] > b[1]]
    merged = True
    while merged and len(out) > 1:  # a union can reach a third box: repeat until nothing merges
        merged = False
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                a, b = out[i], out[j]
                if a[2] >= b[0] and b[2] >= a[0] and a[3] >= b[1] and b[3] >= a[1]:  # no empty row/column between
                    out[i] = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]
                    del out[j]
                    merged = True
                    break
            if merged:
                break
    out.sort(key=lambda b: (b[1], b[0]))
    return np.array(out, np.int64).reshape(-1, 4)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(n,) bool -> the [start, end) ranges of its runs of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[False], flags, [False]]).view(np.int8)))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def split_parts(crop: np.ndarray, origin: tuple[int, int], depth: int = MAX_CUT_DEPTH) -> np.ndarray:
    """Separated boxes of a bool mask ``crop`` (h, w) whose top-left pixel is ``origin`` (x, y) in the image.

    Recursive cuts along empty rows, then empty columns (an XY cut): each box is tight around its pixels and
    any two are split by an empty row or column, so they are separated. Costs about two scans of the crop per
    level. Returns (k, 4) int64 image-coordinate boxes, sorted by (y1, x1); (0, 4) for an empty crop.
    """
    x0, y0 = origin
    boxes: list[list[int]] = []
    for r0, r1 in _runs(crop.any(axis=1)):
        band = crop[r0:r1]
        for c0, c1 in _runs(band.any(axis=0)):
            piece = band[:, c0:c1]
            rows = _runs(piece.any(axis=1))  # the column cut may leave empty rows at the ends or inside
            if depth > 1 and len(rows) > 1:
                boxes.extend(split_parts(piece, (x0 + c0, y0 + r0), depth - 1).tolist())
            else:
                boxes.append([x0 + c0, y0 + r0 + rows[0][0], x0 + c1, y0 + r0 + rows[-1][1]])
    boxes.sort(key=lambda b: (b[1], b[0]))
    return np.array(boxes, np.int64).reshape(-1, 4)
