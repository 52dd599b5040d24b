"""A real LiteCore 3.2 active replicator (Couchbase Lite's engine) against fieldsync's listener.

The phone side is an externally built ``libLiteCore.so`` driven through ``litecore.py``; the
device side is fieldsync's ``URLEndpointListener`` over a real SQLite store, on loopback.
Skipped without ``FIELDSYNC_LITECORE_LIB`` or when ``fieldsync.listener`` cannot be imported.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from tests.interop.litecore import (
    WEBSOCKET_DOMAIN,
    LiteDatabase,
    LiteReplicator,
    ReplicatorStatus,
    pulled_doc_ids,
    pushed_doc_ids,
)

listener_mod = pytest.importorskip("fieldsync.listener", reason="fieldsync.listener not importable")
store_mod = pytest.importorskip("fieldsync.store", reason="fieldsync.store not importable")
URLEndpointListener = listener_mod.URLEndpointListener
URLEndpointListenerConfiguration = listener_mod.URLEndpointListenerConfiguration
Database = store_mod.Database

TIMEOUT = 60.0


def url(server: Any, name: str = "device", scheme: str = "ws") -> str:
    return f"{scheme}://127.0.0.1:{server.port}/{name}"


async def run(repl: LiteReplicator, until: str = "stopped") -> ReplicatorStatus:
    """Start and wait without blocking the event loop the listener runs on."""
    repl.start()
    return await repl.wait_async(until, timeout=TIMEOUT)


def device_bodies(collection: Any) -> dict[str, dict[str, Any]]:
    result = {}
    for change in collection.changes_since(0):
        doc = collection.get_document(change.doc_id)
        if doc is not None:
            result[doc.doc_id] = doc.body
    return result


async def wait_for(predicate: Any, timeout: float = TIMEOUT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_push_one_shot(listener: Any, device_db: Any, phone: LiteDatabase) -> None:
    revs = {f"doc-{i:03}": phone.put(f"doc-{i:03}", {"n": i, "text": "x" * 50}) for i in range(50)}
    with phone.replicator(url(listener), pull=False) as repl:
        status = await run(repl)
        assert not status.error, status
        assert pushed_doc_ids(repl.documents_ended) == set(revs)
    device = device_db.default_collection
    assert device_bodies(device) == phone.all_docs()
    for doc_id, rev in revs.items():
        assert device.get_document(doc_id).rev_id == rev


async def test_pull_one_shot(listener: Any, device_db: Any, phone: LiteDatabase) -> None:
    device = device_db.default_collection
    for i in range(50):
        device.save_document(f"doc-{i:03}", {"n": i})
    with phone.replicator(url(listener), push=False) as repl:
        status = await run(repl)
        assert not status.error, status
        assert len(pulled_doc_ids(repl.documents_ended)) == 50
    assert phone.all_docs() == device_bodies(device)
    for i in (0, 49):
        doc = phone.get(f"doc-{i:03}")
        assert doc is not None
        assert doc["revID"] == device.get_document(f"doc-{i:03}").rev_id


async def test_updates_and_tombstones_both_ways(
    listener: Any, device_db: Any, phone: LiteDatabase
) -> None:
    device = device_db.default_collection
    phone.put("p", {"v": 1})
    device.save_document("d", {"v": 1})
    with phone.replicator(url(listener)) as repl:
        assert not (await run(repl)).error
    phone.put("p", {"v": 2})
    phone.delete("d")
    device.save_document("d2", {"v": 1})
    with phone.replicator(url(listener)) as repl:
        status = await run(repl)
        assert not status.error, status
    assert device.get_document("p").body == {"v": 2}
    assert device.get_document("d") is None
    revision = device.get_revision("d")
    assert revision is not None and revision.deleted
    assert phone.all_docs() == {"p": {"v": 2}, "d2": {"v": 1}}


async def test_blobs_both_ways(listener: Any, device_db: Any, phone: LiteDatabase) -> None:
    phone_data = bytes(range(256)) * 400
    blob = phone.put_blob(phone_data, "image/jpeg")
    phone.put("photo", {"img": blob})
    device_data = b"sensor-trace" * 3000
    digest = device_db.blobs.put(device_data)
    device_db.default_collection.save_document(
        "trace",
        {
            "nested": [
                {
                    "@type": "blob",
                    "digest": digest,
                    "length": len(device_data),
                    "content_type": "application/octet-stream",
                }
            ]
        },
    )
    with phone.replicator(url(listener)) as repl:
        status = await run(repl)
        assert not status.error, status
    assert device_db.blobs.read(blob["digest"]) == phone_data
    assert phone.get_blob(digest) == device_data


async def test_named_collections(device_db: Any, phone: LiteDatabase) -> None:
    readings = device_db.create_collection("readings", "field")
    notes = device_db.create_collection("notes", "field")
    config = URLEndpointListenerConfiguration(
        collections=[readings, notes], port=0, disable_tls=True
    )
    async with URLEndpointListener(config) as server:
        phone.create_collection("field.readings")
        phone.create_collection("field.notes")
        phone.put("r1", {"t": 21.5}, collection="field.readings")
        notes.save_document("n1", {"text": "hello"})
        repl = phone.replicator(url(server), collections=["field.readings", "field.notes"])
        with repl:
            status = await run(repl)
            assert not status.error, status
        assert readings.get_document("r1").body == {"t": 21.5}
        assert phone.all_docs("field.notes") == {"n1": {"text": "hello"}}
        phone.create_collection("field.absent")
        with phone.replicator(url(server), push=False, collections=["field.absent"]) as repl:
            status = await run(repl)
        assert status.error, status


async def test_continuous_both_ways(listener: Any, device_db: Any, phone: LiteDatabase) -> None:
    device = device_db.default_collection
    with phone.replicator(url(listener), continuous=True) as repl:
        await run(repl, until="idle")
        phone.put("from-phone", {"v": 1})
        await wait_for(lambda: device.get_document("from-phone") is not None)
        device.save_document("from-device", {"v": 2})
        await wait_for(lambda: phone.get("from-device") is not None)
        assert repl.status.level in ("idle", "busy")
        repl.stop()
        status = await repl.wait_async("stopped", timeout=TIMEOUT)
        assert not status.error, status


async def test_conflict_then_resolution(listener: Any, device_db: Any, phone: LiteDatabase) -> None:
    device = device_db.default_collection
    phone.put("shared", {"v": 0})
    with phone.replicator(url(listener), pull=False) as repl:
        assert not (await run(repl)).error
    base = phone.get("shared")["revID"]
    device.save_document("shared", {"v": "device"}, expected_rev=base)
    phone.put("shared", {"v": "phone"})
    with phone.replicator(url(listener), pull=False) as repl:
        await run(repl)
        failed = [d for d in repl.documents_ended if d.doc_id == "shared" and d.error]
        assert failed and failed[0].error.code == 409, repl.documents_ended
    assert device.get_document("shared").body == {"v": "device"}
    with phone.replicator(url(listener), push=False) as repl:
        assert not (await run(repl)).error
    doc = phone.get("shared")
    assert doc is not None and doc["conflicted"]
    leaves = phone.leaf_revisions("shared")
    device_rev = device.get_document("shared").rev_id
    phone_rev = next(leaf["revID"] for leaf in leaves if leaf["revID"] != device_rev)
    phone.resolve_conflict("shared", device_rev, phone_rev, {"v": "merged"})
    with phone.replicator(url(listener), pull=False) as repl:
        status = await run(repl)
        assert not status.error, status
    assert device.get_document("shared").body == {"v": "merged"}


async def test_basic_auth(device_db: Any, phone: LiteDatabase) -> None:
    auth_mod = pytest.importorskip("fieldsync.listener.auth")
    auth = auth_mod.ListenerPasswordAuthenticator(
        lambda user, password: (user, password) == ("alice", "s3cret")
    )
    config = URLEndpointListenerConfiguration(
        database=device_db, port=0, disable_tls=True, authenticator=auth
    )
    async with URLEndpointListener(config) as server:
        phone.put("a", {"v": 1})
        with phone.replicator(url(server), username="alice", password="wrong") as repl:
            status = await run(repl)
        assert (status.error.domain, status.error.code) == (WEBSOCKET_DOMAIN, 401), status
        with phone.replicator(url(server), username="alice", password="s3cret") as repl:
            status = await run(repl)
        assert not status.error, status
    assert device_db.default_collection.get_document("a").body == {"v": 1}


async def test_tls_with_pinned_certificate(device_db: Any, phone: LiteDatabase) -> None:
    config = URLEndpointListenerConfiguration(database=device_db, port=0)
    async with URLEndpointListener(config) as server:
        pem = server.tls_identity.certificate_pem(chain=False)
        phone.put("secure", {"v": 1})
        with phone.replicator(url(server, scheme="wss"), pinned_cert_pem=pem) as repl:
            status = await run(repl)
        assert not status.error, status
        # Without pinning or self-signed acceptance, the anonymous certificate is untrusted.
        with phone.replicator(url(server, scheme="wss")) as repl:
            status = await run(repl)
        assert status.error, status
    assert device_db.default_collection.get_document("secure").body == {"v": 1}


async def test_tls_self_signed_only(device_db: Any, phone: LiteDatabase) -> None:
    config = URLEndpointListenerConfiguration(database=device_db, port=0)
    async with URLEndpointListener(config) as server:
        phone.put("ss", {"v": 1})
        with phone.replicator(url(server, scheme="wss"), self_signed_only=True) as repl:
            status = await run(repl)
        assert not status.error, status
    assert device_db.default_collection.get_document("ss").body == {"v": 1}
