"""One image's instances, as every backend returns them: masks, scores, labels, boxes, and ways to use them.

Numpy/cv2/pycocotools only, so results from the ONNX Runtime and TensorRT backends need no torch.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Union

import cv2
import numpy as np

from .masks import CropMasks
from .polygons import DEFAULT_TOLERANCE, Part, coco_polygon_records, instance_polygons, yolo_lines

if TYPE_CHECKING:
    from .sources import Frame

__all__ = ["Results"]

Index = Union[int, slice, Sequence[int], np.ndarray]


class Results:
    """The instances found in one image.

    Attributes:
        masks: (N, H, W) bool, at the original image size: built from ``crop_masks`` on first access and kept.
        crop_masks: the same masks as a ``CropMasks`` (each mask's tight box and the bool pixels inside it), what
            the results hold: indexing, ``filter``, pickling, ``to_coco``, ``draw``, ``areas`` and the tracker use it
            and never build the whole-image masks.
        scores: (N,) float32, class probability x mask score.
        labels: (N,) int64, indices into ``class_names``.
        boxes: (N, 4) float32 xyxy pixel-edge boxes (x2, y2 exclusive), the masks' tight boxes unless given.
        class_names: the model's class names, indexed by label.
        orig_shape: (H, W) of the image.
        track_ids: (N,) int64 persistent instance ids from a tracker (``Segmenter.track``), else None.
        frame: the source ``Frame`` (index, timestamp, name, RGB image) when the results come from a stream.
        speed: milliseconds per stage (e.g. ``{"preprocess": 1.2, "inference": 8.0, "postprocess": 3.1}``).
    """

    def __init__(
        self,
        masks: np.ndarray | CropMasks,
        scores: np.ndarray,
        labels: np.ndarray,
        class_names: Sequence[str],
        boxes: np.ndarray | None = None,
        speed: dict[str, float] | None = None,
        track_ids: np.ndarray | None = None,
    ) -> None:
        dense = None
        if not isinstance(masks, CropMasks):
            dense = np.asarray(masks)
            masks = CropMasks.from_dense(dense)  # refuses anything but (N, H, W) bool
        scores, labels = np.asarray(scores), np.asarray(labels)
        n = len(masks)
        if scores.shape != (n,) or not np.issubdtype(scores.dtype, np.floating):
            raise ValueError(f"scores must be ({n},) float to match masks, got {scores.dtype} {scores.shape}")
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be ({n},) integer to match masks, got {labels.dtype} {labels.shape}")
        self.class_names = list(class_names)
        if n and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise ValueError(f"labels must be in 0..{len(self.class_names) - 1}, got {labels.min()}..{labels.max()}")
        boxes = np.asarray(masks.boxes if boxes is None else boxes)
        if boxes.shape != (n, 4) or not np.issubdtype(boxes.dtype, np.number):
            raise ValueError(f"boxes must be ({n}, 4) xyxy, got {boxes.dtype} {boxes.shape}")
        self.crop_masks = masks
        self._dense = dense  # the caller's array, if given: no second copy on ``masks``
        self.scores = scores.astype(np.float32, copy=False)
        self.labels = labels.astype(np.int64, copy=False)
        self.boxes = boxes.astype(np.float32, copy=False)
        self.orig_shape: tuple[int, int] = masks.image_shape
        self.speed: dict[str, float] = dict(speed or {})
        if track_ids is not None:
            track_ids = np.asarray(track_ids)
            if track_ids.shape != (n,) or not np.issubdtype(track_ids.dtype, np.integer):
                raise ValueError(f"track_ids must be ({n},) integer, got {track_ids.dtype} {track_ids.shape}")
            track_ids = track_ids.astype(np.int64, copy=False)
        self.track_ids: np.ndarray | None = track_ids
        self.frame: Frame | None = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def masks(self) -> np.ndarray:
        """(N, H, W) bool whole-image masks, built from ``crop_masks`` on first access (N * H * W bytes) and kept."""
        if self._dense is None:
            self._dense = self.crop_masks.dense()
        return self._dense

    @property
    def areas(self) -> np.ndarray:
        """(N,) int64 pixels of each mask."""
        return self.crop_masks.areas()

    def __getstate__(self) -> dict[str, Any]:
        # Pickle the crops only: the dense masks are a cache, rebuilt on demand.
        return {**self.__dict__, "_dense": None}

    def __getitem__(self, index: Index) -> Results:
        """A new Results with the selected instances; an int index keeps a length-1 Results."""
        if isinstance(index, (int, np.integer)):
            i = int(index)
            if not -len(self) <= i < len(self):
                raise IndexError(f"instance index {i} out of range for {len(self)} instances")
            index = slice(i % len(self), i % len(self) + 1)
        elif not isinstance(index, slice):
            index = np.asarray(index)
            if index.dtype == bool and index.shape != (len(self),):
                raise IndexError(f"boolean index of shape {index.shape} for {len(self)} instances")
            if index.dtype != bool and not np.issubdtype(index.dtype, np.integer):
                raise IndexError(f"index must be int, slice, int array or bool array, got {index.dtype}")
        ids = None if self.track_ids is None else self.track_ids[index]
        out = Results(self.crop_masks[index], self.scores[index], self.labels[index], self.class_names,
                      self.boxes[index], self.speed, ids)  # fmt: skip
        out.frame = self.frame
        return out

    def __repr__(self) -> str:
        names = ", ".join(self.names[:5]) + (", ..." if len(self) > 5 else "")
        return f"Results(n={len(self)}, orig_shape={self.orig_shape}, names=[{names}])"

    @property
    def names(self) -> list[str]:
        """Class name of each instance, in order."""
        return [self.class_names[i] for i in self.labels.tolist()]

    def filter(self, conf: float) -> Results:
        """The instances with score >= ``conf``."""
        return self[self.scores >= conf]

    def to_coco(
        self, image_id: int, category_ids: Sequence[int] | None = None, segmentation: str = "rle",
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """COCO result dicts, JSON-serialisable, one per instance.

        Each has ``image_id``, ``category_id`` (``category_ids[label]`` if given, e.g. the 80 COCO ids for the
        contiguous labels 0..79, else the label), ``segmentation`` (compressed RLE, counts as str; with
        ``segmentation="polygon"``, COCO polygons ``[[x1, y1, ...], ...]`` of the outer contours simplified by
        ``tolerance`` pixels, see ``runtime.polygons``; an empty mask then has no record), ``score`` and ``bbox``
        as [x, y, w, h] floats.
        """
        if category_ids is not None and len(category_ids) != len(self.class_names):
            raise ValueError(f"{len(category_ids)} category_ids for {len(self.class_names)} classes")
        if segmentation not in ("rle", "polygon"):
            raise ValueError(f"segmentation must be 'rle' or 'polygon', got {segmentation!r}")
        if len(self) == 0:
            return []
        if segmentation == "polygon":
            ids = category_ids if category_ids is not None else range(len(self.class_names))
            return coco_polygon_records(self.crop_masks, self.scores, self.labels, self.boxes, image_id, ids, tolerance)
        rles = self.crop_masks.to_rle()  # byte-identical to pycocotools' encode of the dense masks
        out = []
        for rle, score, label, (x1, y1, x2, y2) in zip(rles, self.scores.tolist(), self.labels.tolist(), self.boxes):
            out.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_ids[label]) if category_ids is not None else int(label),
                    "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
                    "score": float(score),
                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                }
            )
        return out

    def polygons(self, tolerance: float = DEFAULT_TOLERANCE) -> list[list[Part]]:
        """Per instance, its parts (``runtime.polygons.Part``: outer contour (K, 2) float32 x, y and the holes inside
        it) in image coordinates, from the crops; ``tolerance``: ``cv2.approxPolyDP`` epsilon in pixels (0: exact)."""
        return [instance_polygons(*self.crop_masks.crop(i), tolerance) for i in range(len(self))]

    def to_yolo(self, tolerance: float = DEFAULT_TOLERANCE) -> list[str]:
        """YOLO-seg label lines, ``class x1 y1 x2 y2 ...`` normalized to [0, 1], one per polygon part."""
        return yolo_lines(self.crop_masks, self.labels, tolerance)

    def to_supervision(self) -> Any:
        """A ``supervision.Detections`` (xyxy, mask as a ``CompactMask`` built from the crops, confidence, class_id,
        tracker_id, ``data["class_name"]``); needs the ``supervision`` extra. See ``integrations.supervision``."""
        from ..integrations.supervision import to_supervision

        return to_supervision(self)

    @classmethod
    def from_supervision(
        cls, detections: Any, class_names: Sequence[str], image_shape: tuple[int, int] | None = None
    ) -> Results:
        """``Results`` from a ``supervision.Detections`` with masks (``integrations.supervision.from_supervision``)."""
        from ..integrations.supervision import from_supervision

        return from_supervision(detections, class_names, image_shape)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary without masks: labels, names, scores, boxes (xyxy), orig_shape, speed."""
        return {
            "labels": self.labels.tolist(),
            "names": self.names,
            "scores": [float(s) for s in self.scores],
            "boxes": self.boxes.tolist(),
            "orig_shape": list(self.orig_shape),
            **({"track_ids": self.track_ids.tolist()} if self.track_ids is not None else {}),
            "speed": {k: float(v) for k, v in self.speed.items()},
        }

    def draw(
        self,
        image: np.ndarray,
        color: str = "bgr",
        alpha: float = 0.5,
        show_labels: bool = True,
        trails: dict[int, Sequence[tuple[float, float]]] | None = None,
    ) -> np.ndarray:
        """An annotated copy of ``image``: translucent class-coloured masks, contours, boxes and "name score" labels.

        With ``track_ids``, colours follow the track and labels read "#id name score"; ``trails`` (track id -> recent
        (x, y) centres, e.g. ``ByteTracker.trails()``) are drawn as polylines.

        Args:
            image: (H, W, 3) uint8 with (H, W) == ``orig_shape``; not modified.
            color: channel order of ``image`` (and of the result), ``"bgr"`` or ``"rgb"``.
            alpha: mask opacity in [0, 1].
            show_labels: draw boxes and labels, not only masks and contours.

        Returns:
            (H, W, 3) uint8, same channel order as ``image``.
        """
        if color not in ("bgr", "rgb"):
            raise ValueError(f"color must be 'bgr' or 'rgb', got {color!r}")
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be HxWx3 uint8, got {image.dtype} {image.shape}")
        if image.shape[:2] != self.orig_shape:
            raise ValueError(f"image is {image.shape[:2]} but the results are for {self.orig_shape}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        out = np.array(image, order="C", copy=True)
        thick = max(1, round(min(self.orig_shape) / 400))
        contours: dict[int, list[np.ndarray]] = {}  # id of a crop -> its contours: a mask kept for several classes
        # Lowest score first, so the most confident instances end up on top.
        for i in np.argsort(self.scores, kind="stable"):
            x1, y1, x2, y2 = (int(v) for v in self.boxes[i])
            if x2 <= x1 or y2 <= y1:
                continue  # empty mask: nothing to draw
            ids = self.track_ids
            rgb = _class_color(int(ids[i]) if ids is not None else int(self.labels[i]))
            col = rgb[::-1] if color == "bgr" else rgb
            _draw_mask(out, self.crop_masks, int(i), (x1, y1, x2, y2), col, alpha, thick, contours)
            if show_labels:
                cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), col, thick)
                prefix = f"#{ids[i]} " if ids is not None else ""
                text = f"{prefix}{self.class_names[self.labels[i]]} {self.scores[i]:.2f}"
                _put_label(out, text, (x1, y1), col, thick)
        for track_id, points in (trails or {}).items():
            if len(points) > 1:
                rgb = _class_color(int(track_id))
                pts = np.round(np.asarray(points)).astype(np.int32).reshape(-1, 1, 2)
                cv2.polylines(out, [pts], False, rgb[::-1] if color == "bgr" else rgb, thick, cv2.LINE_AA)
        return out


