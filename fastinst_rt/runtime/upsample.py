"""The official two-step mask upsampling (``postprocess.upsample_mask_logits``) computed on a window of the output.

Bilinear interpolation is local: an output pixel is a convex combination of its 2x2 nearest source pixels, so it
can be > 0 only if one of them is. The first resize (to the padded input, 1/64 of whose pixels the low-resolution
map has) is cv2's, on the whole map; the positives of its result, followed through the second resize, give
separated windows of the original-size image (one per distant part of the mask) outside which every logit is <= 0;
only those windows are computed.

cv2.resize cannot compute a window (its sampling positions are fixed by the whole image), so the window is
interpolated here in numpy with the arithmetic of cv2's float32 one-channel INTER_LINEAR path in this OpenCV build
(IPP), found by experiment and checked bit for bit in tests/test_mask_crops.py: the source coordinate
(x + 0.5) * src / dst - 0.5 in float64, clamped at the borders, its fraction f rounded to float32; a horizontal
pass over the source rows, then a vertical pass; each value v0 + f * (v1 - v0) rounded once (a fused multiply-add:
the float32 product is exact in float64, so adding in float64 and rounding to float32 gives it). ``exact()`` checks
that on probe maps once per process; where it fails (another OpenCV build or CPU), or for a source one pixel wide
(which OpenCV resizes on another path), the window is cut from cv2's whole-image result instead: the same values
as before, at the old cost.
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

from .parts import merge_separated, split_parts

__all__ = ["MAX_WINDOW", "exact", "first_resize", "part_windows", "upsample_parts", "windowable"]

Window = tuple[int, int, int, int]  # x1, y1, x2, y2 (exclusive)

#: Largest window, as a fraction of the image, computed here rather than by cv2 on the whole map.
MAX_WINDOW = 0.15

#: The vertical pass is cv2's (``_vertical_cv2``) when it computes fewer than this many rows per window row: it
#: costs ~1/7 of the numpy pass per pixel (measured, float32 1080p) but computes every row above the window too.
CV2_VERTICAL = 6


@lru_cache(maxsize=64)
def _axis(n_src: int, n_dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sampling of one axis resized from n_src to n_dst: (n_dst,) int64 source index s0 and s1 (the next, clamped),
    (n_dst,) weight of s1 as cv2/IPP computes it (a float32 value, held in float64 for ``_lerp``)."""
    x = (np.arange(n_dst, dtype=np.float64) + 0.5) * (n_src / n_dst) - 0.5
    s0 = np.floor(x).astype(np.int64)
    f = (x - s0).astype(np.float32)
    outside = (s0 < 0) | (s0 >= n_src - 1)  # replicated border: the edge pixel alone
    f[outside] = 0.0
    s0 = np.clip(s0, 0, n_src - 1)
    s1 = np.minimum(s0 + 1, n_src - 1)
    f = f.astype(np.float64)
    for a in (s0, s1, f):
        a.flags.writeable = False  # cached and shared
    return s0, s1, f


def _lerp(v0: np.ndarray, v1: np.ndarray, f: np.ndarray) -> np.ndarray:
    """float32 v0 + f * (v1 - v0) with a single rounding of the multiply-add (v1 - v0 rounded first, as IPP).

    v0, v1 float32; f float64 holding float32 values, broadcast against them."""
    t = np.multiply(f, v1 - v0)  # float64: the product of two float32 values is exact
    t += v0
    return t.astype(np.float32)


def _resize_window(
    src: np.ndarray,
    origin: tuple[int, int],
    src_shape: tuple[int, int],
    dst_shape: tuple[int, int],
    window: Window,
    vertical: str = "auto",
) -> np.ndarray:
    """The part ``window`` of a bilinear resize of a ``src_shape`` map to ``dst_shape``: (y2 - y1, x2 - x1) float32.

    ``src`` is the part of the map whose top-left pixel is ``origin`` (row, column) in it, and must hold every
    source pixel the window reads. The values are those of the whole-map resize (cv2's, see the module docstring).
    ``vertical``: "auto" (the cheaper pass, ``CV2_VERTICAL``), "numpy" or "cv2" (``_vertical_cv2``, where it
    applies: a window at least 2 wide and a vertical resize), for the checks.
    """
    x1, y1, x2, y2 = window
    ys0, ys1, fy = (a[y1:y2] for a in _axis(src_shape[0], dst_shape[0]))
    xs0, xs1, fx = (a[x1:x2] for a in _axis(src_shape[1], dst_shape[1]))
    r0, c0 = origin
    if tuple(src_shape) == tuple(dst_shape):  # cv2 is not called on an equal size (``postprocess._resize``)
        return src[y1 - r0 : y2 - r0, x1 - c0 : x2 - c0]
    if y2 <= y1 or x2 <= x1:
        return np.zeros((max(y2 - y1, 0), max(x2 - x1, 0)), np.float32)
    # The vertical pass reads source rows ys0[0] .. ys1[-1] only (both are non-decreasing): interpolate those.
    needed = src[ys0[0] - r0 : ys1[-1] - r0 + 1]
    horizontal = _lerp(needed[:, xs0 - c0], needed[:, xs1 - c0], fx[None, :])  # (rows, x2 - x1) float32
    n_src, n_dst = src_shape[0], dst_shape[0]
    cheaper = _cv2_rows(n_src, n_dst, int(ys1[-1]) + 1) < CV2_VERTICAL * (y2 - y1)
    if x2 - x1 >= 2 and n_src != n_dst and vertical != "numpy" and (cheaper or vertical == "cv2"):
        return _vertical_cv2(horizontal, int(ys0[0]), n_src, n_dst)[y1:y2]
    return _vertical(horizontal, ys0 - ys0[0], fy)


