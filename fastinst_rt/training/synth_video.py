"""A synthetic video with tracking ground truth: the shapes of ``synth.py`` moving, occluding, appearing, leaving.

Each video has one textured background (``synth._background``) with fresh sensor noise per frame. Shapes of the
training classes, with the training size range and colours, drift at constant velocity and spin; each has a fixed
depth, so crossing shapes occlude one another in both directions. New shapes enter across an edge or pop up inside
the frame; shapes leave across an edge or vanish. The ground truth is what is VISIBLE: per frame the owner of every
pixel is the nearest shape, each instance's mask is the pixels it owns, and its box is the tight pixel box of that
mask. Instances with fewer than ``synth._MIN_AREA`` visible pixels are not annotated in that frame.

Outputs (``make_synthetic_video``): ``video.mp4`` (H.264, or mp4v without PyAV), ``gt.txt`` (MOTChallenge:
``frame,id,x,y,w,h,1,class,visibility`` with frames from 1, visibility = visible / full area), and
``annotations.json`` (COCO: one image per frame, RLE masks, with ``track_id`` on every annotation).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from ..io.outputs import write_image
from ..io.video_out import VideoWriter
from .synth import _MIN_AREA, SHAPES, _background, draw_shape

__all__ = ["make_synthetic_video", "make_video_frames_dataset"]

_SPAWN_RATE = 0.025  # new shapes per frame, on average
_VANISH_RATE = 0.002  # chance per frame and shape that it disappears where it is
_MAX_SHAPES = 6


@dataclass
class _Shape:
    track_id: int
    label: int
    r: float
    cx: float
    cy: float
    vx: float
    vy: float
    theta: float
    spin: float
    depth: float
    colour: np.ndarray
    grain: float  # texture strength, as in the still images


def _new_shape(rng: np.random.Generator, track_id: int, n_classes: int, h: int, w: int, enter: bool) -> _Shape:
    r = rng.uniform(0.07, 0.2) * min(h, w)
    speed, heading = rng.uniform(0.5, 3.0), rng.uniform(0, 2 * np.pi)
    vx, vy = speed * np.cos(heading), speed * np.sin(heading)
    if enter:  # start just outside the edge the shape is heading away from, so it moves in
        side = int(rng.integers(4))
        cx, cy = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)
        if side == 0:
            cx, vx = -r, abs(vx) + 0.5
        elif side == 1:
            cx, vx = w + r, -abs(vx) - 0.5
        elif side == 2:
            cy, vy = -r, abs(vy) + 0.5
        else:
            cy, vy = h + r, -abs(vy) - 0.5
    else:
        cx, cy = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)
    return _Shape(track_id, int(rng.integers(n_classes)), r, cx, cy, vx, vy, rng.uniform(0, 2 * np.pi),
                  rng.uniform(-0.04, 0.04), rng.uniform(), rng.uniform(0, 255, size=3), rng.uniform(3, 15))  # fmt: skip


def _step(rng: np.random.Generator, shapes: list[_Shape], next_id: int, n_classes: int, h: int, w: int) -> int:
    """Move, retire and spawn shapes for the next frame; returns the next free track id."""
    for s in shapes:
        s.cx, s.cy, s.theta = s.cx + s.vx, s.cy + s.vy, s.theta + s.spin
    shapes[:] = [s for s in shapes if -1.5 * s.r < s.cx < w + 1.5 * s.r and -1.5 * s.r < s.cy < h + 1.5 * s.r]
    shapes[:] = [s for s in shapes if rng.random() >= _VANISH_RATE]
    if len(shapes) < 2 or (len(shapes) < _MAX_SHAPES and rng.random() < _SPAWN_RATE):
        shapes.append(_new_shape(rng, next_id, n_classes, h, w, enter=rng.random() < 0.7))
        next_id += 1
    return next_id


def _draw(rng: np.random.Generator, background: np.ndarray, shapes: list[_Shape], classes: tuple[str, ...]) -> tuple:
    """One frame: (h, w, 3) uint8 RGB and [(shape, visible mask, full area)] for the annotated shapes."""
    h, w = background.shape[:2]
    img = background + rng.normal(0, 3, size=background.shape)
    owner = np.full((h, w), -1, dtype=np.int32)
    full = []
    order = sorted(range(len(shapes)), key=lambda i: shapes[i].depth)  # far first, so near shapes cover them
    for i in order:
        s = shapes[i]
        m = draw_shape(classes[s.label], h, w, s.cx, s.cy, s.r, s.theta).astype(bool)
        img[m] = s.colour + rng.normal(0, s.grain, size=(int(m.sum()), 3))
        owner[m] = i
        full.append(int(m.sum()))
    areas = dict(zip(order, full))
    visible = []
    for i, s in enumerate(shapes):
        mask = owner == i
        if mask.sum() >= _MIN_AREA:
            visible.append((s, mask, areas[i]))
    return np.clip(img, 0, 255).round().astype(np.uint8), visible


def make_synthetic_video(
    output_dir: str | os.PathLike,
    frames: int = 300,
    seed: int = 0,
    size: tuple[int, int] = (256, 320),
    classes: tuple[str, ...] = SHAPES[:4],
    fps: float = 25.0,
) -> Path:
    """Write ``video.mp4``, ``gt.txt`` and ``annotations.json`` (see the module docstring) into ``output_dir``.

    Args:
        frames: number of frames. seed: the same seed gives the same video. size: (H, W), even sides.
        classes: shape classes (category ids 1..K and MOT class ids in this order), as for the still images.
    Returns:
        The path of ``video.mp4``.
    """
    h, w = size
    if frames < 1 or h < 32 or w < 32 or h % 2 or w % 2:
        raise ValueError(f"need frames >= 1 and an even size of at least 32x32, got {frames} and {size}")
    if not 1 <= len(classes) <= len(SHAPES) or any(c not in SHAPES for c in classes):
        raise ValueError(f"classes must be 1 to {len(SHAPES)} of {SHAPES}, got {tuple(classes)}")
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    background = _background(rng, h, w)
    shapes = [_new_shape(rng, i + 1, len(classes), h, w, enter=False) for i in range(int(rng.integers(2, 5)))]
    next_id = len(shapes) + 1
    gt_lines, images, annotations = [], [], []
    with VideoWriter(root / "video.mp4", fps) as writer:
        for index in range(frames):
            if index:
                next_id = _step(rng, shapes, next_id, len(classes), h, w)
            rgb, visible = _draw(rng, background, shapes, classes)
            writer.write(rgb)
            images.append({"id": index + 1, "file_name": f"video_{index:06d}", "frame_index": index, "height": h,
                           "width": w})  # fmt: skip
            for s, mask, area in visible:
                ys, xs = np.nonzero(mask)
                x0, y0, bw, bh = (
                    int(xs.min()),
                    int(ys.min()),
                    int(xs.max() - xs.min() + 1),
                    int(ys.max() - ys.min() + 1),
                )
                gt_lines.append(f"{index + 1},{s.track_id},{x0},{y0},{bw},{bh},1,{s.label + 1},{mask.sum() / area:.3f}")
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                annotations.append({
                    "id": len(annotations) + 1, "image_id": index + 1, "category_id": s.label + 1,
                    "track_id": s.track_id, "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                    "area": int(mask.sum()), "bbox": [x0, y0, bw, bh], "iscrowd": 0,
                })  # fmt: skip
    (root / "gt.txt").write_text("\n".join(gt_lines) + "\n")
    categories = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(classes)]
    coco = {"images": images, "annotations": annotations, "categories": categories, "info": {"fps": fps}}
    (root / "annotations.json").write_text(json.dumps(coco))
    return root / "video.mp4"


def make_video_frames_dataset(
    output_dir: str | os.PathLike,
    videos: int,
    frames: int,
    every: int,
    seed: int = 0,
    include: tuple[str | os.PathLike, int] | None = None,
) -> Path:
    """A still-image training set of frames of synthetic videos, as the video decoder delivers them.

    Writes ``videos`` videos of ``frames`` frames (seeds ``seed``, ``seed + 1``, ...; the defaults of
    ``make_synthetic_video``), decodes them, and keeps every ``every``-th frame from frame 1 (0 when ``every`` is 1)
    as ``images/<seed>_<frame:04d>.jpg`` with its visible masks. So a model trained on it sees what it sees
    when tracking: heavy occlusion, shapes cut by the edges, codec artefacts. ``include`` = (a COCO JSON of still
    images, N) appends its first N images (copied as ``s_<name>``) after the frames.

    Returns:
        The path of ``annotations.json`` (COCO, RLE masks).
    """
    from ..runtime.sources import open_source

    if videos < 1 or frames < 1 or every < 1:
        raise ValueError(f"need videos, frames and every >= 1, got {videos}, {frames} and {every}")
    if include is not None and not Path(include[0]).is_file():  # checked before minutes of video are written
        raise FileNotFoundError(f"no such COCO JSON to include: {include[0]}")
    root = Path(output_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images: list[dict] = []
    annotations: list[dict] = []
    categories: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for v in range(videos):
            video = make_synthetic_video(Path(tmp) / str(v), frames=frames, seed=seed + v)
            coco = json.loads(video.with_name("annotations.json").read_text())
            categories = coco["categories"]
            by_frame: dict[int, list[dict]] = {}
            for a in coco["annotations"]:
                by_frame.setdefault(a["image_id"] - 1, []).append(a)  # image ids are frame index + 1
            with open_source(video) as src:
                for frame in src.frames():
                    if frame.index % every != 1 % every:
                        continue
                    name = f"{seed + v}_{frame.index:04d}.jpg"
                    write_image(root / "images" / name, cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
                    h, w = frame.image.shape[:2]
                    images.append({"id": len(images) + 1, "file_name": name, "height": h, "width": w})
                    for a in by_frame.get(frame.index, []):
                        annotations.append({**{k: x for k, x in a.items() if k != "track_id"},
                                            "id": len(annotations) + 1, "image_id": len(images)})  # fmt: skip
    if include is not None:
        _append_stills(root, images, annotations, Path(include[0]), include[1])
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _append_stills(root: Path, images: list[dict], annotations: list[dict], ann_file: Path, num: int) -> None:
    """The first ``num`` images of the COCO dataset ``ann_file`` (images beside it in ``images/``), renumbered."""
    coco = json.loads(ann_file.read_text())
    first = coco["images"][:num]
    offset, keep = len(images), {im["id"] for im in first}
    for im in first:
        shutil.copy(ann_file.parent / "images" / im["file_name"], root / "images" / f"s_{im['file_name']}")
        images.append({**im, "id": im["id"] + offset, "file_name": f"s_{im['file_name']}"})
    for a in coco["annotations"]:
        if a["image_id"] in keep:
            annotations.append({**a, "id": len(annotations) + 1, "image_id": a["image_id"] + offset})
