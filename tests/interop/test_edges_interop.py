"""More LiteCore 3.2 (the phone) against fieldsync's listener: checkpoints in collection-aware
mode, large documents and blobs, and docID-filtered replication. Skipped without
``FIELDSYNC_LITECORE_LIB``."""

from __future__ import annotations

import random
from typing import Any

import pytest
from tests.interop.fieldsync_side import (
    TIMEOUT,
    ConnectionRecorder,
    device_docs,
    phone_docs,
    run,
    url,
    wait_for,
)
from tests.interop.litecore import LiteDatabase, pulled_doc_ids, pushed_doc_ids

listener_mod = pytest.importorskip("fieldsync.listener", reason="fieldsync.listener not importable")
store_mod = pytest.importorskip("fieldsync.store", reason="fieldsync.store not importable")


@pytest.fixture
def listener(listener: Any, connections: ConnectionRecorder) -> Any:
    """conftest's listener, with every connection it makes recorded."""
    return listener


async def test_named_collections_resume_from_checkpoints(
    listener: Any, device_db: Any, phone: LiteDatabase, connections: ConnectionRecorder
) -> None:
    """Collection-aware mode keeps checkpoints through ``getCollections``: a second run moves
    nothing, a third only what changed, in the right collection."""
    names = ["field.readings", "field.notes"]
    readings = device_db.create_collection("readings", "field")
    notes = device_db.create_collection("notes", "field")
    with device_db.transaction():
        for i in range(60):
            readings.save_document(f"r{i}", {"t": i / 2})
            notes.save_document(f"n{i}", {"text": f"note {i}"})
    for name in names:
        phone.create_collection(name)
    for i in range(40):
        phone.put(f"p{i}", {"from": "phone", "i": i}, collection="field.notes")

    def sync() -> Any:
        return phone.replicator(url(listener), collections=names)

    with sync() as repl:
        assert not (await run(repl)).error
        assert len(repl.documents_ended) == 160
    mark = connections.mark()
    with sync() as repl:
        status = await run(repl)
        assert not status.error, status
        assert repl.documents_ended == []
    totals = connections.totals(since=mark)
    assert (totals["docs_in"], totals["docs_out"], totals["connections"]) == (0, 0, 1), totals

    readings.save_document("r-new", {"t": 99})
    phone.put("p-new", {"from": "phone"}, collection="field.readings")
    mark = connections.mark()
    with sync() as repl:
        assert not (await run(repl)).error
        moved = {(d.pushing, d.collection, d.doc_id) for d in repl.documents_ended}
    assert moved == {(False, "field.readings", "r-new"), (True, "field.readings", "p-new")}
    totals = connections.totals(since=mark)
    assert (totals["docs_in"], totals["docs_out"]) == (1, 1), totals
    for name, collection in (("field.readings", readings), ("field.notes", notes)):
        assert device_docs(collection) == phone_docs(phone, name)


async def test_large_documents_and_blobs(
    listener: Any, device_db: Any, phone: LiteDatabase
) -> None:
    """Bodies of megabytes and blobs of several MB cross in both directions intact."""
    rng = random.Random(7)
    device = device_db.default_collection
    device_blob = rng.randbytes(6_000_000)
    digest = device_db.blobs.put(device_blob)
    device_body = {
        "text": "".join(rng.choice("abcdefgh ") for _ in range(1_500_000)),
        "scan": {
            "@type": "blob",
            "digest": digest,
            "length": len(device_blob),
            "content_type": "application/octet-stream",
        },
    }
    device.save_document("big-device", device_body)
    phone_blob_data = rng.randbytes(5_000_000)
    phone_blob = phone.put_blob(phone_blob_data, "image/tiff")
    phone.put("big-phone", {"samples": list(range(150_000)), "image": phone_blob})
    with phone.replicator(url(listener)) as repl:
        status = await run(repl)
        assert not status.error, status
        assert pushed_doc_ids(repl.documents_ended) == {"big-phone"}
        assert pulled_doc_ids(repl.documents_ended) == {"big-device"}
    assert phone.get_blob(digest) == device_blob
    assert device_db.blobs.read(phone_blob["digest"]) == phone_blob_data
    assert phone_docs(phone) == device_docs(device)


async def test_document_larger_than_memory_allowance_arrives_intact(
    listener: Any, device_db: Any, any_phone: LiteDatabase
) -> None:
    """A 24 MB document from each kind of phone: the listener keeps it in a spool file while
    it arrives (issue 11, bounded memory per connection), stores it intact, and keeps no
    spooled bytes once the replication is over."""
    from fieldsync.blip.spool import SPOOL_BUDGET

    rng = random.Random(11)
    piece = "".join(rng.choice("abcdefghij ") for _ in range(1_000_000))
    body = {"log": [f"{i}:{piece}" for i in range(24)], "kind": "field log"}
    any_phone.put("huge", body)
    spooled_before, used_before = SPOOL_BUDGET.total, SPOOL_BUDGET.used
    with any_phone.replicator(url(listener), push=True, pull=False) as repl:
        status = await run(repl)
        assert not status.error, status
        assert pushed_doc_ids(repl.documents_ended) == {"huge"}
    assert device_db.default_collection.get_document("huge").body == body
    assert SPOOL_BUDGET.total - spooled_before >= 24_000_000
    await wait_for(lambda: SPOOL_BUDGET.used == used_before)


async def test_doc_ids_filter(listener: Any, device_db: Any, phone: LiteDatabase) -> None:
    """LiteCore's docIDs option: a pull asks for those documents only (subChanges body), live
    changes to other documents stay on the device, and a push sends only the listed ones."""
    device = device_db.default_collection
    with device_db.transaction():
        for i in range(20):
            device.save_document(f"d{i}", {"i": i})
    with phone.replicator(url(listener), push=False, doc_ids=["d3", "d7", "absent"]) as repl:
        assert not (await run(repl)).error
        assert pulled_doc_ids(repl.documents_ended) == {"d3", "d7"}
    assert set(phone_docs(phone)) == {"d3", "d7"}

    with phone.replicator(
        url(listener), push=False, continuous=True, doc_ids=["d3", "d7", "d9"]
    ) as repl:
        repl.start()
        await repl.wait_async("idle", timeout=TIMEOUT)
        await wait_for(lambda: phone.get("d9") is not None, what="d9 pulled")
        device.save_document("d10", {"i": "not listed"})
        device.save_document("d7", {"i": "listed, updated"})
        device.delete_document("d3")
        await wait_for(
            lambda: (
                phone.get("d7")["body"] == {"i": "listed, updated"} and phone.get("d3")["deleted"]
            ),
            what="listed live changes",
        )
        repl.stop()
        await repl.wait_async("stopped", timeout=TIMEOUT)
    # d10 changed first: unfiltered, it would have been announced with or before d7.
    assert phone.get("d10") is None

    for i in range(5):
        phone.put(f"p{i}", {"i": i})
    with phone.replicator(url(listener), pull=False, doc_ids=["p1", "p4"]) as repl:
        assert not (await run(repl)).error
        assert pushed_doc_ids(repl.documents_ended) == {"p1", "p4"}
    assert {d for d in device_docs(device) if d.startswith("p")} == {"p1", "p4"}
