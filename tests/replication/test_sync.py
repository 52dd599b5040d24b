"""Our active Replicator against our URLEndpointListener, over real loopback WebSockets."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest

from fieldsync.listener import URLEndpointListener, URLEndpointListenerConfiguration
from fieldsync.replicator import Replicator, ReplicatorConfiguration, ReplicatorType
from fieldsync.store import Database

PUSH, PULL, BOTH = ReplicatorType.PUSH, ReplicatorType.PULL, ReplicatorType.PUSH_AND_PULL


def replicator(db: Database, url: str, kind: ReplicatorType, **kwargs) -> Replicator:
    return Replicator(ReplicatorConfiguration(database=db, url=url, replicator_type=kind, **kwargs))


def bodies(collection) -> dict[str, dict]:
    result = {}
    for change in collection.changes_since(0):
        doc = collection.get_document(change.doc_id)
        if doc is not None:
            result[doc.doc_id] = doc.body
    return result


async def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_push_1000_documents(url_of, listener, device_db, phone_db) -> None:
    phone = phone_db.default_collection
    for i in range(1000):
        phone.save_document(f"doc-{i:04}", {"n": i, "text": "x" * 100})
    result = await replicator(phone_db, url_of(listener), PUSH).run()
    assert result.docs_pushed == 1000 and result.errors == 0
    assert bodies(device_db.default_collection) == bodies(phone)
    for i in (0, 999):
        assert (
            device_db.default_collection.get_document(f"doc-{i:04}").rev_id
            == phone.get_document(f"doc-{i:04}").rev_id
        )


async def test_pull_1000_documents(url_of, listener, device_db, phone_db) -> None:
    device = device_db.default_collection
    for i in range(1000):
        device.save_document(f"doc-{i:04}", {"n": i})
    result = await replicator(phone_db, url_of(listener), PULL).run()
    assert result.docs_pulled == 1000 and result.errors == 0
    assert bodies(phone_db.default_collection) == bodies(device)


async def test_checkpoint_resume_sends_nothing_twice(url_of, listener, device_db, phone_db) -> None:
    phone = phone_db.default_collection
    device = device_db.default_collection
    for i in range(50):
        phone.save_document(f"p{i}", {"i": i})
        device.save_document(f"d{i}", {"i": i})
    first = await replicator(phone_db, url_of(listener), BOTH).run()
    assert (first.docs_pushed, first.docs_pulled) == (50, 50)
    again = await replicator(phone_db, url_of(listener), BOTH).run()
    assert (again.docs_pushed, again.docs_pulled) == (0, 0)
    phone.save_document("p-new", {"new": True})
    device.save_document("d-new", {"new": True})
    third = await replicator(phone_db, url_of(listener), BOTH).run()
    assert (third.docs_pushed, third.docs_pulled) == (1, 1)


async def test_tombstones_replicate_both_ways(url_of, listener, device_db, phone_db) -> None:
    phone = phone_db.default_collection
    device = device_db.default_collection
    phone.save_document("gone-from-phone", {"a": 1})
    device.save_document("gone-from-device", {"b": 2})
    await replicator(phone_db, url_of(listener), BOTH).run()
    phone.delete_document("gone-from-phone")
    device.delete_document("gone-from-device")
    await replicator(phone_db, url_of(listener), BOTH).run()
    assert device.get_document("gone-from-phone") is None
    assert phone.get_document("gone-from-device") is None
    assert device.get_revision("gone-from-phone").deleted
    assert phone.get_revision("gone-from-device").deleted


async def test_blobs_both_ways(url_of, listener, device_db, phone_db) -> None:
    phone_blob = bytes(range(256)) * 1000
    device_blob = b"sensor-trace" * 5000
    digest_p = phone_db.blobs.put(phone_blob)
    digest_d = device_db.blobs.put(device_blob)
    blob = {"@type": "blob", "content_type": "application/octet-stream"}
    phone_db.default_collection.save_document(
        "photo", {"img": {**blob, "digest": digest_p, "length": len(phone_blob)}}
    )
    device_db.default_collection.save_document(
        "trace", {"nested": {"list": [{**blob, "digest": digest_d, "length": len(device_blob)}]}}
    )
    result = await replicator(phone_db, url_of(listener), BOTH).run()
    assert result.errors == 0, result.last_error
    assert device_db.blobs.read(digest_p) == phone_blob
    assert phone_db.blobs.read(digest_d) == device_blob


async def test_conflict_is_refused_then_merge_lands(url_of, listener, device_db, phone_db) -> None:
    phone = phone_db.default_collection
    device = device_db.default_collection
    phone.save_document("shared", {"v": 0})
    await replicator(phone_db, url_of(listener), PUSH).run()
    base = phone.get_document("shared").rev_id
    device.save_document("shared", {"v": "device"}, expected_rev=base)
    phone.save_document("shared", {"v": "phone"}, expected_rev=base)
    pushed = await replicator(phone_db, url_of(listener), PUSH).run()
    assert pushed.docs_pushed == 0
    assert [doc for doc, _ in pushed.conflicts] == ["shared"]
    assert device.get_document("shared").body == {"v": "device"}
    # Pull brings the device's branch: the phone now holds a conflict to resolve.
    await replicator(phone_db, url_of(listener), PULL).run()
    leaves = phone.leaf_revisions("shared")
    assert len(leaves) == 2
    # Resolve on the phone: a merge on top of the device's revision, losing branch deleted.
    device_rev = device.get_document("shared").rev_id
    phone_rev = next(r for r in leaves if r != device_rev)
    phone.resolve_conflict(
        "shared", winning_rev=device_rev, losing_rev=phone_rev, body={"v": "merged"}
    )
    merged = await replicator(phone_db, url_of(listener), PUSH).run()
    assert merged.errors == 0 and merged.docs_pushed == 1
    assert device.get_document("shared").body == {"v": "merged"}


async def test_collections(url_of, device_db, phone_db) -> None:
    device_a = device_db.create_collection("readings", "field")
    device_b = device_db.create_collection("notes", "field")
    config = URLEndpointListenerConfiguration(
        collections=[device_a, device_b], port=0, disable_tls=True
    )
    async with URLEndpointListener(config) as server:
        phone_a = phone_db.create_collection("readings", "field")
        phone_b = phone_db.create_collection("notes", "field")
        phone_a.save_document("r1", {"t": 21.5})
        device_b.save_document("n1", {"text": "hello"})
        result = await replicator(
            phone_db, url_of(server), BOTH, collections=[phone_a, phone_b]
        ).run()
        assert result.errors == 0, result.last_error
        assert device_a.get_document("r1").body == {"t": 21.5}
        assert phone_b.get_document("n1").body == {"text": "hello"}
        missing = phone_db.create_collection("absent", "field")
        with pytest.raises(Exception, match="not found"):
            await replicator(phone_db, url_of(server), PULL, collections=[missing]).run()


async def test_continuous_both_ways_with_edits(url_of, listener, device_db, phone_db) -> None:
    phone = phone_db.default_collection
    device = device_db.default_collection
    repl = replicator(phone_db, url_of(listener), BOTH, continuous=True)
    task = asyncio.create_task(repl.run())
    try:
        phone.save_document("from-phone", {"n": 1})
        await wait_for(lambda: device.get_document("from-phone") is not None)
        device.save_document("from-device", {"n": 2})
        await wait_for(lambda: phone.get_document("from-device") is not None)
        rev = device.get_document("from-phone").rev_id
        device.save_document("from-phone", {"n": 3}, expected_rev=rev)
        await wait_for(lambda: phone.get_document("from-phone").body == {"n": 3})
        assert listener.status.connection_count == 1
    finally:
        repl.stop()
        await asyncio.wait_for(task, 10)


async def test_another_process_writing_reaches_a_continuous_pull(
    url_of, listener, device_db, phone_db
) -> None:
    repl = replicator(phone_db, url_of(listener), PULL, continuous=True)
    task = asyncio.create_task(repl.run())
    try:
        writer = textwrap.dedent(
            f"""
            from fieldsync.store import Database
            db = Database.open({str(device_db.path)!r})
            db.default_collection.save_document("from-sensor-daemon", {{"temp": 19.25}})
            db.close()
            """
        )
        await asyncio.to_thread(subprocess.run, [sys.executable, "-c", writer], check=True)
        phone = phone_db.default_collection
        await wait_for(lambda: phone.get_document("from-sensor-daemon") is not None)
        assert phone.get_document("from-sensor-daemon").body == {"temp": 19.25}
    finally:
        repl.stop()
        await asyncio.wait_for(task, 10)


async def test_stopping_the_listener_closes_connections_with_1001(
    url_of, device_db, phone_db
) -> None:
    config = URLEndpointListenerConfiguration(database=device_db, port=0, disable_tls=True)
    server = URLEndpointListener(config)
    await server.start()
    repl = replicator(phone_db, url_of(server), PULL, continuous=True)
    task = asyncio.create_task(repl.run())
    await wait_for(lambda: server.status.connection_count == 1)
    await server.stop()
    assert server.port is None
    with pytest.raises(Exception, match="1001"):
        await asyncio.wait_for(task, 10)


async def test_read_only_listener_refuses_push_and_serves_pull(url_of, device_db, phone_db) -> None:
    device_db.default_collection.save_document("d", {"x": 1})
    config = URLEndpointListenerConfiguration(
        database=device_db, port=0, disable_tls=True, read_only=True
    )
    async with URLEndpointListener(config) as server:
        phone_db.default_collection.save_document("p", {"y": 2})
        with pytest.raises(Exception, match="403"):
            await replicator(phone_db, url_of(server), PUSH).run()
        pulled = await replicator(phone_db, url_of(server), PULL).run()
        assert pulled.docs_pulled == 1
    assert device_db.default_collection.get_document("p") is None


async def test_second_database_behind_one_port(url_of, tmp_path, device_db, phone_db) -> None:
    other = Database.open(tmp_path / "other")
    try:
        other.default_collection.save_document("o", {"from": "other"})
        config = URLEndpointListenerConfiguration(
            databases=[device_db, other], port=0, disable_tls=True
        )
        async with URLEndpointListener(config) as server:
            await replicator(phone_db, url_of(server, "other"), PULL).run()
            assert phone_db.default_collection.get_document("o").body == {"from": "other"}
            assert {u.rsplit("/", 1)[1] for u in server.urls} == {"device", "other"}
    finally:
        other.close()


async def test_closing_the_database_stops_its_listener(url_of, tmp_path, phone_db) -> None:
    device = Database.open(tmp_path / "closing")
    config = URLEndpointListenerConfiguration(database=device, port=0, disable_tls=True)
    server = URLEndpointListener(config)
    await server.start()
    repl = replicator(phone_db, url_of(server, "closing"), PULL, continuous=True)
    task = asyncio.create_task(repl.run())
    await wait_for(lambda: server.status.connection_count == 1)
    device.close()
    with pytest.raises(Exception, match="1001"):
        await asyncio.wait_for(task, 10)
    await wait_for(lambda: server.port is None)


async def test_live_deletion_reaches_an_active_only_continuous_pull(
    url_of, listener, device_db, phone_db
) -> None:
    device = device_db.default_collection
    device.save_document("old-tombstone", {"x": 0})
    device.delete_document("old-tombstone")
    device.save_document("r0", {"x": 1})
    repl = replicator(phone_db, url_of(listener), PULL, continuous=True)  # fresh: activeOnly
    task = asyncio.create_task(repl.run())
    phone = phone_db.default_collection
    try:
        await wait_for(lambda: phone.get_document("r0") is not None)
        assert phone.get_revision("old-tombstone") is None  # skipped in the backlog
        device.delete_document("r0")
        device.save_document("after", {"x": 2})
        await wait_for(lambda: phone.get_document("after") is not None)
        await wait_for(lambda: phone.get_document("r0") is None)
    finally:
        repl.stop()
        await asyncio.wait_for(task, 10)


async def test_repeated_updates_push_across_runs(url_of, listener, device_db, phone_db) -> None:
    """Each run must remember which revision the peer has, also when no document is new."""
    phone = phone_db.default_collection
    phone.save_document("counter", {"n": 0})
    for n in range(1, 4):
        result = await replicator(phone_db, url_of(listener), PUSH).run()
        assert result.docs_pushed == 1 and not result.conflicts, result
        rev = phone.get_document("counter").rev_id
        assert device_db.default_collection.get_document("counter").rev_id == rev
        phone.save_document("counter", {"n": n}, expected_rev=rev)