def _draw_mask(
    out: np.ndarray,
    masks: CropMasks,
    i: int,
    box: tuple[int, int, int, int],
    col: tuple[int, int, int],
    alpha: float,
    thick: int,
    cache: dict[int, list[np.ndarray]],
) -> None:
    """Blend mask ``i`` into ``out`` (H, W, 3) uint8 and draw its outer contours, as the whole-image draw did.

    On the mask's separated parts (``CropMasks.part_boxes``) when ``box`` is its own box: the blend touches only the
    parts' boxes, and ``findContours`` on each part finds the contours of the whole crop (no contour crosses two
    parts, none lies in another's hole), put back in cv2's order: by first point (the top-left pixel of the
    contour, where the raster scan meets it), last first. Otherwise (``boxes`` that are not the masks', e.g. a
    tracker's body boxes) the mask inside ``box``, as before.
    """
    crop, own = masks.crop(i)
    parts = masks.part_boxes(i).tolist() if own == box else [list(box)]
    table = _blend_table(col, alpha)
    for px1, py1, px2, py2 in parts:
        m = masks.region(i, (px1, py1, px2, py2)).view(np.uint8)  # bool is 0/1 bytes: no copy
        region = out[py1:py2, px1:px2]
        cv2.copyTo(cv2.LUT(region, table), m, region)  # the blend where the mask is set
    found = cache.get(id(crop)) if own == box else None
    if found is None:
        found = _part_contours(masks, i, parts)
        if own == box:
            cache[id(crop)] = found
    cv2.drawContours(out, found, -1, col, thick, cv2.LINE_AA)


