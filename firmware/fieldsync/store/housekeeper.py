"""The Housekeeper: purges expired documents on time while a listener or the agent runs
(LiteCore's ``Housekeeper``). A thin asyncio adapter over ``fieldsync.store.expiry``.

It sleeps until the earliest expiration (at most ``poll_interval``, so expirations set by another
process are noticed too), purges what is due in a worker thread, and goes back to sleep. An
expiration set through the same ``Database`` object wakes it at once. Time comes from the
injected ``clock`` and waiting from the injected ``sleep``, so tests drive it without waiting.

The event loop never touches SQLite here: every store call runs in ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from fieldsync.store import expiry
from fieldsync.store.engine import Engine

log = logging.getLogger(__name__)

#: Longest sleep between two looks at the expiration table.
DEFAULT_POLL_INTERVAL = 60.0


class HousekeeperOwner(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def engine(self) -> Engine: ...


class Housekeeper:
    """Purges ``database``'s expired documents while running. ``start``/``stop`` are
    idempotent; ``stop`` waits for a purge in progress to finish."""

    def __init__(
        self,
        database: HousekeeperOwner,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        on_purged: Callable[[int], None] | None = None,
    ) -> None:
        self._database = database
        self._clock = clock
        self._sleep = sleep
        self._poll_interval = poll_interval
        self._on_purged = on_purged
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._unwatch: Callable[[], None] | None = None
        #: Documents purged since start (for status and tests).
        self.purged = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            return
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        self._wake = wake

        def expiration_set(_when: float) -> None:
            loop.call_soon_threadsafe(wake.set)

        self._unwatch = expiry.watch(self._database.engine, expiration_set)
        self._task = asyncio.create_task(self._run(), name=f"housekeeper {self._database.name}")

    async def stop(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run_once(self) -> int:
        """Purge what is due now; return how many documents were purged."""
        engine = self._database.engine
        count = await asyncio.to_thread(expiry.purge_expired, engine, self._clock())
        if count:
            self.purged += count
            log.info("%s: purged %d expired document(s)", self._database.name, count)
            if self._on_purged is not None:
                self._on_purged(count)
        return count

    async def _delay(self) -> float:
        upcoming = await asyncio.to_thread(expiry.next_expiration, self._database.engine)
        if upcoming is None:
            return self._poll_interval
        return max(0.0, min(self._poll_interval, upcoming - self._clock()))

    async def _run(self) -> None:
        assert self._wake is not None
        wake = self._wake
        while True:
            wake.clear()  # before looking, so an expiration set meanwhile is not missed
            try:
                await self.run_once()
                delay = await self._delay()
            except asyncio.CancelledError:
                raise
            except Exception:  # a storage error must not end housekeeping for good
                log.exception("housekeeping of %s failed", self._database.name)
                delay = self._poll_interval
            sleeper = asyncio.ensure_future(self._sleep(delay))
            waker = asyncio.ensure_future(wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()
