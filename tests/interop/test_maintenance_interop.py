"""Maintenance against a real LiteCore 3.2 phone (issue 14). Skipped without
``FIELDSYNC_LITECORE_LIB``.

- Tombstones a phone has not pulled yet survive COMPACT (its checkpoint holds them back), reach
  the phone on its next pull, and are purged by the COMPACT after that.
- A phone pushes a document whose blob already sits on the device as an old orphan; a COMPACT
  runs right before the revision is committed; the blob survives (the puller claimed it).
- Blobs replaced on the device are collected, and the phone still pulls the current ones.
- A purge on the device does not reach the phone.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from tests.interop.fieldsync_side import run, url
from tests.interop.litecore import LiteDatabase

listener_mod = pytest.importorskip("fieldsync.listener", reason="fieldsync.listener not importable")
store_mod = pytest.importorskip("fieldsync.store", reason="fieldsync.store not importable")

DAY = 86400.0


def _compact(db: Any, now: float, **policy: Any) -> Any:
    return db.perform_maintenance(
        store_mod.MaintenanceType.COMPACT,
        policy=store_mod.MaintenancePolicy(
            tombstone_purge_interval=DAY, clock=lambda: now, **policy
        ),
    )


async def test_tombstones_wait_for_the_phone_then_go(
    listener: Any, device_db: Any, phone: LiteDatabase
) -> None:
    coll = device_db.default_collection
    for i in range(5):
        coll.save_document(f"n{i}", {"i": i})
    now = time.time()
    with phone.replicator(url(listener), push=False) as repl:
        status = await run(repl)
    assert not status.error, status
    assert phone.count() == 5
    for i in range(3):
        coll.delete_document(f"n{i}")
    _compact(device_db, now)  # samples the sequence clock
    result = _compact(device_db, now + 2 * DAY)
    assert result.tombstones_purged == 0 and result.tombstones_held == 3
    with phone.replicator(url(listener), push=False) as repl:
        status = await run(repl)
    assert not status.error, status
    assert all(phone.get(f"n{i}")["deleted"] for i in range(3))
    assert not phone.get("n3")["deleted"]
    result = _compact(device_db, now + 3 * DAY)
    assert result.tombstones_purged == 3
    assert coll.count(include_deleted=True) == 2
    # The phone, fully synced, pulls again: nothing changes on it.
    with phone.replicator(url(listener), push=False) as repl:
        status = await run(repl)
    assert not status.error, status
    assert phone.count() == 2


async def test_orphan_blob_claimed_by_a_phone_push_survives_compaction(
    listener: Any, device_db: Any, phone: LiteDatabase
) -> None:
    photo = b"the same photo, sent twice" * 4000
    digest = device_db.blobs.put(photo)
    old = time.time() - 7200
    os.utime(device_db.blobs.path_for(digest), (old, old))  # an old orphan on the device
    blob = phone.put_blob(photo, "image/jpeg")
    assert blob["digest"] == digest
    phone.put("cam", {"photo": blob})
    coll = device_db.default_collection
    insert = coll.insert_revisions
    runs: list[Any] = []

    def compact_then_insert(revs: Any) -> Any:
        runs.append(_compact(device_db, time.time()))  # worst moment: just before commit
        return insert(revs)

    coll.insert_revisions = compact_then_insert
    with phone.replicator(url(listener), pull=False) as repl:
        status = await run(repl)
    assert not status.error, status
    assert runs
    doc = coll.get_document("cam")
    assert doc is not None and device_db.blobs.read(doc.body["photo"]["digest"]) == photo
    assert device_db.perform_maintenance(store_mod.MaintenanceType.INTEGRITY_CHECK).ok


async def test_replaced_blobs_collected_current_ones_pulled(
    listener: Any, device_db: Any, phone: LiteDatabase
) -> None:
    coll = device_db.default_collection
    blobs = device_db.blobs
    for version in range(3):
        data = f"photo version {version}".encode() * 5000
        coll.save_document("cam", {"photo": {"@type": "blob", "digest": blobs.put(data)}})
    coll.save_document("gone", {"v": 1})
    coll.purge("gone")
    result = _compact(device_db, time.time(), blob_grace=0.0)
    assert result.blobs_removed == 2 and len(list(blobs.digests())) == 1
    with phone.replicator(url(listener), push=False) as repl:
        status = await run(repl)
    assert not status.error, status
    pulled = phone.get("cam")
    assert pulled is not None
    assert phone.get_blob(pulled["body"]["photo"]) == b"photo version 2" * 5000
    assert phone.get("gone") is None  # a purge leaves nothing to replicate
