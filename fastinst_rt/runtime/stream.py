"""The pipelined stream: decoding, pre-processing, inference, post-processing (and any later stages) overlapped.

Each stage runs in its own thread and hands packets (a batch of frames and what has been computed for them) to
the next through a bounded queue, so a slow stage holds back the ones before it (back-pressure) and memory stays
bounded. One thread per stage keeps frame order without re-sorting, and the inference thread is the only one that
touches the backend. The decoder thread feeds a frame buffer that either never drops (files: a bounded FIFO) or,
in realtime mode, keeps only the newest frames and counts the ones it pushed out.

Failure and shutdown: an exception in a stage travels downstream behind the packets that came before it, so work
done before the failure is still delivered, and halts the stages upstream of it; the consumer then gets a
``StreamError`` naming the stage and the frame index, with the cause chained. Closing the generator, an exception
in the consumer or Ctrl-C sets one stop event that every blocking wait checks, and the threads are joined before
the generator returns. ``pipeline=False`` runs the same stage functions one after another in the caller's thread.
"""

from __future__ import annotations

import queue
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .preprocess import ImageError
from .sources import Frame, SourceLike, open_source

if TYPE_CHECKING:
    from .results import Results
    from .segmenter import Segmenter

__all__ = [
    "Stage", "StreamError", "StreamStats", "check_stream_options", "run_stages", "segment_stream", "segmenter_stages",
]  # fmt: skip

# Cores a stream leaves to the work beside inference (decoding, resize, post-processing, RLE, drawing and encoding,
# and the decoder's and encoder's own threads): on 2 cores PyTorch's second thread stalled at every operator's
# barrier while those ran, doubling inference or worse (benchmarks/README.md, result 17). Sequential streams leave
# them too, though their stages take turns: the codecs' threads still run beside inference, and PyTorch's results
# depend on its thread count (oneDNN splits its sums by thread), so both modes give the same results.
PIPELINE_RESERVED_CORES = 1
_JOIN_TIMEOUT = 60.0  # seconds; a stage that is inside one long backend call is waited for, never abandoned early
_POLL = 0.05  # seconds between checks of the stop event in blocking waits


class StreamError(RuntimeError):
    """A stage of a stream failed. ``stage`` names it, ``frame_index`` is the first frame of the failed packet."""

    def __init__(self, stage: str, frame_index: int | None, cause: BaseException) -> None:
        where = f"at frame {frame_index}" if frame_index is not None else "before the first frame"
        super().__init__(f"{stage} failed {where}: {type(cause).__name__}: {cause}")
        self.stage, self.frame_index = stage, frame_index


@dataclass
class Stage:
    """One step of a stream: ``fn(frames, payload) -> payload``, where ``frames`` is the packet's list of ``Frame``."""

    name: str
    fn: Callable[[list[Frame], Any], Any]


@dataclass
class StreamStats:
    """Filled in while a stream runs: busy seconds per stage (``decode`` first), frames delivered, frames dropped."""

    busy: dict[str, float] = field(default_factory=dict)
    frames: int = 0
    dropped: int = 0
    wall: float = 0.0

    def add(self, stage: str, seconds: float) -> None:
        self.busy[stage] = self.busy.get(stage, 0.0) + seconds

    def ms_per_frame(self) -> dict[str, float]:
        return {k: v * 1e3 / max(self.frames, 1) for k, v in self.busy.items()}


@dataclass
class _Failure:
    stage: str
    frame_index: int | None
    error: BaseException


_END = object()


