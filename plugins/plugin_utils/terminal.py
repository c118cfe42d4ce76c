# Copyright: (c) 2026, mlops.vast developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Going on after the terminal is gone (standard library only: the mlops-vast CLI loads it by path too).
Private to the collection."""

from __future__ import annotations

import contextlib
import os


def detach_from_terminal(fds: tuple[int, ...]) -> None:
    """Point ``fds`` at /dev/null: those of 0, 1 and 2 that were a terminal (a hung-up one no longer says so), so
    that the next write does not fail (EIO) and end a process that still has a teardown to run."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in fds:
            with contextlib.suppress(OSError):
                os.dup2(devnull, fd)
        os.close(devnull)