def _part_contours(masks: CropMasks, i: int, parts: list[list[int]]) -> list[np.ndarray]:
    """The outer contours ((P, 1, 2) int32 image coordinates each) of mask ``i`` inside the separated boxes
    ``parts``, in the order of ``findContours`` on the whole box: by first point (the top-left pixel of the
    contour, where the raster scan meets it), last first."""
    found: list[np.ndarray] = []
    for px1, py1, px2, py2 in parts:
        m = masks.region(i, (px1, py1, px2, py2)).view(np.uint8)
        found.extend(cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(px1, py1))[0])
    if len(parts) > 1:
        found.sort(key=lambda c: (int(c[0, 0, 1]), int(c[0, 0, 0])), reverse=True)
    return found


@lru_cache(maxsize=256)
def _blend_table(col: tuple[int, int, int], alpha: float) -> np.ndarray:
    """(256, 1, 3) uint8: ``v * (1 - alpha) + col * alpha`` rounded, per channel, for every value v of a pixel.

    The same float64 expression as blending the pixels one by one, evaluated on the 256 possible values once, so a
    mask costs a table lookup per pixel (``cv2.LUT``) instead of float arithmetic on fancy-indexed copies.
    """
    v = np.arange(256, dtype=np.uint8)[:, None]
    table = (v * (1.0 - alpha) + np.array(col) * alpha + 0.5).astype(np.uint8)[:, None, :]
    table.flags.writeable = False  # cached (a few colours per frame) and shared
    return table


@lru_cache(maxsize=1024)
def _class_color(label: int) -> tuple[int, int, int]:
    """A fixed, well-spread RGB colour per class: hues stepped by the golden ratio, alternating brightness."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 1.0 if label % 2 == 0 else 0.8)
    return int(r * 255), int(g * 255), int(b * 255)


def _put_label(img: np.ndarray, text: str, xy: tuple[int, int], col: tuple[int, int, int], thick: int) -> None:
    """Write ``text`` on a filled ``col`` background above the top-left corner ``xy`` (inside if at the top)."""
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    x, y = xy
    y = y if y - th - base >= 0 else y + th + base  # no room above: put it inside the box
    cv2.rectangle(img, (x, y - th - base), (x + tw, y), col, -1)
    # Black or white text, whichever reads better on the background.
    ink = (0, 0, 0) if sum(col) > 380 else (255, 255, 255)
    cv2.putText(img, text, (x, y - base), font, scale, ink, thick, cv2.LINE_AA)
