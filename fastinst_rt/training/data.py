"""COCO-format instance data with FastInst's training augmentations, and the batch collate.

Written after FastInst ``data/dataset_mappers/fastinst_instance_dataset_mapper.py`` and the Detectron2
transforms it uses (``ResizeShortestEdge``, ``RandomCrop("absolute_range")``, ``RandomFlip``).
Changes: no Detectron2; the sizes are constructor arguments (``AugmentSizes``) so
small models train at small sizes; instances that an augmentation leaves with an empty mask are dropped
(the official mapper keeps them as empty targets).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ..runtime.preprocess import load_image, pad_batch, resize_image, resized_size

__all__ = ["AugmentSizes", "CocoInstances", "collate"]

_NO_MAX = 1 << 30  # ResizeShortestEdge without a long-side cap (the crop branch's first resize)


@dataclass(frozen=True)
class AugmentSizes:
    """Sizes of the two augmentation branches (defaults: the official COCO ones).

    Attributes:
        min_sizes: short-side choices of the final resize (416..640 step 32).
        max_size: long-side cap of the final resize (853).
        crop_resize_sizes: short-side choices of the resize before the crop (400, 500, 600), uncapped.
        crop_size: (min, max) side of the random crop (384, 600); height and width drawn independently.
    """

    min_sizes: tuple[int, ...] = (416, 448, 480, 512, 544, 576, 608, 640)
    max_size: int = 853
    crop_resize_sizes: tuple[int, ...] = (400, 500, 600)
    crop_size: tuple[int, int] = (384, 600)

    @classmethod
    def scaled(cls, short: int) -> AugmentSizes:
        """The official sizes scaled so that the largest short side is ``short`` (e.g. 256 for a small model)."""
        base, r = cls(), short / 640.0

        def scale(sizes: Sequence[int]) -> tuple[int, ...]:
            return tuple(sorted({int(s * r + 0.5) for s in sizes}))

        return cls(scale(base.min_sizes), int(base.max_size * r + 0.5), scale(base.crop_resize_sizes),
                   (int(384 * r + 0.5), int(600 * r + 0.5)))  # fmt: skip


class _Resize:
    def __init__(self, hw: tuple[int, int], new_hw: tuple[int, int]) -> None:
        self.hw, self.new_hw = hw, new_hw

    def image(self, x: np.ndarray) -> np.ndarray:
        return resize_image(x, self.new_hw)

    def mask(self, x: np.ndarray) -> np.ndarray:
        # Nearest, through PIL like Detectron2's ResizeTransform.apply_segmentation.
        return np.asarray(Image.fromarray(x).resize(self.new_hw[::-1], Image.NEAREST))

    def coords(self, xy: np.ndarray) -> np.ndarray:
        return xy * np.array([self.new_hw[1] / self.hw[1], self.new_hw[0] / self.hw[0]])


class _Crop:
    def __init__(self, y0: int, x0: int, h: int, w: int) -> None:
        self.y0, self.x0, self.h, self.w = y0, x0, h, w

    def image(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x[self.y0 : self.y0 + self.h, self.x0 : self.x0 + self.w])

    mask = image

    def coords(self, xy: np.ndarray) -> np.ndarray:
        # Points may fall outside the crop; pycocotools clips polygons to the image when rasterising.
        return xy - np.array([self.x0, self.y0])


class _HFlip:
    def __init__(self, w: int) -> None:
        self.w = w

    def image(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x[:, ::-1])

    mask = image

    def coords(self, xy: np.ndarray) -> np.ndarray:
        return np.stack([self.w - xy[:, 0], xy[:, 1]], axis=1)


class CocoInstances(torch.utils.data.Dataset):
    """A COCO-format instance segmentation dataset, augmented as FastInst trains.

    Crowd annotations are dropped and images left without annotations are skipped; category ids are mapped
    to contiguous labels 0..K-1 in sorted-id order, and ``class_names`` are the JSON's names in that order.

    Args:
        ann_file: COCO JSON (polygon or RLE segmentations).
        image_dir: folder that ``file_name`` entries are relative to.
        sizes: augmentation sizes; ``AugmentSizes.scaled(256)`` for a small model.
        augment: False gives a deterministic resize to (largest min size, max size) and no flip or crop.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        sizes: AugmentSizes | None = None,
        augment: bool = True,
    ) -> None:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            self.coco = COCO(str(ann_file))
        self.image_dir, self.sizes, self.augment = Path(image_dir), sizes or AugmentSizes(), augment
        cats = sorted(self.coco.cats.values(), key=lambda c: c["id"])
        self.category_ids = tuple(int(c["id"]) for c in cats)
        self.class_names = tuple(str(c["name"]) for c in cats)
        self._label = {cid: i for i, cid in enumerate(self.category_ids)}
        self.image_ids = [i for i in sorted(self.coco.imgs) if self._annotations(i)]
        if not self.image_ids:
            raise ValueError(f"{ann_file} has no image with a non-crowd annotation")

    def _annotations(self, image_id: int) -> list[dict]:
        return [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict:
        """One augmented sample.

        Returns:
            {"image": (h, w, 3) uint8 RGB, "labels": (N,) int64, "masks": (N, h, w) uint8 in {0, 1},
            "image_id": int}.
        """
        image_id = self.image_ids[index]
        meta = self.coco.imgs[image_id]
        rgb = load_image(self.image_dir / meta["file_name"])
        h, w = rgb.shape[:2]
        if (meta.get("height", h), meta.get("width", w)) != (h, w):
            raise ValueError(f"{meta['file_name']} is {h}x{w} but the annotations say {meta['height']}x{meta['width']}")
        # Per-sample generator drawn from torch's RNG, which DataLoader seeds per worker from the main seed.
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        transforms = self._sample(h, w, rng) if self.augment else self._fixed(h, w)
        for t in transforms:
            rgb = t.image(rgb)
        out_hw = rgb.shape[:2]
        labels, masks = [], []
        for ann in self._annotations(image_id):
            m = self._mask(ann["segmentation"], (h, w), out_hw, transforms)
            if m.any():
                labels.append(self._label[int(ann["category_id"])])
                masks.append(m)
        stacked = np.stack(masks) if masks else np.zeros((0, *out_hw), dtype=np.uint8)
        return {"image": rgb, "labels": np.asarray(labels, dtype=np.int64), "masks": stacked, "image_id": image_id}

    def _fixed(self, h: int, w: int) -> list[_Resize | _Crop | _HFlip]:
        return [_Resize((h, w), resized_size(h, w, max(self.sizes.min_sizes), self.sizes.max_size))]

    def _sample(self, h: int, w: int, rng: np.random.Generator) -> list[_Resize | _Crop | _HFlip]:
        """Draw the official augmentation: 50/50 resize+flip, or resize -> random crop -> resize+flip."""
        s, out = self.sizes, []
        if rng.random() <= 0.5:
            new = resized_size(h, w, int(rng.choice(s.crop_resize_sizes)), _NO_MAX)
            out.append(_Resize((h, w), new))
            h, w = new
            ch = int(rng.integers(min(h, s.crop_size[0]), min(h, s.crop_size[1]) + 1))
            cw = int(rng.integers(min(w, s.crop_size[0]), min(w, s.crop_size[1]) + 1))
            out.append(_Crop(int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1)), ch, cw))
            h, w = ch, cw
        new = resized_size(h, w, int(rng.choice(s.min_sizes)), s.max_size)
        out.append(_Resize((h, w), new))
        if rng.random() < 0.5:
            out.append(_HFlip(new[1]))
        return out

    @staticmethod
    def _mask(
        segm: list | dict, hw: tuple[int, int], out_hw: tuple[int, int], transforms: list[_Resize | _Crop | _HFlip]
    ) -> np.ndarray:
        """(out_h, out_w) uint8 mask: polygons are transformed then rasterised at the output size (as the
        official mapper does); RLE is decoded at the original size and transformed as a mask."""
        if isinstance(segm, list):
            polys = []
            for poly in segm:
                xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
                for t in transforms:
                    xy = t.coords(xy)
                polys.append(xy.ravel().tolist())
            if not polys:
                return np.zeros(out_hw, dtype=np.uint8)
            return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, *out_hw)))
        if isinstance(segm, dict):
            rle = mask_utils.frPyObjects(segm, *hw) if isinstance(segm.get("counts"), list) else segm
            m = np.ascontiguousarray(mask_utils.decode(rle))
            for t in transforms:
                m = t.mask(m)
            return m
        raise ValueError(f"unsupported segmentation of type {type(segm).__name__}: expected polygons or RLE")


def collate(samples: Sequence[dict]) -> dict:
    """Pad a list of samples into a batch.

    Returns:
        {"images": (B, 3, Hp, Wp) uint8 RGB, zero-padded bottom/right to multiples of 32 (normalize with
        ``FastInst.normalize(images, sizes)``), "sizes": (B, 2) int64 (h, w) before padding, "targets": per
        image {"labels": (N,) int64, "masks": (N, Hp, Wp) bool, zero-padded like the image},
        "image_ids": list of int}.
    """
    batch, sizes = pad_batch([s["image"] for s in samples], 32)
    hp, wp = batch.shape[-2:]
    targets = []
    for s in samples:
        m = torch.from_numpy(s["masks"]).bool()
        padded = torch.zeros(m.shape[0], hp, wp, dtype=torch.bool)
        padded[:, : m.shape[1], : m.shape[2]] = m
        targets.append({"labels": torch.from_numpy(s["labels"]), "masks": padded})
    return {
        "images": torch.from_numpy(batch),
        "sizes": torch.from_numpy(sizes),
        "targets": targets,
        "image_ids": [int(s["image_id"]) for s in samples],
    }
