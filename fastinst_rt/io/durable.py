"""Outputs of long jobs that lose nothing: results on disk as frames complete, under names that never clash."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from .outputs import write_atomic

__all__ = ["OutputNames", "ResultsFile", "TextLog"]


class OutputNames:
    """Unique file names in one folder: the first ``a.jpg`` stays ``a.jpg``, a second becomes ``a_1.jpg``."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def __call__(self, name: str) -> str:
        stem, suffix = os.path.splitext(name)
        candidate, n = name, 0
        while candidate.lower() in self._taken:  # case-insensitive: A.jpg and a.jpg are one file on some systems
            n += 1
            candidate = f"{stem}_{n}{suffix}"
        self._taken.add(candidate.lower())
        return candidate


class ResultsFile:
    """Results written as frames complete.

    ``.jsonl``: one line per frame, ``{"frame", "file_name", "timestamp", "instances": [COCO result dicts]}``, flushed
    every frame (a crash loses at most the frame being written). Any other suffix: a COCO results list (each record
    with ``image_id`` = frame index and ``file_name``), rewritten atomically (temporary file, then rename) every
    ``every`` frames and on ``close``, so the file on disk is always complete JSON.
    """

    def __init__(self, path: str | os.PathLike, every: int = 50, segmentation: str = "rle") -> None:
        self.path = Path(path)
        self.segmentation = segmentation  # what the job asks ``Results.to_coco`` for: "rle" or "polygon"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lines = self.path.suffix.lower() == ".jsonl"
        self.every, self.frames = max(1, every), 0
        self._records: list[dict[str, Any]] = []
        self._file: IO[str] | None = self.path.open("w") if self.lines else None
        if not self.lines:
            self._rewrite()  # an empty list at once: the file exists and is valid from the start

    def add(self, frame: int, name: str, timestamp: float | None, records: list[dict[str, Any]]) -> None:
        self.frames += 1
        if self._file is not None:
            line = {"frame": frame, "file_name": name, "timestamp": timestamp, "instances": records}
            self._file.write(json.dumps(line) + "\n")
            self._file.flush()
            return
        for r in records:
            r["file_name"] = name
        self._records.extend(records)
        if self.frames % self.every == 0:
            self._rewrite()

    def _rewrite(self) -> None:
        write_atomic(self.path, json.dumps(self._records))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        elif self.frames % self.every:
            self._rewrite()


class TextLog:
    """Lines appended and flushed as they come (MOTChallenge output)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w")

    def write(self, lines: Sequence[str]) -> None:
        if lines:
            self._file.write("\n".join(lines) + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()
