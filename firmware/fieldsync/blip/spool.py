"""Incoming message bodies kept in anonymous temporary files instead of memory.

A :class:`Spool` is one message body being written; every spool of the process draws on one
:class:`SpoolBudget`, so hostile peers streaming junk cannot fill the disk either. The file is
unlinked from the start (``tempfile.TemporaryFile``): nothing is left behind by a crash.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from typing import BinaryIO

from .errors import BLIPLimitExceeded, BLIPProtocolError
from .limits import (
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_TRY_AGAIN_LATER,
    MAX_READ_BACK_BYTES,
    MAX_SPOOLED_BYTES,
)

__all__ = ["READ_BACK_BUDGET", "SPOOL_BUDGET", "Spool", "SpoolBudget"]

Buffer = bytes | bytearray | memoryview


class SpoolBudget:
    """Bytes all live spools of a process may hold; thread-safe (inflation runs in workers)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        #: Bytes ever spooled (a statistic).
        self.total = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        with self._lock:
            if self.used + n > self.limit:
                raise BLIPLimitExceeded(
                    f"incoming messages already hold {self.used} bytes in temporary files "
                    f"(limit {self.limit}); refusing more",
                    CLOSE_MESSAGE_TOO_BIG,
                )
            self.used += n
            self.total += n

    def try_take(self, n: int) -> bool:
        """Take ``n`` bytes if they fit (``True``), else take nothing (``False``)."""
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            self.total += n
            return True

    def give_back(self, n: int) -> None:
        with self._lock:
            self.used -= n


#: The budget every spool of this process shares.
SPOOL_BUDGET = SpoolBudget(MAX_SPOOLED_BYTES)
#: Bytes of spooled request bodies read back for their handlers, process-wide.
READ_BACK_BUDGET = SpoolBudget(MAX_READ_BACK_BYTES)


class Spool:
    """A message body in an anonymous temporary file: appended while the message arrives,
    read back whole by its handler (:meth:`read`), then :meth:`close`\\ d."""

    __slots__ = ("_budget", "_file", "_lock", "size")

    def __init__(self, directory: str | None = None, budget: SpoolBudget = SPOOL_BUDGET) -> None:
        self._budget = budget
        self.size = 0
        # A worker thread may be writing (inflating) when the loop closes a dead connection.
        self._lock = threading.Lock()
        self._file: BinaryIO | None = None
        try:
            self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115
        except OSError as exc:
            raise _spool_failed(exc) from None

    def write(self, data: Buffer) -> None:
        with self._lock:
            if self._file is None:  # the connection was released while a worker inflated
                raise BLIPProtocolError("message discarded: its connection is closed")
            self._budget.take(len(data))
            self.size += len(data)
            try:
                self._file.write(data)
            except OSError as exc:  # a full disk, most likely
                raise _spool_failed(exc) from None

    def read(self) -> bytes:
        """The whole body (blocking file I/O: call it off the event loop for large spools)."""
        if self._file is None:
            raise ValueError("spool is closed")
        self._file.seek(0)
        data = self._file.read()
        if len(data) != self.size:  # pragma: no cover - the file is ours alone
            raise OSError(f"spool file holds {len(data)} bytes, expected {self.size}")
        return data

    def copy_to(self, write: Callable[[bytes], object], chunk: int = 1024 * 1024) -> None:
        """Pass the body to ``write`` in chunks (blocking file I/O: off the event loop)."""
        if self._file is None:
            raise ValueError("spool is closed")
        self._file.seek(0)
        left = self.size
        while left > 0:
            data = self._file.read(min(chunk, left))
            if not data:  # pragma: no cover - the file is ours alone
                raise OSError(f"spool file ended {left} bytes early")
            write(data)
            left -= len(data)

    def close(self) -> None:
        """Delete the file and return its bytes to the budget (idempotent)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
                self._budget.give_back(self.size)

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._file is None else "open"
        return f"<Spool {self.size} bytes, {state}>"


def _spool_failed(exc: OSError) -> BLIPLimitExceeded:
    return BLIPLimitExceeded(
        f"cannot keep a large incoming message in a temporary file: {exc.strerror or exc}",
        CLOSE_TRY_AGAIN_LATER,
    )
