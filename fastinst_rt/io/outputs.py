"""Output files: checked before any work starts, and written whole or not at all.

A job that runs for minutes must not fail at its last step because ``--json`` names a folder or the output folder
cannot be written. ``check_writable`` is called first, with the option name it serves, so the message says which
value is wrong. Writability is tested by creating (and removing) a file, not by permission bits: those say
nothing for root, nor for read-only mounts and immutable (``chattr +i``) folders.

Files are written through a uniquely named temporary file in the target's folder, renamed into place (readers see
the old file or the whole new one). An existing output that is not a regular file (``/dev/null``, a FIFO, a
terminal) is written in place and never renamed over: renaming a regular file over ``/dev/null`` as root would
replace the system's device node.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

__all__ = ["OutputError", "atomic_path", "check_writable", "is_special", "shown", "write_atomic", "write_image"]


class OutputError(OSError):
    """An output path that cannot be written: a folder where a file is expected, or a folder without write access."""


def shown(path: str | os.PathLike) -> str:
    """``path`` as text that can always be printed: bytes that are not UTF-8 (surrogate escapes) as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_special(path: str | os.PathLike) -> bool:
    """Whether ``path`` exists and is not a regular file or folder: a device node, FIFO or socket (after symlinks)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _nearest_existing(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists():
            return parent
    return Path(".")


def _probe(folder: Path, what: str) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".fastinst-rt-probe-", dir=folder)
    except OSError as e:
        raise OutputError(f"{what}: cannot write in {shown(folder)} ({e.strerror or e})") from e
    os.close(fd)
    os.unlink(name)


def check_writable(path: str | os.PathLike, what: str, folder: bool = False) -> Path:
    """Refuse an output path now rather than after the work: ``OutputError`` naming ``what`` and the path.

    Args:
        path: a file to write (``folder=False``) or a folder to write files into (``folder=True``).
        what: how the user gave it, e.g. "--json" or "--save", for the message.
    Returns:
        ``path`` as a ``Path``. Nothing is created except folders that had to exist anyway for a ``folder`` output.
    """
    path = Path(path)
    if folder:
        if path.exists() and not path.is_dir():
            raise OutputError(f"{what} {shown(path)} is a file, not a folder")
    elif path.is_dir():
        raise OutputError(f"{what} {shown(path)} is a folder; give a file name")
    elif is_special(path):
        if not os.access(path, os.W_OK):
            raise OutputError(f"{what} {shown(path)} cannot be written")
        return path  # written in place (atomic_path), so its folder need not take new files
    # A file is written beside its final name and renamed (atomic_path), so its folder must take new files.
    existing = _nearest_existing(path if folder else path.parent)
    if not existing.is_dir():
        raise OutputError(f"{what} {shown(path)}: {shown(existing)} is a file, so no folder can be made there")
    _probe(existing, f"{what} {shown(path)}")
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once: os.umask can only be read by setting it, which is not safe while other threads create files.
_FILE_MODE = 0o666 & ~_umask()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a path to write ``path``'s new content to; on success it becomes ``path``, on failure it is removed.

    The temporary file is unique (``tempfile`` in the target's folder), so concurrent writers and a user's own
    ``X.tmp`` are safe, and it gets the mode a new file would get. A non-regular ``path`` (``/dev/null``) is
    yielded itself and written in place. Write errors raise ``OutputError`` naming ``path``.
    """
    path = Path(path)
    if is_special(path):
        try:
            yield path
        except OSError as e:
            raise OutputError(f"could not write {shown(path)} ({e.strerror or e})") from e
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, _FILE_MODE)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"could not write {shown(path)} ({e.strerror or e})") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text or bytes) to ``path`` whole or not at all (see ``atomic_path``); returns ``path``."""
    with atomic_path(path) as target, open(target, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    return Path(path)


def write_image(path: str | os.PathLike, bgr: np.ndarray, params: Sequence[int] = ()) -> Path:
    """Encode an (H, W, 3) uint8 BGR image by ``path``'s suffix and write it; ``OutputError`` names a failure.

    ``cv2.imencode`` plus a Python write, not ``cv2.imwrite``: OpenCV takes a path as UTF-8 text and crashed
    (SIGSEGV) on a name that is not, while Python writes any name the OS allows.
    """
    import cv2

    path = Path(path)
    ok, encoded = cv2.imencode(path.suffix or ".png", bgr, list(params))
    if not ok:
        raise OutputError(f"could not encode an image as {shown(path.suffix)} for {shown(path)}")
    try:
        with open(path, "wb") as f:
            f.write(encoded.tobytes())
    except OSError as e:
        raise OutputError(f"could not write {shown(path)} ({e.strerror or e})") from e
    return path
