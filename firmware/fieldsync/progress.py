"""Progress lines for long work (``fieldsync sync``, ``fieldsync db compact``, ...).

On a terminal one line is rewritten in place (``\\r``) at most every ``interval`` seconds; into a
file or a pipe (a log, ``ssh host fieldsync ...``) a full line is written at most every
``log_interval`` seconds, so logs stay short. The caller reports absolute counts so far
(:meth:`Progress.update`) and ends with :meth:`Progress.finish`, which always writes the final
line. :func:`format_progress` is the pure formatting, tested on its own.

    progress = Progress("pull", unit="docs")
    for ...:
        progress.update(done, nbytes)
    progress.finish()
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def format_count(value: float) -> str:
    """``950``, ``12.3k``, ``4.5M``."""
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


def format_bytes(value: float) -> str:
    """``512 B``, ``1.5 kB``, ``3.2 MB``, ``1.1 GB`` (decimal units)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def format_progress(
    label: str,
    items: int,
    nbytes: int | None,
    elapsed: float,
    *,
    unit: str = "docs",
    total: int | None = None,
) -> str:
    """``pull: 1.2k/5.0k docs (24%), 3.4 MB, 410 docs/s, 1.2 MB/s, 3s``."""
    text = f"{label}: {format_count(items)}"
    if total:
        text += f"/{format_count(total)} {unit} ({min(100, items * 100 // total)}%)"
    else:
        text += f" {unit}"
    if nbytes is not None:
        text += f", {format_bytes(nbytes)}"
    if elapsed > 0:
        text += f", {format_count(items / elapsed)} {unit}/s"
        if nbytes is not None:
            text += f", {format_bytes(nbytes / elapsed)}/s"
    return text + f", {elapsed:.0f}s"


class Progress:
    """Writes progress lines for one piece of long work (see the module's documentation)."""

    def __init__(
        self,
        label: str,
        *,
        unit: str = "docs",
        total: int | None = None,
        out: TextIO | None = None,
        interval: float = 0.25,
        log_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.unit = unit
        self.total = total
        self.out = out if out is not None else sys.stderr
        isatty = getattr(self.out, "isatty", None)
        self.live = bool(isatty and isatty())
        self.interval = interval if self.live else log_interval
        self._clock = clock
        self._start = clock()
        self._last_write: float | None = None
        self._items = 0
        self._bytes: int | None = None
        self._width = 0

    def update(self, items: int, nbytes: int | None = None) -> None:
        """Report the counts so far; writes a line when ``interval`` has passed."""
        self._items, self._bytes = items, nbytes
        now = self._clock()
        if self._last_write is not None and now - self._last_write < self.interval:
            return
        if self._last_write is None and not self.live and now - self._start < self.interval:
            return  # short work into a log: only the final line
        self._last_write = now
        self._write(final=False)

    def finish(self) -> None:
        """Write the final line (and end the rewritten terminal line)."""
        self._write(final=True)

    def _write(self, *, final: bool) -> None:
        text = format_progress(
            self.label,
            self._items,
            self._bytes,
            self._clock() - self._start,
            unit=self.unit,
            total=self.total,
        )
        if self.live:
            pad = " " * max(0, self._width - len(text))
            self._width = len(text)
            self.out.write("\r" + text + pad + ("\n" if final else ""))
        else:
            self.out.write(text + "\n")
        self.out.flush()