def _cut(n_src: int, n_dst: int, rows_read: int) -> int:
    """The fewest source rows, >= ``rows_read`` + 1, whose resize keeps cv2's scale exactly: a multiple of the
    period n_src / gcd (the destination is then a whole number of rows, n_dst / gcd per period), or all."""
    period = n_src // math.gcd(n_src, n_dst)
    return min(n_src, -(-(rows_read + 1) // period) * period)


def _cv2_rows(n_src: int, n_dst: int, rows_read: int) -> int:
    """Destination rows that ``_vertical_cv2`` computes when the window reads source rows < ``rows_read``."""
    return _cut(n_src, n_dst, rows_read) * n_dst // n_src


def _vertical_cv2(horizontal: np.ndarray, a0: int, n_src: int, n_dst: int) -> np.ndarray:
    """The vertical pass by cv2 itself: ``horizontal`` (rows a0.. of the horizontally resized map, (r, w) float32,
    w >= 2) resized from ``n_src`` to ``n_dst`` rows: (``_cv2_rows``, w) float32, the whole-map values at every row
    that reads only the given rows.

    A resize to the same width leaves the columns as they are (weight 0), and the vertical pass of a destination
    row depends only on its two source rows and its position: so the rows above a0 may be zeros, and the map may be
    cut below the rows read where the scale stays the same exactly (``_cut``). cv2 does this ~7x faster per pixel
    than the numpy pass, over more rows (all those above the window): ``CV2_VERTICAL`` chooses. Checked against the
    whole-map resize by ``exact``.
    """
    cut = _cut(n_src, n_dst, a0 + horizontal.shape[0])
    full = np.zeros((cut, horizontal.shape[1]), np.float32)
    full[a0 : a0 + horizontal.shape[0]] = horizontal
    return cv2.resize(full, (horizontal.shape[1], cut * n_dst // n_src), interpolation=cv2.INTER_LINEAR)


def _vertical(rows: np.ndarray, s0: np.ndarray, f: np.ndarray) -> np.ndarray:
    """The vertical pass: output row i is ``_lerp(rows[s0[i]], rows[s0[i] + 1], f[i])``: (len(s0), w) float32.

    Row s0 + 1 is the next source row except where the source is clamped, and there f is 0 (the row alone), so
    the difference to the next row is taken once per source row (where cv2 takes it, in float32) and gathered by
    row; the product and the sum stay in float64 as in ``_lerp``. ~1.5x faster than two gathers and ``_lerp``.
    """
    diff = np.zeros(rows.shape, np.float64)  # last row 0: its f is 0 (clamped) and 0 * 0 adds nothing
    np.subtract(rows[1:], rows[:-1], out=diff[:-1], dtype=np.float32)  # rounded to float32, exact in float64
    out = np.take(diff, s0, axis=0)
    out *= f[:, None]  # exact: float32 x float32 fits a float64
    out += np.take(rows, s0, axis=0)  # the one rounding of the multiply-add, then to float32 below
    return out.astype(np.float32)


def windowable(low_shape: tuple[int, int], resized_size: tuple[int, int]) -> bool:
    """Whether ``upsample_parts`` gives cv2's values here: OpenCV resizes a source 1 pixel wide or high on another
    path than the one emulated, and ``exact`` must hold for this OpenCV build."""
    return min(*low_shape, *resized_size) >= 2 and exact()


def first_resize(low: np.ndarray, resized_size: tuple[int, int], padded_size: tuple[int, int]) -> np.ndarray:
    """The first step of ``postprocess.upsample_mask_logits`` for one (h, w) map: (h_r, w_r) float32.

    The same cv2 call on the same cut of the map (only the rows and columns the crop to ``resized_size`` reads,
    with an integer factor), so the same values; the map is small (1/8 of the input), so this whole-map call costs
    ~50 us at a 576 input.
    """
    h, w = low.shape
    (hr, wr), (hp, wp) = resized_size, padded_size
    if hp % h == 0 and wp % w == 0:
        fy, fx = hp // h, wp // w
        h = min(h, max(2, int(np.floor((hr - 0.5) / fy - 0.5)) + 2))
        w = min(w, max(2, int(np.floor((wr - 0.5) / fx - 0.5)) + 2))
        low, hp, wp = low[:h, :w], h * fy, w * fx
    up = np.ascontiguousarray(low, dtype=np.float32)
    if up.shape != (hp, wp):
        up = cv2.resize(up, (wp, hp), interpolation=cv2.INTER_LINEAR)
    return up[:hr, :wr]


@lru_cache(maxsize=64)
def _first_reader(n_src: int, n_dst: int) -> np.ndarray:
    """(n_src + 1,) int64: entry i is the first destination index whose first source index (s0) is >= i, so the
    destination indices reading source i as s0 are [entry i, entry i + 1) (s0 is non-decreasing)."""
    out = np.searchsorted(_axis(n_src, n_dst)[0], np.arange(n_src + 1), side="left")
    out.flags.writeable = False
    return out


def part_windows(up: np.ndarray, orig_size: tuple[int, int]) -> np.ndarray:
    """Separated windows of the (H, W) output outside which the second resize of ``up`` is <= 0: (k, 4) int64.

    An output pixel interpolates source pixels (s0, s0 + 1) in each axis (s0 + 1 with weight 0 where clamped),
    a convex combination, so it can be > 0 only if one of its 2x2 sources is. Each separated box of the sources
    that have a positive at (s0, s0 + 1) (``parts.split_parts``) gives the output rows and columns reading it as
    s0; the windows are merged until separated (``parts.merge_separated``), so each holds whole parts of the mask.
    """
    positive = up > 0
    reach = positive.copy()
    reach[:-1] |= positive[1:]  # source row s0 reads row s0 + 1 too
    reach[:, :-1] |= reach[:, 1:].copy()
    # Separated boxes of the sources by row/column cuts: a few numpy scans of this small map (1/64 of the input's
    # pixels at the x8 step) cost less than cv2's connected components (thread start-up), and suffice here.
    found = split_parts(reach, (0, 0))
    if not len(found):
        return found
    rows, cols = _first_reader(up.shape[0], orig_size[0]), _first_reader(up.shape[1], orig_size[1])
    boxes = np.stack([cols[found[:, 0]], rows[found[:, 1]], cols[found[:, 2]], rows[found[:, 3]]], axis=1)
    return merge_separated(boxes)  # output windows may touch (or be empty when downsampling)


def upsample_parts(up: np.ndarray, orig_size: tuple[int, int]) -> list[tuple[Window, np.ndarray]] | None:
    """The second step of ``postprocess.upsample_mask_logits`` on the windows that can be > 0, computed alone.

    Args:
        up: (h_r, w_r) float32, ``first_resize``'s map; orig_size: (H, W).
    Returns:
        [(window, logits)]: each separated window (x1, y1, x2, y2) of ``part_windows`` with the (y2 - y1, x2 - x1)
        float32 logits of the whole-map resize there (when ``windowable`` holds); every logit outside is <= 0.
        [] when none can be > 0. None when the windows add up to over ``MAX_WINDOW`` of the image: cv2 on the
        whole map is then faster than this per-pixel numpy (~6x cv2's time per pixel, measured).
    """
    windows = part_windows(up, orig_size)
    area = int(((windows[:, 2] - windows[:, 0]) * (windows[:, 3] - windows[:, 1])).sum())
    if area > MAX_WINDOW * orig_size[0] * orig_size[1]:
        return None
    return [(w, _resize_window(up, (0, 0), up.shape, orig_size, w)) for w in map(tuple, windows.tolist())]


@lru_cache(maxsize=1)
def exact() -> bool:
    """Whether this OpenCV's float32 INTER_LINEAR resize has the arithmetic emulated here, on probe maps that
    upsample, downsample and mix the two (checked once per process, ~1 ms)."""
    rng = np.random.default_rng(0)
    for src, dst in [((9, 13), (72, 104)), ((40, 60), (301, 451)), ((67, 101), (45, 151)), ((50, 70), (50, 23))]:
        low = (rng.normal(size=src) * 8).astype(np.float32)
        ref = cv2.resize(low, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
        if not np.array_equal(_resize_window(low, (0, 0), src, dst, (0, 0, dst[1], dst[0])), ref):
            return False
        # A window in the middle by each vertical pass (cv2's reads rows below zeros, cut at a period).
        mid = (dst[1] // 4, dst[0] // 3, dst[1] // 2 + 1, 2 * dst[0] // 3 + 1)
        for vertical in ("numpy", "cv2"):
            got = _resize_window(low, (0, 0), src, dst, mid, vertical=vertical)
            if not np.array_equal(got, ref[mid[1] : mid[3], mid[0] : mid[2]]):
                return False
    return True
