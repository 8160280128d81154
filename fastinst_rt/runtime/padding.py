"""What a static graph does with an image of another aspect ratio, said where a user looks (``info``, ``bench``).

A static export takes one padded input size; an image whose resized size is smaller is padded bottom/right up to
it, further than the official model's padding to /32. Exports from this version mask that extra padding
(``fastinst_rt.export.padding``), so they give the dynamic graph's instances; older static exports (or ones made
with ``mask_padding=False``) do not, and their instances differ on other aspect ratios (benchmarks/README.md,
result 12). Torch-free: the ONNX Runtime and TensorRT backends use it.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..artifact import ArtifactMeta

__all__ = ["static_padding_note", "padding_caveat"]

# Measured on fastinst-demo (benchmarks/README.md, result 12).
_UNMASKED_COST = (
    "the same instances on 0 of 36 held-out images of three other aspect ratios, 16 instances for 9 on a square photo"
)


def static_padding_note(size: Sequence[int], components: Sequence[str]) -> dict:
    """The ``padding`` metadata entry of a static export of input ``size`` (H, W) masking ``components``."""
    return {"pads_to": [int(size[0]), int(size[1])], "masked": bool(components), "components": list(components)}


def padding_caveat(meta: ArtifactMeta) -> str | None:
    """One line for a static graph (None for a dynamic one): the size it pads to and whether it masks the extra
    padding of images of another aspect ratio."""
    if meta.fixed_size is None:
        return None
    h, w = meta.fixed_size
    entry = meta.extra.get("padding")
    masked = isinstance(entry, dict) and entry.get("masked") is True
    head = (f"static {h}x{w} input: an image of another aspect ratio is resized to fit and padded bottom/right to "
            f"{h}x{w}, beyond the official padding to /32")  # fmt: skip
    if masked:
        return head + "; the graph masks that extra padding, so it gives the dynamic graph's instances"
    return (head + "; this graph does NOT mask it, so its instances differ from the dynamic graph's on such images "
            f"(fastinst-demo: {_UNMASKED_COST}); re-export with this fastinst-rt or use --dynamic")  # fmt: skip
