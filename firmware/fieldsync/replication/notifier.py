"""Waking replication feeds when a database changes, in this process or another.

The store calls its change listeners after local commits and from ``poll_changes()``, which
compares SQLite's ``data_version`` to notice commits by other processes. One notifier per
database polls it on the event loop and wakes every feed waiting on a collection.
"""

from __future__ import annotations

import asyncio
import contextlib

from fieldsync.replication.ports import ReplicatedCollection, ReplicatedDatabase

POLL_INTERVAL = 0.025


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

    def acquire(self) -> None:
        """Start watching (reference-counted: every acquire needs a release)."""
        self._users += 1
        if self._users == 1:
            self._loop = asyncio.get_running_loop()
            self._token = self._database.add_change_listener(self._on_change)
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
