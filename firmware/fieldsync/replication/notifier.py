"""Waking replication feeds when a database changes, in this process or another.

The store calls its change listeners after local commits and from ``poll_changes()``, which
compares SQLite's ``data_version`` to notice commits by other processes. One notifier per
database wakes every feed waiting on a collection.

Other processes' commits are noticed without polling where the OS allows (issue 13): on Linux
an inotify watch on the database's folder fires when any process writes the write-ahead log,
and ``poll_changes()`` runs then (plus two re-checks shortly after the last write: SQLite
publishes a commit in the shared-memory index, which inotify does not see, just after its last
log write). A burst of writes (this process's own pushes write the log for every batch) is
checked every few milliseconds, not at every write. An idle device with continuous phones then
wakes only for writes and pings.
Elsewhere (no inotify, or a database without a folder) it polls every :data:`POLL_INTERVAL`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import sys
from pathlib import Path

from fieldsync.replication.ports import ReplicatedCollection, ReplicatedDatabase

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.025
#: After the last write seen by inotify, ``poll_changes()`` runs again after these delays;
#: during a burst of writes it runs every ``RECHECK_DELAYS[0]`` seconds.
RECHECK_DELAYS = (0.005, 0.05)

_IN_MODIFY = 0x002
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_WATCH_MASK = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE


class _FolderWatch:
    """A non-blocking inotify descriptor watching one folder (Linux only)."""

    def __init__(self, folder: Path) -> None:
        if not sys.platform.startswith("linux"):
            raise OSError("inotify is Linux only")
        libc = ctypes.CDLL(None, use_errno=True)  # this process's libc (ctypes.util costs ~1 MB)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if libc.inotify_add_watch(fd, os.fsencode(folder), _WATCH_MASK) < 0:
            errno = ctypes.get_errno()
            os.close(fd)
            raise OSError(errno, f"inotify_add_watch({folder}) failed")
        self.fd = fd

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while os.read(self.fd, 65536):
                pass

    def close(self) -> None:
        os.close(self.fd)


class ChangeNotifier:
    """asyncio adapter over a store database's change listeners."""

    def __init__(
        self, database: ReplicatedDatabase, *, poll_interval: float = POLL_INTERVAL
    ) -> None:
        self._database = database
        self._poll_interval = poll_interval
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._token: object | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._users = 0
        self._watch: _FolderWatch | None = None
        self._recheck: asyncio.TimerHandle | None = None
        self._recheck_index = 0  # which of RECHECK_DELAYS the pending re-check is
        self._written = False  # written since the last check

    def acquire(self) -> None:
        """Start watching (reference-counted: every acquire needs a release)."""
        self._users += 1
        if self._users == 1:
            self._loop = asyncio.get_running_loop()
            self._token = self._database.add_change_listener(self._on_change)
            self._watch = self._start_watch(self._loop)
            if self._watch is None:
                self._task = self._loop.create_task(self._poll(), name="fieldsync-change-poll")

    def release(self) -> None:
        self._users -= 1
        if self._users == 0:
            if self._token is not None:
                self._database.remove_change_listener(self._token)
                self._token = None
            if self._task is not None:
                self._task.cancel()
                self._task = None
            self._stop_watch()

    def _start_watch(self, loop: asyncio.AbstractEventLoop) -> _FolderWatch | None:
        folder = getattr(self._database, "path", None)
        if folder is None:
            return None
        try:
            watch = _FolderWatch(Path(folder))
            loop.add_reader(watch.fd, self._on_folder_written)
        except (OSError, AttributeError, NotImplementedError) as exc:
            log.debug("no inotify on %s (%s); polling every %g s", folder, exc, POLL_INTERVAL)
            return None
        self._database.poll_changes()  # anything committed before the watch began
        return watch

    def _stop_watch(self) -> None:
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        watch, self._watch = self._watch, None
        if watch is not None:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(watch.fd)
            watch.close()

    def _on_folder_written(self) -> None:
        watch, loop = self._watch, self._loop
        if watch is None or loop is None:
            return
        watch.drain()
        if self._recheck is not None:
            if self._recheck_index == 0:  # a burst: the re-check due within 5 ms looks
                self._written = True
                return
            self._recheck.cancel()  # the late re-check is too late for a new write
        self._poll_once()
        self._schedule_recheck(loop, 0)

    def _schedule_recheck(self, loop: asyncio.AbstractEventLoop, index: int) -> None:
        self._written = False
        self._recheck_index = index
        previous = RECHECK_DELAYS[index - 1] if index else 0.0
        self._recheck = loop.call_later(RECHECK_DELAYS[index] - previous, self._recheck_due)

    def _recheck_due(self) -> None:
        loop = self._loop
        self._recheck = None
        self._poll_once()
        if loop is None or self._watch is None:
            return
        if self._written:  # written again since: start over from the first delay
            self._schedule_recheck(loop, 0)
        elif self._recheck_index + 1 < len(RECHECK_DELAYS):
            self._schedule_recheck(loop, self._recheck_index + 1)

    def _poll_once(self) -> None:
        """Check for other processes' commits unless the store is busy in another thread (its
        commit then writes the log again, which brings us back here)."""
        with contextlib.suppress(Exception):
            self._database.poll_changes(wait=False)

    def _on_change(self, collection: ReplicatedCollection, _sequence: int) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake(collection.full_name)
        else:
            loop.call_soon_threadsafe(self._wake, collection.full_name)

    def _wake(self, full_name: str) -> None:
        for event in self._waiters.get(full_name, ()):
            event.set()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            with contextlib.suppress(Exception):
                self._database.poll_changes()

    def subscribe(self, collection: ReplicatedCollection) -> asyncio.Event:
        """An event set whenever ``collection`` changes; clear it before reading changes."""
        event = asyncio.Event()
        self._waiters.setdefault(collection.full_name, set()).add(event)
        return event

    def unsubscribe(self, collection: ReplicatedCollection, event: asyncio.Event) -> None:
        self._waiters.get(collection.full_name, set()).discard(event)
