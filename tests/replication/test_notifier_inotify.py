"""The change notifier notices other processes' commits without polling (issue 13)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fieldsync.replication.notifier import ChangeNotifier
from fieldsync.store import Database

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux")


class _CountingDatabase:
    """The real database, counting ``poll_changes`` calls."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.polls = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._db, name)

    def poll_changes(self, *, wait: bool = True) -> bool:
        self.polls += 1
        return self._db.poll_changes(wait=wait)


async def test_idle_database_is_not_polled_and_a_foreign_commit_wakes_the_feed(tmp_path) -> None:
    with Database.open(tmp_path / "db") as db:
        counting = _CountingDatabase(db)
        notifier = ChangeNotifier(counting)  # type: ignore[arg-type]
        notifier.acquire()
        try:
            assert notifier._watch is not None and notifier._task is None
            event = notifier.subscribe(db.default_collection)
            await asyncio.sleep(0.3)  # idle: nothing written by anyone
            before = counting.polls
            await asyncio.sleep(0.5)
            assert counting.polls == before, "an idle database was polled"
            assert not event.is_set()

            writer = textwrap.dedent(
                f"""
                from fieldsync.store import Database
                with Database.open({str(db.path)!r}) as other:
                    other.default_collection.save_document("from-daemon", {{"t": 1}})
                """
            )
            await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-c", writer],
                check=True,
                env={"PYTHONPATH": str(FIRMWARE)},
            )
            await asyncio.wait_for(event.wait(), 10)
            assert db.default_collection.get_document("from-daemon").body == {"t": 1}
        finally:
            notifier.release()
        assert notifier._watch is None


async def test_a_burst_of_writes_is_checked_every_few_ms_not_at_every_write(tmp_path) -> None:
    """Our own pushes write the log at every batch: the notifier then checks at most every
    RECHECK_DELAYS[0] s, not at every write, and still checks after the burst's last write."""
    with Database.open(tmp_path / "db") as db:
        counting = _CountingDatabase(db)
        notifier = ChangeNotifier(counting)  # type: ignore[arg-type]
        notifier.acquire()
        try:
            await asyncio.sleep(0.1)
            before = counting.polls
            scratch = Path(db.path) / "scratch"
            writes = 300

            def burst() -> None:
                for i in range(writes):
                    scratch.write_bytes(str(i).encode())
                    time.sleep(0.001)

            await asyncio.to_thread(burst)
            during = counting.polls - before
            await asyncio.sleep(0.2)  # both re-checks after the last write have run
            after = counting.polls - before
            assert 0 < during < writes / 2, f"{during} checks for {writes} writes"
            assert after >= during + 2  # the re-checks 5 ms and 50 ms after the last write
            assert notifier._recheck is None  # and then nothing more is scheduled
        finally:
            notifier.release()


async def test_a_write_after_a_quiet_spell_is_checked_at_once(tmp_path, monkeypatch) -> None:
    """While only the late re-check is pending, a new write (another process's commit) is
    checked at once, not when that re-check comes: device writes reach phones in ~30 ms."""
    monkeypatch.setattr("fieldsync.replication.notifier.RECHECK_DELAYS", (0.005, 5.0))
    with Database.open(tmp_path / "db") as db:
        counting = _CountingDatabase(db)
        notifier = ChangeNotifier(counting)  # type: ignore[arg-type]
        notifier.acquire()
        try:
            scratch = Path(db.path) / "scratch"
            scratch.write_bytes(b"1")
            while notifier._recheck is None or notifier._recheck_index != 1:
                await asyncio.sleep(0.005)  # the first re-check ran; the late one waits
            before = counting.polls
            scratch.write_bytes(b"2")
            await asyncio.wait_for(_polled_after(counting, before), 2.0)
        finally:
            notifier.release()


async def _polled_after(counting: _CountingDatabase, before: int) -> None:
    while counting.polls == before:
        await asyncio.sleep(0.005)
