"""Run a ``Segmenter`` (optionally with a tracker) over an image, a folder, a video, a camera or a stream URL.

The job is the pipelined stream of ``runtime/stream.py`` with more stages when asked: tracking, the COCO records of
``--json`` (run-length encoding of the masks) and drawing (annotated pictures, or one annotated video encoded as it
goes); the consumer only writes what the stages made, as frames complete (``durable.ResultsFile``). Nothing is
lost on the way: an unreadable image is reported and skipped, a truncated video is reported with the frame where
decoding stopped, a failing stage or Ctrl-C ends the run with everything done so far on disk, and outputs never
overwrite inputs. ``PredictSummary`` says how far it got.
"""

from __future__ import annotations

import os
import sys
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2

from ..coco import COCO_CATEGORY_IDS, COCO_CLASSES
from ..io.durable import OutputNames, ResultsFile, TextLog
from ..io.outputs import shown, write_image
from ..io.paths import Read, Write, check_paths
from ..io.video_out import VideoWriter
from ..io.yolo_labels import YoloLabelWriter, label_names
from ..log import bar_disabled
from ..runtime.segmenter import Segmenter
from ..runtime.sources import Frame, Source, SourceLike, open_source
from ..runtime.stream import Stage, StreamError, StreamStats, check_stream_options, segment_stream

if TYPE_CHECKING:
    from ..runtime.results import Results
    from ..tracking import ByteTracker

__all__ = ["PredictSummary", "coco_category_ids", "predict_source", "output_paths", "saved_names"]


@dataclass
class PredictSummary:
    """What ``predict_source`` did.

    ``frames``: frames segmented; ``instances``: instances found; ``last_frame``: index of the last frame done;
    ``failed``: (name, reason) of each image that could not be read; ``stopped``: where a truncated video stopped;
    ``error``: the stage failure that ended the run; ``interrupted``: Ctrl-C; ``dropped``: frames realtime mode
    dropped; ``written``: files written; ``speed``: mean ms per frame of each stage (busy time, ``decode`` first).
    """

    frames: int = 0
    instances: int = 0
    last_frame: int | None = None
    failed: list[tuple[str, str]] = field(default_factory=list)
    stopped: str | None = None
    error: str | None = None
    interrupted: bool = False
    dropped: int = 0
    written: list[str] = field(default_factory=list)
    speed: dict[str, float] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not (self.failed or self.stopped or self.error or self.interrupted)


def coco_category_ids(class_names: tuple[str, ...]) -> list[int]:
    # COCO models report COCO category ids so the JSON evaluates as is; other models their contiguous labels.
    return list(COCO_CATEGORY_IDS) if tuple(class_names) == COCO_CLASSES else list(range(len(class_names)))


class _Drawer:
    """The drawing stage: annotated pictures under their own names, or frames appended to one annotated video."""

    def __init__(self, out_dir: Path, src: Source, vid_stride: int, tracker: ByteTracker | None, trails: bool) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir, self.tracker, self.trails = out_dir, tracker, trails
        self.names, self.written, self.video = OutputNames(), [], None
        if src.kind != "images":
            fps = (src.fps or 25.0) / vid_stride  # the output plays at the source's speed
            self.video = VideoWriter(out_dir / self.names(_video_name(src.kind, src.name)), fps)
            self.written.append(str(self.video.path))

    def __call__(self, frames: list[Frame], results: list[Results | None]) -> list[Results | None]:
        trails = self.tracker.trails() if self.tracker is not None and self.trails else None
        for frame, res in zip(frames, results):
            if res is None:
                continue
            drawn = res.draw(frame.image, color="rgb", trails=trails)
            if self.video is not None:
                self.video.write(drawn)
                continue
            target = self.out_dir / self.names(frame.name)  # the input's own name and format: no a.jpg/a.png clash
            self.written.append(str(write_image(target, cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))))
        return results

    def close(self) -> None:
        if self.video is not None:
            self.video.close()


def _video_name(kind: str, name: str) -> str:
    """The annotated video's file name for a source of ``kind`` ("video", "stream", "camera", "frames")."""
    return f"{Path(name).stem if kind == 'video' else kind}.mp4"


