"""The agent keeps the SD card healthy by itself: scheduled compaction (by default nightly, when
no phone is connected), early compaction when free space runs low, expired documents purged on
time (a ``Housekeeper`` per database), and the storage figures ``fieldsync status`` shows.

The decisions (``next_run_after``, ``decide``) are pure and tested without time passing; the
``MaintenanceScheduler`` is the thin asyncio adapter. Every store call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fieldsync.agent.config import MaintenanceSettings
from fieldsync.store import Database, MaintenancePolicy, MaintenanceType
from fieldsync.store.housekeeper import Housekeeper
from fieldsync.store.maintenance import DAY, free_bytes, sqlite_bytes

log = logging.getLogger(__name__)

#: Early (low-space) compactions of one database are at least this far apart.
EARLY_COMPACTION_SPACING = 3600.0
SCHEDULE = "schedule"
LOW_SPACE = "low free space"


def next_run_after(now: float, at: tuple[int, int] | None) -> float | None:
    """The first local ``HH:MM`` strictly after ``now`` (epoch seconds), or ``None``."""
    if at is None:
        return None
    local = datetime.fromtimestamp(now).astimezone()
    candidate = local.replace(hour=at[0], minute=at[1], second=0, microsecond=0)
    if candidate.timestamp() <= now:
        candidate = (candidate + timedelta(days=1)).replace(hour=at[0], minute=at[1])
    return candidate.timestamp()


def decide(
    now: float,
    *,
    next_run: float | None,
    phones_connected: int,
    free: int,
    last_early: float | None,
    settings: MaintenanceSettings,
) -> str | None:
    """Why a database should be compacted now (``SCHEDULE``/``LOW_SPACE``), or ``None``."""
    if not settings.enabled:
        return None
    if free < settings.min_free_mb * 1024 * 1024 and (
        last_early is None or now - last_early >= EARLY_COMPACTION_SPACING
    ):
        return LOW_SPACE
    if next_run is not None and now >= next_run:
        waited = now - next_run
        if (
            not settings.only_when_idle
            or phones_connected == 0
            or waited >= settings.max_delay_hours * 3600
        ):
            return SCHEDULE
    return None


@dataclass
class StorageFigures:
    """What ``fieldsync status`` shows per database."""

    database_bytes: int = 0
    blob_bytes: int = 0
    free_bytes: int = 0
    last_maintenance: str | None = None
    last_maintenance_ok: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "database_bytes": self.database_bytes,
            "blob_bytes": self.blob_bytes,
            "free_bytes": self.free_bytes,
            "last_maintenance": self.last_maintenance,
            "last_maintenance_ok": self.last_maintenance_ok,
        }


def measure(database: Database) -> StorageFigures:
    """Sizes, free space and the last result (blocking: run it in a thread)."""
    last = database.last_maintenance()
    return StorageFigures(
        database_bytes=sqlite_bytes(database.path),
        blob_bytes=database.blobs.total_size(),
        free_bytes=free_bytes(database.path),
        last_maintenance=last.summary() if last else None,
        last_maintenance_ok=last.ok if last else None,
    )


class MaintenanceScheduler:
    """Compacts the agent's databases on schedule and when space runs low, and runs their
    housekeepers. ``start``/``stop`` are idempotent; ``databases`` is read at every check, so
    databases opened or closed by a reload are followed."""

    def __init__(
        self,
        databases: Callable[[], Mapping[str, Database]],
        settings: MaintenanceSettings,
        *,
        phones_connected: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._databases = databases
        self.settings = settings
        self._phones_connected = phones_connected
        self._clock = clock
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self._checking = asyncio.Lock()  # one check at a time: never two compactions at once
        self._housekeepers: dict[str, tuple[Database, Housekeeper]] = {}
        self._last_early: dict[str, float] = {}
        self._figures: dict[str, StorageFigures] = {}
        self.next_run: float | None = None
        self.running_on: str | None = None
        #: (database name, reason, summary) of every compaction this scheduler ran.
        self.history: list[tuple[str, str, str]] = []

    def update_settings(self, settings: MaintenanceSettings) -> None:
        """Apply a reloaded ``[maintenance]`` table (the next check uses it)."""
        if settings.compact_at != self.settings.compact_at:
            self.next_run = next_run_after(self._clock(), settings.compact_at)
        self.settings = settings

    def policy(self) -> MaintenancePolicy:
        return MaintenancePolicy(
            tombstone_purge_interval=self.settings.tombstone_purge_days * DAY,
            peer_retention=self.settings.peer_retention_days * DAY,
            clock=self._clock,
        )

    async def start(self) -> None:
        if self._task is not None and not self._task.done():
            return
        self.next_run = next_run_after(self._clock(), self.settings.compact_at)
        self._task = asyncio.create_task(self._run(), name="maintenance scheduler")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for _database, keeper in self._housekeepers.values():
            await keeper.stop()
        self._housekeepers.clear()

    def status(self) -> dict[str, Any]:
        """For the status document (no I/O: figures are refreshed by the scheduler)."""
        return {
            "enabled": self.settings.enabled,
            "next_compaction": (
                datetime.fromtimestamp(self.next_run).astimezone().isoformat(timespec="minutes")
                if self.next_run is not None and self.settings.enabled
                else None
            ),
            "running": self.running_on,
            "databases": {name: f.as_dict() for name, f in self._figures.items()},
        }

    async def check(self) -> list[tuple[str, str]]:
        """One look at every database: compact those that are due; ``[(name, reason)]``.
        Checks run one after another, so one that starts while another runs sees its outcome."""
        async with self._checking:
            return await self._check()

    async def _check(self) -> list[tuple[str, str]]:
        databases = dict(self._databases())
        await self._follow_housekeepers(databases)
        now = self._clock()
        done: list[tuple[str, str]] = []
        scheduled_due = self.next_run is not None and now >= self.next_run
        scheduled_ran = False
        for name, database in databases.items():
            if database.is_closed:
                continue
            figures = await asyncio.to_thread(measure, database)
            self._figures[name] = figures
            reason = decide(
                now,
                next_run=self.next_run,
                phones_connected=self._phones_connected(),
                free=figures.free_bytes,
                last_early=self._last_early.get(name),
                settings=self.settings,
            )
            if reason is None:
                continue
            if reason == LOW_SPACE:
                self._last_early[name] = now
            scheduled_ran |= reason == SCHEDULE
            await self._compact(name, database, reason)
            done.append((name, reason))
        if scheduled_due and scheduled_ran:
            self.next_run = next_run_after(self._clock(), self.settings.compact_at)
        for name in list(self._figures):
            if name not in databases:
                del self._figures[name]
        return done

    async def _compact(self, name: str, database: Database, reason: str) -> None:
        self.running_on = name
        log.info("compacting %s (%s)", name, reason)
        try:
            result = await asyncio.to_thread(
                database.perform_maintenance, MaintenanceType.COMPACT, policy=self.policy()
            )
            self.history.append((name, reason, result.summary()))
            self._figures[name] = await asyncio.to_thread(measure, database)
        except Exception as exc:
            log.error("compacting %s failed: %s", name, exc)
            self.history.append((name, reason, f"failed: {exc}"))
        finally:
            self.running_on = None

    async def _follow_housekeepers(self, databases: Mapping[str, Database]) -> None:
        for name in list(self._housekeepers):
            database, keeper = self._housekeepers[name]
            if databases.get(name) is not database or database.is_closed:
                await keeper.stop()
                del self._housekeepers[name]
        for name, database in databases.items():
            if name not in self._housekeepers and not database.is_closed:
                keeper = Housekeeper(database, clock=self._clock, sleep=self._sleep)
                await keeper.start()
                self._housekeepers[name] = (database, keeper)

    async def _run(self) -> None:
        interval = self.settings.check_minutes * 60
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("maintenance check failed")
            delay = interval
            if self.next_run is not None:
                delay = max(1.0, min(interval, self.next_run - self._clock()))
            await self._sleep(delay)