class _FrameBuffer:
    """Between the decoder and the first stage: a bounded FIFO that blocks the decoder when full (never drops), or,
    with ``drop``, a ring of the newest ``capacity`` frames where an arriving frame pushes out the oldest."""

    def __init__(self, capacity: int, drop: bool) -> None:
        self._items: deque[Frame] = deque()
        self._cond = threading.Condition()
        self._capacity, self._drop = capacity, drop
        self._end: object | None = None  # _END or a _Failure once the decoder is done
        self.dropped = 0

    def put(self, frame: Frame, halted: Callable[[], bool]) -> bool:
        with self._cond:
            while not self._drop and len(self._items) >= self._capacity and not halted():
                self._cond.wait(_POLL)
            if halted():
                return False
            if len(self._items) >= self._capacity:
                self._items.popleft()
                self.dropped += 1
            self._items.append(frame)
            self._cond.notify_all()
            return True

    def finish(self, end: object) -> None:
        with self._cond:
            self._end = end
            self._cond.notify_all()

    def take(self, n: int, halted: Callable[[], bool]) -> list[Frame] | object:
        """Up to ``n`` frames (exactly ``n`` from a file unless at its end); or the end marker; None when halted."""
        with self._cond:
            while not halted():
                have = len(self._items)
                if have >= n or (have and (self._drop or self._end is not None)):
                    out = [self._items.popleft() for _ in range(min(n, have))]
                    for f in out:
                        f.dropped = self.dropped
                    self._cond.notify_all()
                    return out
                if self._end is not None:
                    return self._end
                self._cond.wait(_POLL)
            return None


class _Pipeline:
    """The threads of one pipelined run; ``packets()`` yields (frames, payload, times) in order."""

    def __init__(self, frames: Iterator[Frame], stages: Sequence[Stage], batch: int, realtime: bool,
                 queue_size: int, stats: StreamStats) -> None:  # fmt: skip
        self.frames, self.stages, self.batch, self.stats = frames, list(stages), batch, stats
        self.buffer = _FrameBuffer(max(queue_size, batch) if not realtime else batch, drop=realtime)
        self.queues = [queue.Queue(maxsize=queue_size) for _ in self.stages]
        self.stop = threading.Event()  # the consumer is gone: everything ends now
        self.halt_below = -1  # stages at positions below this one stop (a later stage failed); the decoder is at -1
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._read, name="stream-decode", daemon=True)]
        for i, st in enumerate(self.stages):
            self.threads.append(threading.Thread(target=self._work, args=(i,), name=f"stream-{st.name}", daemon=True))

    def halted(self, position: int) -> bool:
        return self.stop.is_set() or position < self.halt_below

    def _halt(self, position: int) -> None:
        with self.lock:
            self.halt_below = max(self.halt_below, position)

    def _read(self) -> None:
        index, end = -1, _END
        try:
            while not self.halted(-1):
                t0 = time.perf_counter()
                frame = next(self.frames, None)
                self.stats.add("decode", time.perf_counter() - t0)
                if frame is None or not self.buffer.put(frame, lambda: self.halted(-1)):
                    break
                index = frame.index
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            end = _Failure("decode", index + 1, e)
        finally:
            self.frames.close()  # the decoder stops here, in the thread that drives it
            self.buffer.finish(end)

    def _get(self, position: int) -> Any:
        if position == 0:
            return self.buffer.take(self.batch, lambda: self.halted(0))
        while not self.halted(position):
            try:
                return self.queues[position - 1].get(timeout=_POLL)
            except queue.Empty:
                continue
        return None

    def _put(self, position: int, item: Any) -> None:
        while not self.stop.is_set():  # downstream of a failure keeps running, so only the stop event ends this
            try:
                return self.queues[position].put(item, timeout=_POLL)
            except queue.Full:
                continue

    def _work(self, position: int) -> None:
        stage = self.stages[position]
        while True:
            item = self._get(position)
            if item is None:
                return
            if item is _END or isinstance(item, _Failure):
                return self._put(position, item)
            frames, payload, times = (item, None, {}) if position == 0 else item
            t0 = time.perf_counter()
            try:
                payload = stage.fn(frames, payload)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
                self._halt(position)
                return self._put(position, _Failure(stage.name, frames[0].index, e))
            times[stage.name] = time.perf_counter() - t0
            self.stats.add(stage.name, times[stage.name])
            self._put(position, (frames, payload, times))

    def packets(self) -> Iterator[tuple[list[Frame], Any, dict[str, float]]]:
        for t in self.threads:
            t.start()
        try:
            out = self.queues[-1]
            while True:
                try:
                    item = out.get(timeout=_POLL)
                except queue.Empty:
                    continue
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise StreamError(item.stage, item.frame_index, item.error) from item.error
                self.stats.dropped = self.buffer.dropped
                yield item
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(_JOIN_TIMEOUT)
            if t.is_alive():
                warnings.warn(f"{t.name} did not stop within {_JOIN_TIMEOUT:g} s", RuntimeWarning, stacklevel=2)


