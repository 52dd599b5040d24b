"""Volume and checkpoint resume: LiteCore 3.2 (the phone) against fieldsync's listener.

1,000 documents each way in one-shot replications, compared body by body and revID by revID;
then the same replication again must move nothing (both sides' checkpoints), and only new
documents move after that. Skipped without ``FIELDSYNC_LITECORE_LIB``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.interop.fieldsync_side import ConnectionRecorder, device_docs, phone_docs, run, url
from tests.interop.litecore import LiteDatabase, pulled_doc_ids, pushed_doc_ids

listener_mod = pytest.importorskip("fieldsync.listener", reason="fieldsync.listener not importable")
store_mod = pytest.importorskip("fieldsync.store", reason="fieldsync.store not importable")

COUNT = 1_000


def _body(origin: str, i: int) -> dict[str, Any]:
    """A document with every JSON type, nesting, non-ASCII text and a varying size."""
    return {
        "origin": origin,
        "n": i,
        "neg": -i * 7919,
        "big": 2**53 - i,
        "ratio": i / 8,
        "ok": i % 3 == 0,
        "none": None,
        "tags": [f"t{i % 5}", "ünïcødé ✓", {"depth": [i, [i + 1]]}],
        "text": ("field note " * (1 + i % 40))[: 20 + (i * 37) % 900],
        "nested": {"a": {"b": {"c": f"{origin}-{i}"}}},
    }


@pytest.fixture
def listener(listener: Any, connections: ConnectionRecorder) -> Any:
    """conftest's listener, with every connection it makes recorded."""
    return listener


def _fill_device(device_db: Any, ids: list[str], origin: str) -> None:
    collection = device_db.default_collection
    with device_db.transaction():
        for i, doc_id in enumerate(ids):
            collection.save_document(doc_id, _body(origin, i))


def _fill_phone(phone: LiteDatabase, ids: list[str], origin: str) -> None:
    with phone.transaction():
        for i, doc_id in enumerate(ids):
            phone.put(doc_id, _body(origin, i))


def _assert_same(device_db: Any, phone: LiteDatabase) -> None:
    on_device = device_docs(device_db.default_collection)
    on_phone = phone_docs(phone)
    assert on_device.keys() == on_phone.keys()
    different = [d for d in on_device if on_device[d] != on_phone[d]]
    assert not different, [(d, on_device[d], on_phone[d]) for d in different[:3]]


async def test_thousand_docs_push_then_pull(
    listener: Any, device_db: Any, phone: LiteDatabase, litecore: Any, tmp_path: Path
) -> None:
    phone_ids = [f"phone-{i:04}" for i in range(COUNT)]
    _fill_phone(phone, phone_ids, "phone")
    with phone.replicator(url(listener), pull=False) as repl:
        status = await run(repl)
        assert not status.error, status
        assert pushed_doc_ids(repl.documents_ended) == set(phone_ids)
    _assert_same(device_db, phone)

    # A fresh phone pulls everything back: same bodies, same revIDs.
    fresh = litecore.open_db(tmp_path / "fresh", "fresh")
    try:
        with fresh.replicator(url(listener), push=False) as repl:
            status = await run(repl)
            assert not status.error, status
            assert pulled_doc_ids(repl.documents_ended) == set(phone_ids)
        assert phone_docs(fresh) == phone_docs(phone)
    finally:
        fresh.close()


async def test_thousand_docs_each_way_at_once(
    listener: Any, device_db: Any, phone: LiteDatabase, connections: ConnectionRecorder
) -> None:
    phone_ids = [f"phone-{i:04}" for i in range(COUNT)]
    device_ids = [f"device-{i:04}" for i in range(COUNT)]
    _fill_phone(phone, phone_ids, "phone")
    _fill_device(device_db, device_ids, "device")
    with phone.replicator(url(listener)) as repl:
        status = await run(repl)
        assert not status.error, status
        assert pushed_doc_ids(repl.documents_ended) == set(phone_ids)
        assert pulled_doc_ids(repl.documents_ended) == set(device_ids)
        assert not [d for d in repl.documents_ended if d.error]
    _assert_same(device_db, phone)
    assert len(device_docs(device_db.default_collection)) == 2 * COUNT
    totals = connections.totals()
    assert totals["docs_in"] == COUNT and totals["docs_out"] == COUNT, totals
    assert totals["errors"] == 0, totals


async def test_checkpoints_resume_and_only_new_docs_move(
    listener: Any, device_db: Any, phone: LiteDatabase, connections: ConnectionRecorder
) -> None:
    device = device_db.default_collection
    _fill_phone(phone, [f"phone-{i:03}" for i in range(300)], "phone")
    _fill_device(device_db, [f"device-{i:03}" for i in range(300)], "device")

    with phone.replicator(url(listener)) as repl:
        assert not (await run(repl)).error
        assert len(repl.documents_ended) == 600
    first = connections.totals()
    assert (first["docs_in"], first["docs_out"], first["connections"]) == (300, 300, 1), first

    # Same replication again: both checkpoints hold, nothing is announced or sent.
    mark = connections.mark()
    with phone.replicator(url(listener)) as repl:
        status = await run(repl)
        assert not status.error, status
        assert repl.documents_ended == []
        assert status.document_count == 0, status
    again = connections.totals(since=mark)
    assert again["connections"] == 1, again
    assert (again["docs_in"], again["docs_out"]) == (0, 0), again

    # New and updated documents on both sides: exactly those move.
    mark = connections.mark()
    phone.put("phone-new", {"v": "new on phone"})
    phone.put("phone-007", {"v": "edited on phone"})
    device.save_document("device-new", {"v": "new on device"})
    device.save_document("device-042", {"v": "edited on device"})
    with phone.replicator(url(listener)) as repl:
        status = await run(repl)
        assert not status.error, status
        assert pushed_doc_ids(repl.documents_ended) == {"phone-new", "phone-007"}
        assert pulled_doc_ids(repl.documents_ended) == {"device-new", "device-042"}
        assert len(repl.documents_ended) == 4
    third = connections.totals(since=mark)
    assert (third["docs_in"], third["docs_out"]) == (2, 2), third
    _assert_same(device_db, phone)

    # And once more: nothing.
    mark = connections.mark()
    with phone.replicator(url(listener)) as repl:
        assert not (await run(repl)).error
        assert repl.documents_ended == []
    last = connections.totals(since=mark)
    assert (last["docs_in"], last["docs_out"], last["connections"]) == (0, 0, 1), last