def saved_names(source: SourceLike) -> frozenset[str]:
    """The file names ``--save`` may write for ``source``, known before it is opened: its images' own names, or one
    video named after the source. (A list of files whose names repeat also gets ``a_1.jpg``: not known here.)"""
    from ..runtime.sources import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        return frozenset(p.name for p in Path(source).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if isinstance(source, (str, os.PathLike)) and os.path.isfile(source):
        path = Path(source)
        return frozenset([_video_name("video", path.name) if path.suffix.lower() in VIDEO_SUFFIXES else path.name])
    return frozenset(_video_name(kind, "") for kind in ("stream", "camera", "frames"))


def output_paths(source: SourceLike, save_dir: str | os.PathLike | None, files: dict[str, str | os.PathLike | None],
                 save_txt: str | os.PathLike | None = None) -> list[Write]:  # fmt: skip
    """The outputs of a predict/track run as ``io.paths.Write`` entries: ``--save``, ``--save-txt`` and ``files``."""
    writes = [Write(what, Path(p)) for what, p in files.items() if p]
    if save_txt:
        writes.insert(0, Write("--save-txt", Path(save_txt), folder=True, names=label_names(source)))
    if save_dir:
        writes.insert(0, Write("--save", Path(save_dir), folder=True, names=saved_names(source)))
    return writes


class _CocoRecords:
    """The ``rle`` stage: each frame's COCO records (``Results.to_coco``: the masks' RLE, boxes, scores), made in the
    pipeline so that the consumer, which writes them in frame order, does no per-pixel work."""

    def __init__(self, category_ids: list[int], segmentation: str = "rle") -> None:
        self.category_ids, self.segmentation = category_ids, segmentation
        self.done: dict[int, list[dict]] = {}  # frame index -> records, until the consumer takes them

    def __call__(self, frames: list[Frame], results: list[Results | None]) -> list[Results | None]:
        for frame, res in zip(frames, results):
            if res is not None:
                self.done[frame.index] = res.to_coco(frame.index, self.category_ids, self.segmentation)
        return results

    def take(self, index: int) -> list[dict]:
        """The records of frame ``index`` (made by the stage before the frame reached the consumer), forgotten."""
        return self.done.pop(index)


def _tracking_stage(tracker: ByteTracker) -> Stage:
    def track(frames: list[Frame], results: list[Results | None]) -> list[Results | None]:
        return [None if r is None else tracker.update(r) for r in results]

    return Stage("track", track)


def predict_source(
    segmenter: Segmenter,
    source: SourceLike,
    save_dir: str | os.PathLike | None = None,
    json_path: str | os.PathLike | None = None,
    *,
    tracker: ByteTracker | None = None,
    mot_path: str | os.PathLike | None = None,
    trails: bool = False,
    pipeline: bool = True,
    batch: int = 1,
    vid_stride: int = 1,
    realtime: bool | None = None,
    timeout: float = 10.0,
    every: int = 50,
    progress: bool = True,
    save_txt: str | os.PathLike | None = None,
    segmentation: str = "rle",
) -> PredictSummary:
    """Segment (and with ``tracker``, track) every frame of ``source``, writing as frames complete.

    Args:
        save_dir: annotated pictures (same names and formats as the inputs) or ``<stem>.mp4`` for a video or live
            source (H.264 where PyAV is installed, else mp4v, at the source frame rate / ``vid_stride``). Must not
            be a folder that holds an input.
        json_path: ``.jsonl``: one line per frame; else a COCO results list (``image_id`` = frame index, with
            ``file_name``) rewritten atomically every ``every`` frames. See ``durable.ResultsFile``.
        tracker: a ``ByteTracker``; then instances carry ``track_ids`` and ``mot_path`` gets MOTChallenge lines.
        trails: draw recent track centres.
        save_txt: a folder for YOLO-seg label files, one per image or frame (``io.yolo_labels``).
        segmentation: the masks in ``json_path``: "rle" (COCO compressed RLE) or "polygon" (COCO polygons).
        pipeline, batch, vid_stride, realtime, timeout: see ``Segmenter.stream``.
    Returns:
        A ``PredictSummary``; it is complete unless images failed, a video was truncated, a stage failed or the
        run was interrupted (the partial results are on disk in every case).
    """
    from tqdm import tqdm

    check_stream_options(batch, vid_stride)
    writes = output_paths(source, save_dir, {"--json": json_path, "--mot": mot_path}, save_txt)
    check_paths([], writes)  # before the source is opened and any frame is run
    src = open_source(source, timeout=timeout)
    out_dir = Path(save_dir) if save_dir else None
    check_paths([Read("the source", p, source=True) for p in src.files], writes)
    if mot_path and tracker is None:
        raise ValueError("MOT output needs tracking (fastinst-rt track)")
    summary, stats = PredictSummary(), StreamStats()
    drawer = _Drawer(out_dir, src, vid_stride, tracker, trails) if out_dir else None
    results_file = ResultsFile(json_path, every, segmentation) if json_path else None
    labels = YoloLabelWriter(save_txt, src.kind == "images") if save_txt else None
    mot = TextLog(mot_path) if mot_path else None
    records = (
        _CocoRecords(coco_category_ids(segmenter.class_names), results_file.segmentation) if results_file else None
    )
    stages = [_tracking_stage(tracker)] if tracker else []
    stages += ([Stage("rle", records)] if records else []) + ([Stage("draw", drawer)] if drawer else [])
    stages += [Stage("labels", labels)] if labels else []
    total = -(-src.count // vid_stride) if src.count else None
    bar = tqdm(total=total, desc="track" if tracker else "predict", disable=bar_disabled(progress), unit="frame")
    try:
        frames = segment_stream(segmenter, src, batch=batch, vid_stride=vid_stride, realtime=realtime,
                                pipeline=pipeline, conf=_stream_conf(segmenter, tracker), skip_bad=True,
                                extra_stages=stages, stats=stats)  # fmt: skip
        with closing(frames):
            for frame, res in frames:
                bar.update(1)
                _record(summary, frame, res, results_file, records, mot, bar)
    except StreamError as e:
        summary.error = str(e)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        bar.close()
        for out in (drawer, results_file, mot, src):
            if out is not None:
                out.close()
    if summary.frames == 0 and not summary.interrupted and (summary.error or summary.failed):
        # Nothing was done: a plain error (e.g. the one image given cannot be used), not a partial run.
        name, why = summary.failed[0] if summary.failed else ("", summary.error)
        more = f" (and {len(summary.failed) - 1} more)" if len(summary.failed) > 1 else ""
        raise ValueError(f"{name}: {why}{more}" if name else why)
    summary.stopped, summary.dropped = src.stopped, stats.dropped
    summary.speed = stats.ms_per_frame()
    summary.written = (drawer.written if drawer else []) + [str(p) for p in (json_path, mot_path) if p]
    summary.written += labels.written if labels else []
    return summary


def _stream_conf(segmenter: Segmenter, tracker: ByteTracker | None) -> float | None:
    # The tracker's second stage uses detections below the user's threshold; only tracked ones are reported.
    return None if tracker is None else min(segmenter.conf, tracker.low_score)


def _record(summary: PredictSummary, frame: Frame, res: Results | None, results_file: ResultsFile | None,
            records: _CocoRecords | None, mot: TextLog | None, bar: Any) -> None:  # fmt: skip
    summary.last_frame = frame.index
    if res is None:
        summary.failed.append((frame.name, frame.error or "unreadable"))
        if not bar.disable:  # live feedback beside the bar; the summary lists every failure at the end anyway
            bar.write(f"skipped {shown(frame.name)}: {frame.error}", file=sys.stderr)
        return
    summary.frames += 1
    summary.instances += len(res)
    if results_file is not None and records is not None:
        results_file.add(frame.index, frame.name, frame.timestamp, records.take(frame.index))
    if mot is not None:
        from ..tracking.mot import mot_lines

        mot.write(mot_lines(res, frame.index + 1))
