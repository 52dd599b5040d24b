"""COMPACT running in a loop while a phone pushes documents with blobs to a real listener on
loopback. Some of the phone's blobs already sit on the device as orphans (old, unreferenced):
the puller claims them instead of fetching them, and the collector must never remove one that a
revision being received relies on. Afterwards every document's blobs are stored and
INTEGRITY_CHECK is clean."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

from fieldsync.listener import URLEndpointListener, URLEndpointListenerConfiguration
from fieldsync.replicator import Replicator, ReplicatorConfiguration, ReplicatorType
from fieldsync.store import Database, MaintenancePolicy, MaintenanceType, find_blobs


def _photo(i: int) -> bytes:
    return (f"photo {i} ".encode()) * 2000


async def test_compaction_while_a_phone_pushes_blobs(tmp_path: Path) -> None:
    device = Database.open(tmp_path / "device")
    phone = Database.open(tmp_path / "phone")
    # Orphans on the device: half of them are photos the phone is about to send again.
    old = time.time() - 7200
    for i in range(60):
        digest = device.blobs.put(_photo(i))
        os.utime(device.blobs.path_for(digest), (old, old))
    reused = [phone.blobs.put(_photo(i)) for i in range(0, 60, 2)]
    fresh = [phone.blobs.put(f"new photo {i}".encode() * 3000) for i in range(20)]
    for n, digest in enumerate(reused + fresh):
        phone.default_collection.save_document(
            f"doc-{n}", {"photo": {"@type": "blob", "digest": digest, "length": 1}}
        )

    # Worst timing, every time: a compaction runs right before each batch of received
    # revisions is committed, i.e. after the puller decided their blobs were already here.
    coll = device.default_collection
    insert = coll.insert_revisions

    first_insert = threading.Event()

    def compact_then_insert(revs):  # type: ignore[no-untyped-def]
        device.perform_maintenance(MaintenanceType.COMPACT, policy=MaintenancePolicy(vacuum=False))
        first_insert.set()
        return insert(revs)

    coll.insert_revisions = compact_then_insert  # type: ignore[method-assign]
    stop = threading.Event()
    runs: list[int] = []
    errors: list[BaseException] = []

    def compact_forever() -> None:
        policy = MaintenancePolicy(vacuum=False)  # default grace: an hour
        try:
            first_insert.wait(timeout=30)  # from then on, also compact at any moment
            while not stop.is_set():
                device.perform_maintenance(MaintenanceType.COMPACT, policy=policy)
                runs.append(1)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    compactor = threading.Thread(target=compact_forever)
    compactor.start()
    config = URLEndpointListenerConfiguration(database=device, port=0, disable_tls=True)
    try:
        async with URLEndpointListener(config) as listener:
            url = f"ws://127.0.0.1:{listener.port}/{device.name}"
            result = await Replicator(
                ReplicatorConfiguration(
                    database=phone, url=url, replicator_type=ReplicatorType.PUSH
                )
            ).run()
            await asyncio.sleep(0.2)  # a few more compactions after the last commit
    finally:
        stop.set()
        await asyncio.to_thread(compactor.join)
    try:
        assert not errors and len(runs) > 1
        assert result.errors == 0 and result.docs_pushed == 50
        for n in range(50):
            doc = coll.get_document(f"doc-{n}")
            assert doc is not None
            for blob in find_blobs(doc.body):
                assert device.blobs.has(blob["digest"]), f"blob of doc-{n} was collected"
        check = device.perform_maintenance(MaintenanceType.INTEGRITY_CHECK)
        assert check.ok, check.problems
        # the 30 orphans the phone did not send again are gone; the 50 in use stay
        assert len(list(device.blobs.digests())) == 50
    finally:
        device.close()
        phone.close()