def _newest_frames(frames: Iterator[Frame], batch: int, stats: StreamStats) -> Iterator[Frame]:
    """``frames`` read by a thread into a dropping buffer of ``batch`` frames, so that the sequential path too takes
    the newest frame of a live source (not the oldest one its driver queued) and counts the dropped ones."""
    buffer, stop = _FrameBuffer(batch, drop=True), threading.Event()

    def read() -> None:
        end: object = _END
        try:
            for frame in frames:
                if not buffer.put(frame, stop.is_set):
                    break
        except BaseException as e:  # noqa: BLE001 - raised in the consumer below
            end = _Failure("decode", None, e)
        finally:
            frames.close()
            buffer.finish(end)

    reader = threading.Thread(target=read, name="stream-decode", daemon=True)
    reader.start()
    try:
        while isinstance(taken := buffer.take(1, stop.is_set), list):
            stats.dropped = buffer.dropped
            yield from taken
        if isinstance(taken, _Failure):
            raise taken.error
    finally:
        stop.set()
        reader.join(_JOIN_TIMEOUT)


def _sequential(frames: Iterator[Frame], stages: Sequence[Stage], batch: int, stats: StreamStats) -> Iterator[tuple]:
    """The same stages, one packet at a time, in the caller's thread."""
    index = -1
    with closing(frames):
        while True:
            packet: list[Frame] = []
            try:
                t0 = time.perf_counter()
                while len(packet) < batch and (frame := next(frames, None)) is not None:
                    packet.append(frame)
                    index = frame.index
                stats.add("decode", time.perf_counter() - t0)
            except Exception as e:
                raise StreamError("decode", index + 1, e) from e
            if not packet:
                return
            payload, times = None, {}
            for stage in stages:
                t0 = time.perf_counter()
                try:
                    payload = stage.fn(packet, payload)
                except Exception as e:
                    raise StreamError(stage.name, packet[0].index, e) from e
                times[stage.name] = time.perf_counter() - t0
                stats.add(stage.name, times[stage.name])
            yield packet, payload, times


def run_stages(
    frames: Iterator[Frame], stages: Sequence[Stage], *, batch: int = 1, realtime: bool = False, pipeline: bool = True,
    queue_size: int = 4, stats: StreamStats | None = None,
) -> Iterator[tuple[list[Frame], Any, dict[str, float]]]:  # fmt: skip
    """Run ``stages`` over ``frames`` in packets of ``batch``; yields (frames, last payload, seconds per stage)."""
    if batch < 1 or queue_size < 1:
        raise ValueError(f"batch and queue_size must be >= 1, got {batch} and {queue_size}")
    if not stages:
        raise ValueError("a stream needs at least one stage")
    stats = stats if stats is not None else StreamStats()
    start = time.perf_counter()
    if pipeline:
        run = _Pipeline(frames, stages, batch, realtime, queue_size, stats).packets()
    else:
        run = _sequential(_newest_frames(frames, batch, stats) if realtime else frames, stages, batch, stats)
    with closing(run):
        for packet in run:
            stats.frames += len(packet[0])
            stats.wall = time.perf_counter() - start
            yield packet


