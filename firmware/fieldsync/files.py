"""Durable file writes: the one home of atomic-write-with-fsync.

A file written with :func:`atomic_write` is either the old one or the whole new one after a
crash or power cut (temp file in the same directory, fsync, rename or link, fsync of the
directory). The keystore and the blob store rely on it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "fsync_directory"]


def atomic_write(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o600,
    overwrite: bool = True,
    temp_prefix: str = ".tmp-",
) -> None:
    """Write ``data`` to ``path`` durably and atomically, with permissions ``mode``.

    With ``overwrite`` false an existing ``path`` is left alone and ``FileExistsError`` is
    raised. Other failures raise ``OSError``; no temporary file is left behind.
    """
    directory = path.parent
    fd, temp_name = tempfile.mkstemp(prefix=temp_prefix, dir=directory)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(temp_name, path)
        else:
            os.link(temp_name, path)  # fails with FileExistsError instead of replacing
            os.unlink(temp_name)
        temp_name = ""
    finally:
        if temp_name:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
    fsync_directory(directory)


def fsync_directory(directory: Path) -> None:
    """Make the directory's entries (a rename, a new or removed file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
