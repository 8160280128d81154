"""Run a ``Segmenter`` over an image, a folder of images or a video, writing pictures and COCO-style JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..coco import COCO_CATEGORY_IDS, COCO_CLASSES
from ..runtime.preprocess import load_image
from ..runtime.segmenter import Segmenter
from .outputs import check_writable, write_atomic

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "PredictSummary", "iter_frames", "predict_source"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


@dataclass
class PredictSummary:
    """What ``predict_source`` did: frames processed, instances found, files written, mean ms per stage."""

    frames: int = 0
    instances: int = 0
    written: list[str] = field(default_factory=list)
    speed: dict[str, float] = field(default_factory=dict)


def iter_frames(source: str | os.PathLike) -> tuple[int, Iterator[tuple[str, np.ndarray]]]:
    """(frame count, iterator of (name, HxWx3 uint8 RGB frame)) for an image file, a folder or a video file."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"no such image, folder or video: {source}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{source} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return len(files), ((p.name, load_image(p)) for p in files)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            raise ValueError(f"{source}: OpenCV could not open this video")
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))

        def frames() -> Iterator[tuple[str, np.ndarray]]:
            try:
                index = 0
                while True:
                    ok, bgr = cap.read()
                    if not ok:
                        return
                    yield f"{path.stem}_{index:06d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                    index += 1
            finally:
                cap.release()

        return count, frames()
    return 1, iter([(path.name, load_image(path))])


def _category_ids(class_names: tuple[str, ...]) -> list[int]:
    # COCO models report COCO category ids so the JSON evaluates as is; other models their contiguous labels.
    return list(COCO_CATEGORY_IDS) if tuple(class_names) == COCO_CLASSES else list(range(len(class_names)))


def predict_source(
    segmenter: Segmenter,
    source: str | os.PathLike,
    save_dir: str | os.PathLike | None = None,
    json_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> PredictSummary:
    """Segment every frame of ``source``; draw results into ``save_dir`` and write COCO-style JSON to ``json_path``.

    Images are saved as ``<save_dir>/<name>.jpg``; a video is saved as ``<save_dir>/<stem>.mp4``. The JSON is a
    COCO results list (``image_id`` = frame index) with an added ``file_name``.
    """
    from tqdm import tqdm

    for output, what, folder in ((save_dir, "--save", True), (json_path, "--json", False)):
        if output:
            check_writable(output, what, folder)  # before any frame is run
    count, frames = iter_frames(source)
    is_video = Path(source).suffix.lower() in VIDEO_SUFFIXES
    out_dir = Path(save_dir) if save_dir else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    category_ids = _category_ids(segmenter.class_names)
    summary, records, writer = PredictSummary(), [], None
    totals: dict[str, float] = {}
    try:
        for index, (name, rgb) in enumerate(tqdm(frames, total=count or None, desc="predict", disable=not progress)):
            res = segmenter.predict(rgb, color="rgb")
            summary.frames += 1
            summary.instances += len(res)
            for k, v in res.speed.items():
                totals[k] = totals.get(k, 0.0) + v
            for rec in res.to_coco(index, category_ids):
                rec["file_name"] = name
                records.append(rec)
            if out_dir is None:
                continue
            drawn = res.draw(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            if is_video:
                if writer is None:
                    target = out_dir / (Path(source).stem + ".mp4")
                    fps = cv2.VideoCapture(str(source)).get(cv2.CAP_PROP_FPS) or 25.0
                    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, drawn.shape[1::-1])
                    summary.written.append(str(target))
                writer.write(drawn)
            else:
                target = out_dir / (Path(name).stem + ".jpg")
                if not cv2.imwrite(str(target), drawn):
                    raise OSError(f"could not write {target}")
                summary.written.append(str(target))
    finally:
        if writer is not None:
            writer.release()
    summary.speed = {k: v / max(summary.frames, 1) for k, v in totals.items()}
    if json_path:
        write_atomic(json_path, json.dumps(records))  # never leave a half-written JSON behind
        summary.written.append(str(json_path))
    return summary
