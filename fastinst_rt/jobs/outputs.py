"""Output paths of the jobs: checked before any work starts, and written whole or not at all.

A job that runs for minutes must not fail at its last step because ``--json`` names a folder or the output folder
cannot be written. ``check_writable`` is called first, with the option name it serves, so the message says which
value is wrong. Writability is tested by creating (and removing) a file, not by permission bits: those say
nothing for root, nor for read-only mounts and immutable (``chattr +i``) folders.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["OutputError", "check_writable", "write_atomic"]


class OutputError(OSError):
    """An output path that cannot be written: a folder where a file is expected, or a folder without write access."""


def _nearest_existing(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists():
            return parent
    return Path(".")


def _probe(folder: Path, what: str) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".fastinst-rt-probe-", dir=folder)
    except OSError as e:
        raise OutputError(f"{what}: cannot write in {folder} ({e.strerror or e})") from e
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
            raise OutputError(f"{what} {path} is a file, not a folder")
    elif path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name")
    # A file is written beside its final name and renamed (write_text_atomic), so its folder must take new files.
    existing = _nearest_existing(path if folder else path.parent)
    if not existing.is_dir():
        raise OutputError(f"{what} {path}: {existing} is a file, so no folder can be made there")
    _probe(existing, f"{what} {path}")
    return path


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text or bytes) to ``path`` through a temporary file in the same folder, renamed into place.

    Readers see the old file or the whole new one, never half of it; on any failure the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
