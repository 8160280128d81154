"""The official two-step mask upsampling (``postprocess.upsample_mask_logits``) computed on a window of the output.

Bilinear interpolation is local: an output pixel is a convex combination of its 2x2 nearest source pixels, so it
can be > 0 only if one of them is. Following each row and column of the low-resolution logits through both resizes
gives a window of the original-size image outside which every logit is <= 0; only that window is computed.

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

from functools import lru_cache

import cv2
import numpy as np

__all__ = ["MAX_WINDOW", "exact", "positive_window", "windowable"]

Window = tuple[int, int, int, int]  # x1, y1, x2, y2 (exclusive)

#: Largest window, as a fraction of the image, computed here rather than by cv2 on the whole map.
MAX_WINDOW = 0.15


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
    src: np.ndarray, origin: tuple[int, int], src_shape: tuple[int, int], dst_shape: tuple[int, int], window: Window
) -> np.ndarray:
    """The part ``window`` of a bilinear resize of a ``src_shape`` map to ``dst_shape``: (y2 - y1, x2 - x1) float32.

    ``src`` is the part of the map whose top-left pixel is ``origin`` (row, column) in it, and must hold every
    source pixel the window reads. The values are those of the whole-map resize (cv2's, see the module docstring).
    """
    x1, y1, x2, y2 = window
    ys0, ys1, fy = (a[y1:y2] for a in _axis(src_shape[0], dst_shape[0]))
    xs0, xs1, fx = (a[x1:x2] for a in _axis(src_shape[1], dst_shape[1]))
    r0, c0 = origin
    if tuple(src_shape) == tuple(dst_shape):  # cv2 is not called on an equal size (``postprocess._resize``)
        return src[y1 - r0 : y2 - r0, x1 - c0 : x2 - c0]
    # The vertical pass reads source rows ys0[0] .. ys1[-1] only (both are non-decreasing): interpolate those.
    needed = src[ys0[0] - r0 : ys1[-1] - r0 + 1]
    horizontal = _lerp(needed[:, xs0 - c0], needed[:, xs1 - c0], fx[None, :])
    return _lerp(horizontal[ys0 - ys0[0]], horizontal[ys1 - ys0[0]], fy[:, None])


def _reach(positive: np.ndarray, n_padded: int, n_resized: int, n_orig: int) -> tuple[int, int, int, int, int, int]:
    """One axis: which original-size indices can be > 0, given which low-resolution indices hold a logit > 0.

    Args:
        positive: (n,) bool, low-resolution rows (or columns) with a logit > 0.
        n_padded, n_resized, n_orig: the axis' size after the first resize, after the crop, after the second.
    Returns:
        (o0, o1, u0, u1, l0, l1): the original-size range [o0, o1) outside which every value is <= 0, the range of
        the cropped first resize it reads, and the low-resolution range that one reads; o0 == o1 when none can be.
    """
    s0u, s1u, _ = (a[:n_resized] for a in _axis(positive.size, n_padded))
    s0o, s1o, _ = _axis(n_resized, n_orig)
    # An interpolated value is a convex combination of its two source values (per axis): <= 0 if both are.
    up = positive[s0u] | positive[s1u]
    hit = np.flatnonzero(up[s0o] | up[s1o])
    if hit.size == 0:
        return 0, 0, 0, 0, 0, 0
    o0, o1 = int(hit[0]), int(hit[-1]) + 1
    u0, u1 = int(s0o[o0]), int(s1o[o1 - 1]) + 1
    return o0, o1, u0, u1, int(s0u[u0]), int(s1u[u1 - 1]) + 1


def windowable(low_shape: tuple[int, int], resized_size: tuple[int, int]) -> bool:
    """Whether ``positive_window`` gives cv2's values here: OpenCV resizes a source 1 pixel wide or high on another
    path than the one emulated, and ``exact`` must hold for this OpenCV build."""
    return min(*low_shape, *resized_size) >= 2 and exact()


def positive_window(
    low: np.ndarray, resized_size: tuple[int, int], padded_size: tuple[int, int], orig_size: tuple[int, int]
) -> tuple[Window, np.ndarray] | None:
    """The part of ``upsample_mask_logits`` that can be > 0, computed alone.

    Args:
        low: (h, w) float32 mask logits of one query; sizes as in ``postprocess.upsample_mask_logits``.
    Returns:
        ``(window, logits)``: window (x1, y1, x2, y2) of the (H, W) original size outside which every upsampled
        logit is <= 0, and the upsampled (y2 - y1, x2 - x1) float32 logits inside it, equal to those of
        ``upsample_mask_logits`` there when ``windowable`` holds. An empty window when no logit can be > 0. None
        when the window is over ``MAX_WINDOW`` of the image (a mask of scattered parts): cv2 on the whole map is
        then faster than this per-pixel numpy (~5x cv2's time per pixel, measured).
    """
    positive = low > 0
    (hp, wp), (hr, wr), (H, W) = padded_size, resized_size, orig_size
    y0, y1, uy0, uy1, ly0, ly1 = _reach(positive.any(axis=1), hp, hr, H)
    x0, x1, ux0, ux1, lx0, lx1 = _reach(positive.any(axis=0), wp, wr, W)
    if y0 == y1 or x0 == x1:
        return (0, 0, 0, 0), np.zeros((0, 0), np.float32)
    if (y1 - y0) * (x1 - x0) > MAX_WINDOW * H * W:
        return None
    up = _resize_window(low[ly0:ly1, lx0:lx1], (ly0, lx0), low.shape, (hp, wp), (ux0, uy0, ux1, uy1))
    return (x0, y0, x1, y1), _resize_window(up, (uy0, ux0), (hr, wr), (H, W), (x0, y0, x1, y1))


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
    return True
