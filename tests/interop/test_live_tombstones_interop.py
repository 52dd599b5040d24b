"""Deletions made on the device during a continuous pull reach LiteCore 3.2 (the phone).

A phone pulling into an empty database with no checkpoint sends ``subChanges`` with
``activeOnly: true`` (LiteCore's ``Replicator::getLocalCheckpoint``). LiteCore's own passive
side applies that only to the initial dump of existing documents: live changes, tombstones
included, are always sent (``ChangesFeed::getObservedChanges``: "skipDeletions applies only to
the initial dump of existing docs, not to 'live' changes"). Skipped without
``FIELDSYNC_LITECORE_LIB``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.interop.fieldsync_side import (
    TIMEOUT,
    device_docs,
    log_size,
    logged_messages,
    phone_docs,
    run,
    url,
    wait_for,
)
from tests.interop.litecore import LiteDatabase

listener_mod = pytest.importorskip("fieldsync.listener", reason="fieldsync.listener not importable")
store_mod = pytest.importorskip("fieldsync.store", reason="fieldsync.store not importable")


@pytest.fixture
def device_db(tmp_path: Path) -> Iterator[Any]:
    db = store_mod.Database.open(tmp_path / "device", create=True)
    for i in range(3):
        db.default_collection.save_document(f"r{i}", {"i": i})
    yield db
    db.close()


async def test_live_deletion_reaches_a_fresh_phone(
    listener: Any, device_db: Any, phone: LiteDatabase, litecore_log: Path | None
) -> None:
    """Known fieldsync bug (fails until fixed): the passive Pusher keeps ``activeOnly`` for
    live changes, so the tombstone is never announced; the phone's checkpoint then moves past
    its sequence with the next live change, and even a later one-shot pull does not bring the
    deletion: the document stays alive on the phone for good."""
    device = device_db.default_collection
    start = log_size(litecore_log)
    with phone.replicator(url(listener), push=False, continuous=True) as repl:
        repl.start()
        await repl.wait_async("idle", timeout=TIMEOUT)
        await wait_for(lambda: len(phone_docs(phone)) == 3, what="initial pull")
        device.delete_document("r0")
        device.save_document("after-delete", {"v": 1})
        await wait_for(lambda: phone.get("after-delete") is not None, what="live change")
        if litecore_log is not None:
            sub = [m for m in logged_messages(litecore_log, start) if m.profile == "subChanges"]
            assert sub and sub[0].properties.get("activeOnly") == "true", sub
        try:
            await wait_for(lambda: phone.get("r0")["deleted"], timeout=5, what="live deletion")
        finally:
            repl.stop()
            await repl.wait_async("stopped", timeout=TIMEOUT)
    # Whatever happened live, a new one-shot pull must leave the phone equal to the device.
    with phone.replicator(url(listener), push=False) as repl:
        status = await run(repl)
        assert not status.error, status
    assert phone.get("r0")["deleted"]
    assert phone_docs(phone) == device_docs(device)


async def test_deletion_after_a_pull_into_empty_db(
    listener: Any, device_db: Any, phone: LiteDatabase
) -> None:
    """Control: once the phone has a checkpoint and documents it no longer sends activeOnly,
    and a deletion made between two one-shot pulls arrives."""
    device = device_db.default_collection
    with phone.replicator(url(listener), push=False) as repl:
        assert not (await run(repl)).error
    assert len(phone_docs(phone)) == 3
    # Second pull: the phone has a checkpoint and documents, so no activeOnly; works.
    device.delete_document("r1")
    with phone.replicator(url(listener), push=False) as repl:
        assert not (await run(repl)).error
    assert phone.get("r1")["deleted"]
    assert phone_docs(phone) == device_docs(device)
