"""The library's messages go through stdlib ``logging`` under the ``fastinst_rt`` logger; it never prints.

An application that embeds the SDK routes or silences them as it does any library's
(``logging.getLogger("fastinst_rt").setLevel(logging.WARNING)``); the ``fastinst-rt`` command installs a handler
that writes them to stderr (``cli.main``; ``--verbose`` and ``--quiet`` set its level). Progress bars are tqdm's,
shown on terminals only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

__all__ = ["LOGGER_NAME", "progress_logger", "bar_disabled"]

LOGGER_NAME = "fastinst_rt"


def progress_logger(name: str) -> Callable[[bool, str], None]:
    """``log(progress, msg)`` for the module ``name``: INFO when the caller asked for progress, DEBUG otherwise."""
    logger = logging.getLogger(name)

    def log(progress: bool, msg: str) -> None:
        logger.log(logging.INFO if progress else logging.DEBUG, msg)

    return log


def bar_disabled(progress: bool) -> bool | None:
    """tqdm's ``disable`` for a bar the caller asked for (``progress``): None lets tqdm hide it when stderr is not a
    terminal (a log file or a pipe gets no carriage-return animation)."""
    return None if progress else True
