"""The one rule for what a command reads and writes: no output may land on an input or on another output.

Every command collects the paths it reads (model, sources, ground truth, COCO JSON, calibration folder, ...) and
the paths it writes, and calls ``check_paths`` before any work. It refuses, with one line naming both options:

- an output file that is an input: the same path after symlinks, or the same file through a hard link
  (``os.path.samefile``);
- an output inside an input folder (it would be read back as an input, or globbed into the next run);
- an output folder that holds an input file it could overwrite, or, for a folder of sources, any source file
  (annotated pictures beside the originals are too easily taken for them);
- two outputs that collide: the same file, one folder inside another, or a file inside an output folder under a
  name that folder's writer may use (``--json out/a.jpg`` with ``--save out`` for a source ``a.jpg``).

Each output is first checked to be writable (``outputs.check_writable``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .outputs import check_writable, shown

__all__ = ["Read", "Write", "check_paths"]


@dataclass(frozen=True)
class Read:
    """A path a command reads. ``what`` is how the user gave it (``"--gt"``, ``"the source"``).

    ``source``: images or videos that ``--save`` would draw (an output folder must not hold them at all).
    """

    what: str
    path: Path
    source: bool = False


@dataclass(frozen=True)
class Write:
    """A path a command writes: a file, or a folder of files (``folder``) named ``names`` (None: any name)."""

    what: str
    path: Path
    folder: bool = False
    names: frozenset[str] | None = None

    def may_write(self, name: str) -> bool:
        """Whether this folder output may write a file called ``name`` (case-insensitively: some systems are)."""
        return self.names is None or name.lower() in {n.lower() for n in self.names}


def reads(what: str, *paths: str | os.PathLike | None, source: bool = False) -> list[Read]:
    """``Read`` entries for the given paths that exist on disk (zoo names, URLs and camera indices are not files)."""
    return [Read(what, Path(p), source) for p in paths if p is not None and os.path.lexists(p)]


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _same(a: Path, b: Path) -> bool:
    if _resolved(a) == _resolved(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts
    except OSError:
        return False  # one of them does not exist yet


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies anywhere under it, after symlinks."""
    p, f = _resolved(path), _resolved(folder)
    return p == f or f in p.parents


def _refuse_read(w: Write, r: Read) -> str | None:
    """Why output ``w`` would harm input ``r``, or None."""
    both = f"{w.what} {shown(w.path)}"
    if r.path.is_dir():
        if _inside(w.path, r.path):
            return f"{both} is inside {r.what} {shown(r.path)}: choose an output outside it"
        return None
    if not w.folder:
        return (
            f"{both} is an input: it would be overwritten ({r.what} {shown(r.path)})" if _same(w.path, r.path) else None
        )
    direct = _same(r.path.parent, w.path) and (r.source or w.may_write(r.path.name))
    if direct or (w.names is None and _inside(r.path, w.path)):
        return f"{both} holds the input {shown(r.path)} ({r.what}): choose another folder"
    return None


def _refuse_pair(a: Write, b: Write) -> str | None:
    """Why outputs ``a`` and ``b`` would collide, or None."""
    both = f"{a.what} {shown(a.path)} and {b.what} {shown(b.path)}"
    if a.folder and b.folder:
        return f"{both} overlap: give separate folders" if _inside(a.path, b.path) or _inside(b.path, a.path) else None
    if not a.folder and not b.folder:
        return f"{both} are the same file" if _same(a.path, b.path) else None
    folder, file = (a, b) if a.folder else (b, a)
    if _same(file.path.parent, folder.path) and folder.may_write(file.path.name):
        return f"{both} collide: {folder.what} may write {shown(file.path.name)}"
    if _inside(file.path, folder.path) and folder.names is None:
        return f"{both} collide: {folder.what} writes anywhere inside its folder"
    return None


def check_paths(read: Iterable[Read], write: Sequence[Write]) -> None:
    """Refuse any output that cannot be written (``OutputError``), or that would harm an input or another output
    (``ValueError``, one line naming both). Call before any work."""
    read = list(read)
    for w in write:
        check_writable(w.path, w.what, w.folder)
    for i, w in enumerate(write):
        for r in read:
            why = _refuse_read(w, r)
            if why:
                raise ValueError(why)
        for other in write[i + 1 :]:
            why = _refuse_pair(w, other)
            if why:
                raise ValueError(why)
