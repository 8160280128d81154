"""Instance masks that cost what an instance covers, not what the image covers: each one is its box and the crop.

A 1080p frame holds 2 MB per whole-image bool mask; an instance usually covers a few percent of it. ``CropMasks``
keeps the tight box of each mask and the bool pixels inside it, and answers what the runtime needs (COCO RLE,
areas, IoU, drawing, tracking) from the crops. ``dense()`` builds the (N, H, W) array for code that wants it.

Numpy and pycocotools only (no torch, no cv2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import numpy as np
from pycocotools import mask as mask_utils

from .parts import split_parts

__all__ = ["CropMasks", "rle_counts", "rle_decode_counts"]

Index = Union[int, slice, Sequence[int], np.ndarray]


class CropMasks:
    """N instance masks of an (H, W) image, each stored as its tight box and the bool mask inside that box.

    Attributes:
        boxes: (N, 4) int64 xyxy pixel-edge boxes, x2/y2 exclusive: the tight box of each mask's pixels, as
            ``postprocess.boxes_from_masks`` computes it from the dense mask; (0, 0, 0, 0) for an empty mask.
        crops: tuple of N bool arrays, crop i of shape (y2 - y1, x2 - x1) of box i ((0, 0) for an empty mask).
        image_shape: (H, W), the image size.
        shape, dtype, ndim: those of the dense array, (N, H, W), bool and 3, for code written for one.

    Memory is the sum of the box areas in bytes plus ~100 bytes per instance, instead of N * H * W bytes. The boxes
    must be tight (every crop has a pixel on each of its four edges): ``from_dense``, ``from_rle`` and the
    post-processing guarantee it, the constructor only checks shapes and bounds.

    ``parts`` (optional, per instance a (k, 4) int64 array or None) are separated boxes holding all of a mask's
    pixels (``runtime.parts``): the post-processing knows them; else ``part_boxes`` finds them on first use. RLE
    and drawing work on them, so a mask of two distant parts costs its pixels, not its box.
    """

    def __init__(
        self,
        crops: Sequence[np.ndarray],
        boxes: np.ndarray,
        shape: tuple[int, int],
        parts: Sequence[np.ndarray | None] | None = None,
    ) -> None:
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        if len(crops) != len(boxes):
            raise ValueError(f"{len(crops)} crops for {len(boxes)} boxes")
        h, w = (int(v) for v in shape)
        if h <= 0 or w <= 0:
            raise ValueError(f"image shape must be positive, got {shape}")
        x1, y1, x2, y2 = boxes.T
        if ((x1 < 0) | (y1 < 0) | (x2 > w) | (y2 > h) | (x2 < x1) | (y2 < y1)).any():
            raise ValueError(f"mask boxes must lie inside the {h}x{w} image with x1 <= x2, y1 <= y2")
        for c, (bx1, by1, bx2, by2) in zip(crops, boxes.tolist()):
            if c.dtype != bool or c.shape != (by2 - by1, bx2 - bx1):
                raise ValueError(
                    f"a crop must be bool of its box's size {(by2 - by1, bx2 - bx1)}, got {c.dtype} {c.shape}"
                )
        if parts is not None and len(parts) != len(crops):
            raise ValueError(f"{len(parts)} part lists for {len(crops)} crops")
        self.crops: tuple[np.ndarray, ...] = tuple(crops)
        self.boxes = boxes
        self.image_shape: tuple[int, int] = (h, w)
        self._parts: list[np.ndarray | None] = list(parts) if parts is not None else [None] * len(self.crops)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Pickles from before parts existed: found again on first use.
        self.__dict__.update(state)
        if "_parts" not in state:
            self._parts = [None] * len(self.crops)

    def part_boxes(self, i: int) -> np.ndarray:
        """Instance ``i``'s separated part boxes: (k, 4) int64 xyxy in the image, each tight, any two at least one
        empty row or column apart, together holding every pixel of the mask ((0, 4) for an empty mask)."""
        found = self._parts[i]
        if found is None:
            crop, (x1, y1, _, _) = self.crop(i)
            found = self._parts[i] = split_parts(crop, (x1, y1))
        return found

    @property
    def shape(self) -> tuple[int, int, int]:
        """(N, H, W), the shape of ``dense()``."""
        return (len(self.crops), *self.image_shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(bool)

    @property
    def ndim(self) -> int:
        return 3

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> CropMasks:
        """No instances on an image of ``shape`` (H, W)."""
        return cls((), np.zeros((0, 4), np.int64), shape)

    @classmethod
    def from_dense(cls, masks: np.ndarray) -> CropMasks:
        """(N, H, W) bool masks -> their tight boxes and crops (copies: the dense array may be freed)."""
        if masks.ndim != 3 or masks.dtype != bool:
            raise ValueError(f"masks must be (N, H, W) bool, got {masks.dtype} {masks.shape}")
        rows, cols = masks.any(axis=2), masks.any(axis=1)  # (N, H), (N, W)
        boxes = np.zeros((masks.shape[0], 4), np.int64)
        crops = []
        for i in range(masks.shape[0]):
            ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
            if ys.size:
                boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
            x1, y1, x2, y2 = boxes[i].tolist()
            crops.append(masks[i, y1:y2, x1:x2].copy())
        return cls(crops, boxes, masks.shape[1:])

    @classmethod
    def from_rle(cls, rles: Sequence[dict[str, Any]], shape: tuple[int, int]) -> CropMasks:
        """COCO RLEs ({"size": [H, W], "counts": bytes or str}, compressed) -> crops, without whole-image masks."""
        h, w = (int(v) for v in shape)
        crops, boxes = [], np.zeros((len(rles), 4), np.int64)
        for i, rle in enumerate(rles):
            if [int(v) for v in rle["size"]] != [h, w]:
                raise ValueError(f"RLE of size {rle['size']} for an image of {h}x{w}")
            counts = rle["counts"]
            crop, boxes[i] = _crop_from_counts(
                rle_decode_counts(counts.encode() if isinstance(counts, str) else counts), h, w
            )
            crops.append(crop)
        return cls(crops, boxes, (h, w))

    @staticmethod
    def concatenate(parts: Sequence[CropMasks]) -> CropMasks:
        """The instances of several ``CropMasks`` of one image size, in order."""
        if not parts:
            raise ValueError("nothing to concatenate")
        if len({p.image_shape for p in parts}) != 1:
            raise ValueError(f"image shapes differ: {sorted({p.image_shape for p in parts})}")
        crops = [c for p in parts for c in p.crops]
        found = [b for p in parts for b in p._parts]
        return CropMasks(crops, np.concatenate([p.boxes for p in parts]), parts[0].image_shape, found)

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, index: Index) -> CropMasks:
        """The selected instances; like ``Results``, an int keeps a length-1 ``CropMasks``."""
        if isinstance(index, (int, np.integer)):
            i = int(index)
            if not -len(self) <= i < len(self):
                raise IndexError(f"instance index {i} out of range for {len(self)} instances")
            index = slice(i % len(self), i % len(self) + 1)
        picked = np.arange(len(self))[index].tolist()  # numpy checks bool shapes and int bounds
        return CropMasks(
            [self.crops[i] for i in picked], self.boxes[picked], self.image_shape, [self._parts[i] for i in picked]
        )

    def __repr__(self) -> str:
        return (
            f"CropMasks(n={len(self)}, image_shape={self.image_shape}, crop_pixels={sum(c.size for c in self.crops)})"
        )

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """``np.asarray(crop_masks)`` is the dense (N, H, W) bool array (built anew each time)."""
        return self.dense() if dtype is None else self.dense().astype(dtype)

    def dense(self) -> np.ndarray:
        """(N, H, W) bool whole-image masks (N * H * W bytes)."""
        out = np.zeros((len(self), *self.image_shape), bool)
        for i, (c, (x1, y1, x2, y2)) in enumerate(zip(self.crops, self.boxes.tolist())):
            out[i, y1:y2, x1:x2] = c
        return out

    def crop(self, i: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """Instance ``i``: its (y2 - y1, x2 - x1) bool crop (not a copy) and its box (x1, y1, x2, y2)."""
        x1, y1, x2, y2 = self.boxes[i].tolist()
        return self.crops[i], (x1, y1, x2, y2)

    def region(self, i: int, box: Sequence[float]) -> np.ndarray:
        """Instance ``i``'s mask inside any ``box`` (x1, y1, x2, y2) of the image: (y2 - y1, x2 - x1) bool.

        The crop itself (not a copy) when ``box`` is the mask's box; else a new array, False outside the mask's box.
        """
        x1, y1, x2, y2 = (int(v) for v in box)
        crop, (cx1, cy1, cx2, cy2) = self.crop(i)
        if (x1, y1, x2, y2) == (cx1, cy1, cx2, cy2):
            return crop
        out = np.zeros((max(y2 - y1, 0), max(x2 - x1, 0)), bool)
        ix1, iy1, ix2, iy2 = max(x1, cx1), max(y1, cy1), min(x2, cx2), min(y2, cy2)
        if ix2 > ix1 and iy2 > iy1:
            out[iy1 - y1 : iy2 - y1, ix1 - x1 : ix2 - x1] = crop[iy1 - cy1 : iy2 - cy1, ix1 - cx1 : ix2 - cx1]
        return out

    def areas(self) -> np.ndarray:
        """(N,) int64 pixel count of each mask."""
        return np.array([np.count_nonzero(c) for c in self.crops], np.int64)

    def iou(self, other: CropMasks) -> np.ndarray:
        """(N, M) float64 mask IoU of these instances against ``other``'s (same image size).

        Only pairs whose boxes overlap are counted, inside the boxes' intersection; 0 for two empty masks.
        """
        if other.image_shape != self.image_shape:
            raise ValueError(f"image shapes differ: {self.image_shape} and {other.image_shape}")
        a_areas, b_areas = self.areas(), other.areas()
        out = np.zeros((len(self), len(other)))
        lt = np.maximum(self.boxes[:, None, :2], other.boxes[None, :, :2])
        rb = np.minimum(self.boxes[:, None, 2:], other.boxes[None, :, 2:])
        for i, j in zip(*np.nonzero((rb > lt).all(-1))):
            inter = self.intersection(int(i), other, int(j))
            out[i, j] = inter / (a_areas[i] + b_areas[j] - inter)
        return out

    def intersection(self, i: int, other: CropMasks, j: int) -> int:
        """Pixels shared by instance ``i`` and ``other``'s instance ``j``, counted in their boxes' overlap."""
        (a, (ax1, ay1, ax2, ay2)), (b, (bx1, by1, bx2, by2)) = self.crop(i), other.crop(j)
        x1, y1, x2, y2 = max(ax1, bx1), max(ay1, by1), min(ax2, bx2), min(ay2, by2)
        if x2 <= x1 or y2 <= y1:
            return 0
        sub_a = a[y1 - ay1 : y2 - ay1, x1 - ax1 : x2 - ax1]
        return int(np.count_nonzero(sub_a & b[y1 - by1 : y2 - by1, x1 - bx1 : x2 - bx1]))

    def to_rle(self) -> list[dict[str, Any]]:
        """COCO compressed RLEs of the whole-image masks, ``{"size": [H, W], "counts": bytes}`` each.

        Byte-identical to ``pycocotools.mask.encode`` of the dense masks; the work is proportional to the parts'
        boxes (``part_boxes``), done once per distinct crop (a query kept with several classes shares its crop).
        """
        if not len(self):
            return []
        h, w = self.image_shape
        index: dict[int, int] = {}  # id of a crop -> its position in ``objs`` (the crops are alive meanwhile)
        objs, which = [], []
        for i, c in enumerate(self.crops):
            if id(c) not in index:
                index[id(c)] = len(objs)
                counts = rle_counts(c, self.boxes[i], self.image_shape, self.part_boxes(i))
                objs.append({"size": [h, w], "counts": counts.tolist()})
            which.append(index[id(c)])
        encoded = mask_utils.frPyObjects(objs, h, w)  # uncompressed counts in, pycocotools' compressed string out
        return [dict(encoded[k]) for k in which]


def rle_counts(
    crop: np.ndarray, box: Sequence[int], shape: tuple[int, int], parts: np.ndarray | None = None
) -> np.ndarray:
    """Uncompressed COCO run lengths of a whole (H, W) image whose only pixels are ``crop`` at ``box``: (R,) int64.

    COCO RLE reads the image column by column (Fortran order) and starts with a run of zeros (0 when the first
    pixel is set). Runs change only inside the mask's separated ``parts`` (``CropMasks.part_boxes``; the whole box
    if not given), and never across two of them (an empty row or column lies between): ``_run_edges`` finds the
    changes in each part, their positions in the whole image are merged in order and turned into run lengths.
    """
    h, w = shape
    x1, y1 = int(box[0]), int(box[1])
    if parts is None:
        parts = np.array([[x1, y1, x1 + crop.shape[1], y1 + crop.shape[0]]], np.int64)
    edges = [_run_edges(crop[py1 - y1 : py2 - y1, px1 - x1 : px2 - x1], px1, py1, h) for px1, py1, px2, py2 in
             parts.tolist()]  # fmt: skip
    pos = np.sort(np.concatenate(edges)) if len(edges) > 1 else (edges[0] if edges else np.zeros(0, np.int64))
    # A run of ones that ends at the bottom of one column and restarts at the top of the next (a box as tall as the
    # image) is one run in the whole image: drop the empty run of zeros between them.
    join = np.flatnonzero(pos[1:-1:2] == pos[2::2])
    if join.size:
        pos = np.delete(pos, np.concatenate([2 * join + 1, 2 * join + 2]))
    counts = np.diff(np.concatenate([[0], pos, [h * w]]))
    return counts[:-1] if counts.size > 1 and counts[-1] == 0 else counts


def _run_edges(sub: np.ndarray, x1: int, y1: int, h: int) -> np.ndarray:
    """(R,) int64 positions in an image of height ``h``, read in Fortran order, where runs of ``sub``'s pixels
    (bool, at (x1, y1)) start and end (exclusive), alternately, in increasing order.

    Each column is padded with one zero above and below and the changes found down the columns in the crop's own
    (row-major) layout, which is ~10x faster than transposing it; only the few changes are then sorted by column.
    """
    hb, wb = sub.shape
    padded = np.zeros((hb + 2, wb), bool)
    padded[1:-1] = sub
    row, col = np.divmod(np.flatnonzero(padded[1:] != padded[:-1]), wb)  # change between rows row - 1 and row
    key = col * (hb + 1) + row
    key.sort()
    col, row = np.divmod(key, hb + 1)
    return (x1 + col) * h + y1 + row


def rle_decode_counts(counts: bytes) -> np.ndarray:
    """COCO's compressed RLE string -> uncompressed run lengths (R,) int64, as ``maskApi.c``'s ``rleFrString``.

    Each value is written in 5-bit groups, least significant first, with 0x20 meaning "more groups follow" and 0x10
    in the last group the sign; from the third value on, a value is the difference to the value two places back.
    """
    c = np.frombuffer(counts, np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, np.int64)
    if (c < 0).any() or (c > 63).any() or c[-1] & 0x20:
        raise ValueError("not a COCO compressed RLE string")
    last = (c & 0x20) == 0  # the last group of each value
    starts = np.concatenate([[0], np.flatnonzero(last)[:-1] + 1])
    group = np.cumsum(np.concatenate([[0], last[:-1]]))  # value index of each character
    k = np.arange(c.size) - starts[group]  # position of the group within its value
    values = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    ends = np.flatnonzero(last)
    negative = (c[ends] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * (k[ends][negative] + 1))  # x |= -1 << 5k on the value's bits
    out = values.copy()
    out[1::2] = np.cumsum(values[1::2])  # odd values are deltas to two places back, from the fourth one
    out[2::2] = np.cumsum(values[2::2])  # even values from the third one
    return out


def _crop_from_counts(counts: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths of an (H, W) image -> (crop bool, box (4,) int64), painting only the columns of the box."""
    if (counts < 0).any() or counts.sum() != h * w:
        raise ValueError(f"RLE run lengths must be >= 0 and add up to {h}x{w} = {h * w}, got {counts.sum()}")
    bounds = np.cumsum(counts)
    starts, ends = bounds[0:-1:2], bounds[1::2]  # runs of ones: [starts[k], ends[k])
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    if starts.size == 0:
        return np.zeros((0, 0), bool), np.zeros(4, np.int64)
    x1, x2 = int(starts[0] // h), int((ends[-1] - 1) // h + 1)
    delta = np.zeros((x2 - x1) * h + 1, np.int32)
    np.add.at(delta, starts - x1 * h, 1)
    np.add.at(delta, ends - x1 * h, -1)
    band = np.cumsum(delta[:-1]).astype(bool).reshape(x2 - x1, h).T  # (H, x2 - x1), the columns of the box
    ys = np.flatnonzero(band.any(axis=1))
    y1, y2 = int(ys[0]), int(ys[-1] + 1)
    return np.ascontiguousarray(band[y1:y2]), np.array([x1, y1, x2, y2], np.int64)
