"""YOLO-seg label files (``fastinst-rt predict --save-txt DIR``): one ``.txt`` per image, Ultralytics' format.

Each line is one polygon part of an instance, ``class x1 y1 x2 y2 ...``, the class the model's label (0-based) and
the coordinates divided by the image width and height (``Results.to_yolo``, see ``runtime.polygons``). An image
with no instance gets an empty file (Ultralytics reads an empty or missing file as background alike; an empty file
also says the image was done). Files are named after the image (``a.jpg`` -> ``a.txt``; a second ``a.png`` in the
same run -> ``a_1.txt``), after the frame for a video or a live source (``clip_000012.txt``, the frame's name).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..runtime.polygons import DEFAULT_TOLERANCE
from ..runtime.results import Results
from ..runtime.sources import Frame, SourceLike
from .durable import OutputNames
from .outputs import write_atomic

__all__ = ["YoloLabelWriter", "label_names", "read_yolo_seg"]


def label_names(source: SourceLike) -> frozenset[str] | None:
    """The ``.txt`` names ``--save-txt`` may write for ``source``, known before it is opened: the images' stems for
    an image or a folder of images; None (any name) for a video or a live source, whose frames are numbered."""
    from ..runtime.sources import IMAGE_SUFFIXES

    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        paths = [p for p in Path(source).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    elif isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() in IMAGE_SUFFIXES:
        paths = [Path(source)]
    else:
        return None
    return frozenset(p.stem + ".txt" for p in paths)


class YoloLabelWriter:
    """The ``--save-txt`` stage: writes one label file per frame as it completes (each file whole or not at all)."""

    def __init__(self, out_dir: str | os.PathLike, images: bool, tolerance: float = DEFAULT_TOLERANCE) -> None:
        self.out_dir, self.images, self.tolerance = Path(out_dir), images, tolerance
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.names, self.written = OutputNames(), []

    def __call__(self, frames: list[Frame], results: list[Results | None]) -> list[Results | None]:
        for frame, res in zip(frames, results):
            if res is None:
                continue  # an unreadable image: reported by the job, no label file
            stem = os.path.splitext(frame.name)[0] if self.images else frame.name
            lines = res.to_yolo(self.tolerance)
            path = self.out_dir / self.names(stem + ".txt")
            self.written.append(str(write_atomic(path, "".join(line + "\n" for line in lines))))
        return results


def read_yolo_seg(path: str | os.PathLike, image_shape: tuple[int, int]) -> list[tuple[int, list[float]]]:
    """(class, [x1, y1, x2, y2, ...] in pixels) of each line of a YOLO-seg file, for an image of ``image_shape``
    (H, W); the polygons are what ``pycocotools.mask.frPyObjects`` takes. ValueError names a malformed line."""
    h, w = image_shape
    out = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            label, xy = int(fields[0]), [float(v) for v in fields[1:]]
        except ValueError:
            raise ValueError(f"{path}: line {number} is not 'class x1 y1 x2 y2 ...'") from None
        if len(xy) < 6 or len(xy) % 2 or not all(0.0 <= v <= 1.0 for v in xy):
            raise ValueError(f"{path}: line {number} needs 3 or more x y pairs in [0, 1]")
        out.append((label, [v * (w if k % 2 == 0 else h) for k, v in enumerate(xy)]))
    return out