def segmenter_stages(seg: Segmenter, conf: float | None = None, skip_bad: bool = False) -> list[Stage]:
    """Pre-process, inference and post-processing of ``seg`` as stages; frames that failed to load pass through as
    None results. The last payload is a list of ``Results | None``, one per frame. With ``skip_bad``, an image the
    model refuses (``ValueError`` from pre-processing, e.g. too thin for its queries) is marked as failed too."""

    def preprocess(frames: list[Frame], _: Any) -> tuple:
        good = [i for i, f in enumerate(frames) if f.image is not None]
        if not good:
            return None, good
        try:
            return seg.preprocess([frames[i].image for i in good], "rgb"), good
        except ValueError:
            if not skip_bad:
                raise
        for i in good:  # find the images it refuses, one by one (rare), and batch the others
            try:
                seg.preprocess([frames[i].image], "rgb")
            except ValueError as e:
                frames[i].error = str(e)
        good = [i for i in good if frames[i].error is None]
        return (seg.preprocess([frames[i].image for i in good], "rgb") if good else None), good

    def inference(frames: list[Frame], payload: tuple) -> tuple:
        prepared, good = payload
        return (seg.infer(prepared) if good else None), prepared, good

    def postprocess(frames: list[Frame], payload: tuple) -> list[Results | None]:
        out, prepared, good = payload
        results: list[Results | None] = [None] * len(frames)
        for i, res in zip(good, seg.postprocess(out, prepared, conf) if good else []):
            results[i] = res
        return results

    return [Stage("preprocess", preprocess), Stage("inference", inference), Stage("postprocess", postprocess)]


def check_stream_options(batch: int, vid_stride: int) -> None:
    """Refuse a ``batch`` or ``vid_stride`` below 1 (ValueError naming it), before a stream opens anything."""
    for name, value in (("batch", batch), ("vid_stride", vid_stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def segment_stream(
    seg: Segmenter, source: SourceLike, *, batch: int = 1, vid_stride: int = 1, realtime: bool | None = None,
    pipeline: bool = True, queue_size: int = 4, timeout: float = 10.0, color: str = "bgr", conf: float | None = None,
    skip_bad: bool = False, extra_stages: Sequence[Stage] = (), stats: StreamStats | None = None,
) -> Iterator[tuple[Frame, Results | None]]:  # fmt: skip
    """(frame, results) for every frame of ``source``, in order; see ``Segmenter.stream`` for the options.

    ``skip_bad``: yield (frame, None) for an image that could not be read (``frame.error`` says why) instead of
    raising. ``extra_stages`` run after post-processing, in the pipeline (e.g. drawing and encoding), each taking
    and returning the list of results. ``stats`` is filled in with busy time per stage and frames dropped.
    """
    check_stream_options(batch, vid_stride)
    src = open_source(source, timeout=timeout, color=color)
    realtime = src.live if realtime is None else realtime
    stages = segmenter_stages(seg, conf, skip_bad) + list(extra_stages)
    own = src is not source  # a Source handed in is the caller's to close
    # The backend sizes its thread pool to the cores the other work leaves it (``predict`` takes them all back).
    seg.backend.reserve_cores(PIPELINE_RESERVED_CORES)
    try:
        packets = run_stages(src.frames(vid_stride), stages, batch=batch, realtime=realtime, pipeline=pipeline,
                             queue_size=queue_size, stats=stats)  # fmt: skip
        with closing(packets):
            for frames, results, times in packets:
                speed = {k: times[k] * 1e3 / len(frames) for k in ("preprocess", "inference", "postprocess")}
                for frame, res in zip(frames, results):
                    if frame.error is not None and not skip_bad:
                        raise StreamError("decode", frame.index, ImageError(frame.error))
                    if res is not None:
                        res.speed = dict(speed)
                    yield frame, res
    finally:
        if own:
            src.close()
