"""The Housekeeper purges expired documents on time. Time is driven through an injected clock
and sleep, so nothing here waits for an expiration for real."""

from __future__ import annotations

import asyncio

from fieldsync.store import Collection, Database
from fieldsync.store.housekeeper import Housekeeper


class FakeTime:
    """A clock whose sleep advances it instantly (and yields to the loop)."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0.001)


async def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_expired_documents_are_purged_on_time(db: Database, coll: Collection) -> None:
    fake = FakeTime(1_000_000.0)
    for doc_id, expires in (("soon", 1_000_010.0), ("later", 1_000_500.0), ("never", None)):
        coll.save_document(doc_id, {"id": doc_id})
        coll.set_document_expiration(doc_id, expires)
    purges: list[tuple[float, set[str]]] = []

    def on_purged(_count: int) -> None:
        alive = {d for d in ("soon", "later", "never") if coll.get_document(d) is not None}
        purges.append((fake.now, alive))

    keeper = Housekeeper(
        db, clock=fake.clock, sleep=fake.sleep, poll_interval=3600.0, on_purged=on_purged
    )
    await keeper.start()
    try:
        await wait_for(lambda: len(purges) >= 2)
    finally:
        await keeper.stop()
    # Each document went at exactly its expiration time, not a moment before, not later.
    assert purges[0] == (1_000_010.0, {"later", "never"})
    assert purges[1] == (1_000_500.0, {"never"})
    assert fake.sleeps[:2] == [10.0, 490.0]
    assert keeper.purged == 2
    assert coll.changes_since(0)[0].doc_id == "never"  # purges leave nothing to replicate


async def test_setting_an_expiration_wakes_a_sleeping_housekeeper(
    db: Database, coll: Collection
) -> None:
    fake = FakeTime(5000.0)
    gate = asyncio.Event()

    async def long_sleep(delay: float) -> None:  # sleeps "forever" unless woken
        fake.sleeps.append(delay)
        await gate.wait()

    keeper = Housekeeper(db, clock=fake.clock, sleep=long_sleep, poll_interval=3600.0)
    await keeper.start()
    try:
        await wait_for(lambda: fake.sleeps == [3600.0])  # nothing due: polls hourly
        coll.save_document("temp", {"v": 1})
        coll.set_document_expiration("temp", 4999.0)  # already due
        await wait_for(lambda: coll.get_document("temp") is None)
    finally:
        await keeper.stop()
    assert not keeper.running


async def test_start_and_stop_are_idempotent(db: Database) -> None:
    keeper = Housekeeper(db)
    await keeper.stop()
    await keeper.start()
    await keeper.start()
    assert keeper.running
    await keeper.stop()
    await keeper.stop()
    assert not keeper.running
