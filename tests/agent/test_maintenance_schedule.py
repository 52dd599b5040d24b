"""The agent's maintenance schedule: pure decisions, then the scheduler over real databases
with time driven by an injected clock (no waiting)."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime
from pathlib import Path

import pytest

from fieldsync.agent import maintenance as agent_maintenance
from fieldsync.agent.config import MaintenanceSettings, parse_config
from fieldsync.agent.maintenance import (
    LOW_SPACE,
    SCHEDULE,
    MaintenanceScheduler,
    decide,
    next_run_after,
)
from fieldsync.store import Database

MB = 1024 * 1024


def local(hour: int, minute: int = 0, day: int = 1) -> float:
    return datetime(2026, 12, day, hour, minute).timestamp()


def test_next_run_after() -> None:
    assert next_run_after(local(1), (3, 30)) == local(3, 30)
    assert next_run_after(local(3, 30), (3, 30)) == local(3, 30, day=2)
    assert next_run_after(local(23), (3, 30)) == local(3, 30, day=2)
    assert next_run_after(local(1), None) is None


def test_decide() -> None:
    settings = MaintenanceSettings(min_free_mb=100, max_delay_hours=2)
    plenty = 10_000 * MB
    common = {"free": plenty, "last_early": None, "settings": settings}
    assert decide(local(3), next_run=local(3, 30), phones_connected=0, **common) is None
    assert decide(local(3, 31), next_run=local(3, 30), phones_connected=0, **common) == SCHEDULE
    # a phone is syncing: wait, but not longer than max_delay_hours
    assert decide(local(4), next_run=local(3, 30), phones_connected=1, **common) is None
    assert decide(local(5, 31), next_run=local(3, 30), phones_connected=1, **common) == SCHEDULE
    low = {"free": 50 * MB, "settings": settings}
    assert decide(local(12), next_run=None, phones_connected=3, last_early=None, **low) == LOW_SPACE
    # …but not again within the hour, so a card full of live data is not compacted in a loop
    assert (
        decide(local(12, 30), next_run=None, phones_connected=0, last_early=local(12), **low)
        is None
    )
    assert (
        decide(local(13), next_run=None, phones_connected=0, last_early=local(12), **low)
        == LOW_SPACE
    )
    off = MaintenanceSettings(enabled=False)
    assert (
        decide(
            local(5), next_run=local(3), phones_connected=0, free=0, last_early=None, settings=off
        )
        is None
    )


def test_config_section() -> None:
    base = '[databases.x]\npath = "/tmp/x"\n'
    assert parse_config(base).maintenance == MaintenanceSettings()
    config = parse_config(base + '[maintenance]\ncompact_at = "off"\nmin_free_mb = 64\n')
    assert config.maintenance.compact_at is None and config.maintenance.min_free_mb == 64
    with pytest.raises(ValueError, match=r"maintenance\.compact_at"):
        parse_config(base + '[maintenance]\ncompact_at = "3am"\n')
    with pytest.raises(ValueError, match=r"maintenance\.compactat"):
        parse_config(base + "[maintenance]\ncompactat = 1\n")
    with pytest.raises(ValueError, match=r"maintenance\.min_free_mb"):
        parse_config(base + "[maintenance]\nmin_free_mb = -1\n")


class FakeTime:
    def __init__(self, now: float) -> None:
        self.now = now

    def clock(self) -> float:
        return self.now

    async def sleep(self, _delay: float) -> None:
        await asyncio.Event().wait()  # the tests call check() themselves


def _database_with_garbage(path: Path) -> tuple[Database, str]:
    db = Database.open(path)
    orphan = db.blobs.put(b"orphan photo" * 100)
    old = time.time() - 86400
    os.utime(db.blobs.path_for(orphan), (old, old))
    return db, orphan


async def test_scheduler_compacts_at_night_when_idle(tmp_path: Path) -> None:
    db, orphan = _database_with_garbage(tmp_path / "db")
    fake = FakeTime(local(1))
    phones = [1]
    scheduler = MaintenanceScheduler(
        lambda: {"inventory": db},
        MaintenanceSettings(compact_at=(3, 30), min_free_mb=0, max_delay_hours=6),
        phones_connected=lambda: phones[0],
        clock=fake.clock,
        sleep=fake.sleep,
    )
    await scheduler.start()
    try:
        assert scheduler.next_run == local(3, 30)
        assert await scheduler.check() == []
        fake.now = local(3, 45)
        assert await scheduler.check() == []  # a phone is connected: wait
        assert db.blobs.has(orphan)
        phones[0] = 0
        assert await scheduler.check() == [("inventory", SCHEDULE)]
        assert not db.blobs.has(orphan)
        assert scheduler.next_run == local(3, 30, day=2)
        status = scheduler.status()
        figures = status["databases"]["inventory"]
        assert figures["last_maintenance"].startswith("compact at")
        assert figures["database_bytes"] > 0 and figures["free_bytes"] > 0
        assert figures["blob_bytes"] == 0
    finally:
        await scheduler.stop()
        db.close()


async def test_scheduler_compacts_early_when_space_runs_low(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, orphan = _database_with_garbage(tmp_path / "db")
    fake = FakeTime(local(12))
    monkeypatch.setattr(agent_maintenance, "free_bytes", lambda _path: 10 * MB)
    scheduler = MaintenanceScheduler(
        lambda: {"inventory": db},
        MaintenanceSettings(compact_at=None, min_free_mb=100),
        phones_connected=lambda: 2,  # low space does not wait for idle
        clock=fake.clock,
        sleep=fake.sleep,
    )
    await scheduler.start()  # its loop checks at once, racing the check below
    try:
        await scheduler.check()
        # whichever check came first compacted; the other saw it and did not compact again
        assert [entry[:2] for entry in scheduler.history] == [("inventory", LOW_SPACE)]
        assert not db.blobs.has(orphan)
        fake.now += 600
        assert await scheduler.check() == []
        fake.now += 3600
        assert await scheduler.check() == [("inventory", LOW_SPACE)]
    finally:
        await scheduler.stop()
        db.close()


async def test_scheduler_runs_housekeepers_that_purge_expired_documents(tmp_path: Path) -> None:
    db = Database.open(tmp_path / "db")
    db.default_collection.save_document("temp", {"v": 1})
    db.default_collection.set_document_expiration("temp", time.time() - 1)
    scheduler = MaintenanceScheduler(
        lambda: {"inventory": db}, MaintenanceSettings(compact_at=None, min_free_mb=0)
    )
    await scheduler.start()
    try:
        for _ in range(400):
            if db.default_collection.get_document("temp") is None:
                break
            await asyncio.sleep(0.01)
        assert db.default_collection.get_document("temp") is None
    finally:
        await scheduler.stop()
        db.close()


def test_status_shows_storage_and_last_maintenance() -> None:
    from fieldsync.agent.control import empty_status
    from fieldsync.cli.status import format_status

    document = empty_status()
    document["databases"] = [
        {
            "name": "inventory",
            "path": "/var/lib/fieldsync/db/inventory",
            "documents": 12,
            "last_sequence": 40,
            "database_bytes": 2_500_000,
            "blob_bytes": 31_000_000,
            "free_bytes": 7_200_000_000,
            "last_maintenance": "compact at 2026-12-01 03:30:02 (1.2 s), …",
            "last_maintenance_ok": True,
        }
    ]
    document["maintenance"] = {
        "enabled": True,
        "next_compaction": "2026-12-02T03:30+00:00",
        "running": None,
        "databases": {},
    }
    text = format_status(document)
    assert "storage  database 2.5 MB, blobs 31.0 MB, free 7.2 GB" in text
    assert "maintenance  compact at 2026-12-01 03:30:02" in text
    assert "maintenance next compaction 2026-12-02T03:30+00:00" in text
