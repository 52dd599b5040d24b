"""An unmodified LiteCore 4.1 replicator on a version-vector database (a Couchbase Lite 4.x
phone, offering only ``BLIP_3+CBMobile_4``) against fieldsync's listener; and a mixed fleet: a
LiteCore 3.2 phone and a LiteCore 4.1 phone syncing through one fieldsync device.

Documents are compared on both sides (bodies, and the device's cv against the phone's global
revID). Needs ``FIELDSYNC_LITECORE41_LIB`` (and ``FIELDSYNC_LITECORE_LIB`` for the mixed fleet);
skipped cleanly without them.
"""

from __future__ import annotations

import base64
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.interop.fieldsync_side import (
    ConnectionRecorder,
    LoggedMessage,
    device_docs,
    log_size,
    logged_messages,
    phone_docs,
    run,
    url,
    wait_for,
)
from tests.interop.litecore import LiteCore, LiteDatabase

listener_mod = pytest.importorskip("fieldsync.listener", reason="fieldsync.listener not importable")
store_mod = pytest.importorskip("fieldsync.store", reason="fieldsync.store not importable")
legacy_version = pytest.importorskip("fieldsync.store.versions").legacy_version


async def _start(device_db: Any, *, delta: bool = False, port: int = 0) -> Any:
    config = listener_mod.URLEndpointListenerConfiguration(
        database=device_db, port=port, disable_tls=True, enable_delta_sync=delta
    )
    server = listener_mod.URLEndpointListener(config)
    await server.start()
    return server


@pytest.fixture
async def listener(device_db: Any) -> AsyncIterator[Any]:
    server = await _start(device_db)
    yield server
    await server.stop()


async def sync(
    phone: LiteDatabase,
    server: Any,
    *,
    push: bool = True,
    pull: bool = True,
    collections: list[str] | None = None,
    conflicts_ok: bool = False,
) -> list[Any]:
    """One one-shot replication; returns LiteCore's ended documents (errors fail the test,
    except conflicts when ``conflicts_ok``)."""
    with phone.replicator(url(server), push=push, pull=pull, collections=collections) as repl:
        status = await run(repl)
        ended = list(repl.documents_ended)
    assert not status.error, status
    # A real conflict shows as LiteCore/8 on the pull side and as a 409 on the push side.
    bad = [d for d in ended if d.error and not (conflicts_ok and d.error.code in (8, 409))]
    assert not bad, [(d.doc_id, d.pushing, d.error) for d in bad]
    return ended


def same_docs(device: Any, phone: LiteDatabase, collection: str = "_default._default") -> None:
    """Identical live documents and bodies on both sides; the phone's current revision is the
    device's (its cv, or its rev-tree revID for a rev-tree phone or a legacy doc); nothing
    conflicted on the phone."""
    on_device = {d: body for d, (_, body) in device_docs(device).items()}
    on_phone = {d: body for d, (_, body) in phone_docs(phone, collection).items()}
    assert on_device == on_phone
    for doc_id in on_phone:
        doc = phone.get(doc_id, collection)
        assert doc is not None and not doc["conflicted"], doc
        versions = device.get_versions(doc_id)
        current = doc["globalRevID"].split(";")[0].split(",")[0].strip()
        if "@" not in current:  # a rev-tree phone, or a legacy doc on an upgraded phone
            assert current == versions.rev_id, (doc_id, doc, versions)
        elif versions.hlv is None:  # a device doc without vector goes to 4.x as RTE(revID)
            assert current == str(legacy_version(versions.rev_id)), (doc_id, doc, versions)
        else:
            assert current == str(versions.hlv.cv), (doc_id, doc, versions)


def conflicted(phone: LiteDatabase, collection: str = "_default._default") -> set[str]:
    return {
        d for d in phone.all_docs(collection) if (phone.get(d, collection) or {}).get("conflicted")
    }


# -- one 4.1 phone ------------------------------------------------------------------------------


async def test_vv_push_then_pull(listener: Any, device_db: Any, phone41_vv: LiteDatabase) -> None:
    phone = phone41_vv
    for i in range(30):
        phone.put(f"doc-{i:03}", {"n": i, "text": "x" * 40})
    ended = await sync(phone, listener, pull=False)
    assert {d.doc_id for d in ended if d.pushing} == {f"doc-{i:03}" for i in range(30)}
    device = device_db.default_collection
    same_docs(device, phone)
    # The device edits some documents and adds others; the phone pulls them as updates.
    for i in range(0, 30, 5):
        device.save_document(f"doc-{i:03}", {"n": i, "by": "device"})
    device.save_document("dev-only", {"from": "device"})
    ended = await sync(phone, listener, push=False)
    assert {d.doc_id for d in ended if not d.pushing} == {
        *(f"doc-{i:03}" for i in range(0, 30, 5)),
        "dev-only",
    }
    same_docs(device, phone)
    # Deletions both ways.
    phone.delete("doc-001")
    device.delete_document("doc-002")
    await sync(phone, listener)
    assert device.get_document("doc-001") is None and phone.get("doc-002")["deleted"]
    same_docs(device, phone)


async def test_vv_many_rounds_no_spurious_conflict(
    listener: Any, device_db: Any, phone41_vv: LiteDatabase
) -> None:
    phone, device = phone41_vv, device_db.default_collection
    for i in range(10):
        device.save_document(f"d{i}", {"i": i})
    await sync(phone, listener)
    for round_ in range(4):
        for i in range(10):
            if (i + round_) % 2:
                phone.put(f"d{i}", {"i": i, "round": round_, "by": "phone"})
            else:
                device.save_document(f"d{i}", {"i": i, "round": round_, "by": "device"})
        await sync(phone, listener)
        assert not conflicted(phone), round_
        same_docs(device, phone)


async def test_vv_continuous(listener: Any, device_db: Any, phone41_vv: LiteDatabase) -> None:
    phone, device = phone41_vv, device_db.default_collection
    phone.put("p0", {"v": 0})
    device.save_document("d0", {"v": 0})
    with phone.replicator(url(listener), continuous=True) as repl:
        status = await run(repl, until="idle")
        assert not status.error, status
        await wait_for(lambda: device.get_document("p0") is not None, what="p0 on the device")
        await wait_for(lambda: phone.get("d0") is not None, what="d0 on the phone")
        device.save_document("d1", {"live": "device"})
        await wait_for(lambda: phone.get("d1") is not None, what="live change on the phone")
        phone.put("p1", {"live": "phone"})
        await wait_for(lambda: device.get_document("p1") is not None, what="live push")
        doc = device.get_document("d0")
        device.save_document("d0", {"v": 1}, expected_rev=doc.rev_id)
        await wait_for(lambda: (phone.get("d0") or {}).get("body") == {"v": 1}, what="live update")
        phone.put("p0", {"v": 1})
        await wait_for(
            lambda: (device.get_document("p0") or object()).body == {"v": 1},  # type: ignore[attr-defined]
            what="live phone update",
        )
        repl.stop()
        await repl.wait_async("stopped", timeout=30)
    same_docs(device, phone)


@pytest.mark.parametrize("winner", ["local", "remote", "merge"])
async def test_vv_conflict_and_resolution(
    listener: Any, device_db: Any, phone41_vv: LiteDatabase, winner: str
) -> None:
    phone, device = phone41_vv, device_db.default_collection
    phone.put("c", {"v": 0})
    await sync(phone, listener)
    base = device.get_document("c")
    device.save_document("c", {"v": "device"}, expected_rev=base.rev_id)
    phone.put("c", {"v": "phone"})
    ended = await sync(phone, listener, conflicts_ok=True)
    # The push was refused (409), the pull stored the device's revision as a conflict.
    assert device.get_document("c").body == {"v": "device"}
    assert [d.doc_id for d in ended if not d.pushing and d.error.code == 8] == ["c"], ended
    assert conflicted(phone) == {"c"}
    mine, theirs = phone.leaf_revisions("c")
    assert theirs["body"] == {"v": "device"}
    if winner == "local":
        phone.resolve_conflict("c", mine["revID"], theirs["revID"])
        expected = {"v": "phone"}
    elif winner == "remote":
        phone.resolve_conflict("c", theirs["revID"], mine["revID"])
        expected = {"v": "device"}
    else:
        expected = {"v": "merged"}
        phone.resolve_conflict("c", theirs["revID"], mine["revID"], expected)
    assert not conflicted(phone)
    await sync(phone, listener)
    assert device.get_document("c").body == expected
    assert phone.get("c")["body"] == expected
    # Nothing further to do, and no conflict appears on another round.
    await sync(phone, listener)
    assert not conflicted(phone)
    same_docs(device, phone)


def _text(seed: str, chars: int) -> str:
    rng = random.Random(seed)
    return base64.b64encode(rng.randbytes(chars * 3 // 4)).decode()[:chars]


def _revs(messages: list[LoggedMessage], direction: str) -> dict[str, LoggedMessage]:
    return {
        m.properties["id"]: m
        for m in messages
        if m.kind == "REQ" and m.profile == "rev" and m.direction == direction
    }


async def test_vv_delta_sync_both_ways(
    device_db: Any,
    phone41_vv: LiteDatabase,
    litecore41_log: Path | None,
) -> None:
    if litecore41_log is None:
        pytest.skip("LiteCore's log is needed to see deltas on the wire")
    phone, device = phone41_vv, device_db.default_collection
    server = await _start(device_db, delta=True)
    try:
        big = {f"f{k:02}": _text(f"f{k}", 500) for k in range(20)}
        device.save_document("dev", big)
        phone.put("ph", dict(big, who="phone"))
        await sync(phone, server)
        same_docs(device, phone)
        # Device -> phone: one field changed; the phone receives a delta against a version.
        base_cv = str(device.get_versions("dev").hlv.cv)
        doc = device.get_document("dev")
        device.save_document("dev", dict(doc.body, f03="changed"), expected_rev=doc.rev_id)
        start = log_size(litecore41_log)
        await sync(phone, server, push=False)
        rev = _revs(logged_messages(litecore41_log, start), "RECEIVED")["dev"]
        assert rev.properties.get("deltaSrc") == base_cv, rev
        assert phone.get("dev")["body"]["f03"] == "changed"
        # Phone -> device: a delta against the version the device holds.
        old = phone.get("ph")["globalRevID"].split(";")[0]
        phone.put("ph", dict(phone.get("ph")["body"], f07="phone change"))
        start = log_size(litecore41_log)
        await sync(phone, server, pull=False)
        rev = _revs(logged_messages(litecore41_log, start), "SENDING")["ph"]
        assert rev.properties.get("deltaSrc") == old, rev
        assert device.get_document("ph").body["f07"] == "phone change"
        same_docs(device, phone)
    finally:
        await server.stop()


async def test_vv_blobs_both_ways(listener: Any, device_db: Any, phone41_vv: LiteDatabase):
    phone, device = phone41_vv, device_db.default_collection
    phone_data = random.Random("phone").randbytes(40_000)
    blob = phone.put_blob(phone_data, "image/jpeg")
    phone.put("photo", {"pic": blob})
    device_data = random.Random("device").randbytes(30_000)
    digest = device_db.blobs.put(device_data)
    device.save_document(
        "manual",
        {
            "pdf": {
                "@type": "blob",
                "digest": digest,
                "length": len(device_data),
                "content_type": "application/pdf",
            }
        },
    )
    await sync(phone, listener)
    assert device_db.blobs.read(blob["digest"]) == phone_data
    assert phone.get_blob(digest) == device_data
    same_docs(device, phone)


async def test_vv_named_collection(device_db: Any, phone41_vv: LiteDatabase) -> None:
    items = device_db.create_collection("items", "inventory")
    server = await _start(device_db)
    try:
        phone41_vv.create_collection("inventory.items")
        phone41_vv.put("i1", {"v": 1}, collection="inventory.items")
        items.save_document("i2", {"v": 2})
        await sync(phone41_vv, server, collections=["inventory.items"])
        same_docs(items, phone41_vv, "inventory.items")
        assert device_db.default_collection.get_document("i1") is None
        phone41_vv.put("i2", {"v": 3}, collection="inventory.items")
        await sync(phone41_vv, server, collections=["inventory.items"])
        same_docs(items, phone41_vv, "inventory.items")
    finally:
        await server.stop()


async def test_vv_listener_restart_resumes(
    device_db: Any, phone41_vv: LiteDatabase, connections: ConnectionRecorder
) -> None:
    phone, device = phone41_vv, device_db.default_collection
    for i in range(20):
        phone.put(f"p{i}", {"i": i})
        device.save_document(f"d{i}", {"i": i})
    server = await _start(device_db)
    await sync(phone, server)
    port = server.port
    await server.stop()
    server = await _start(device_db, port=port)
    try:
        mark = connections.mark()
        phone.put("p0", {"i": 0, "after": "restart"})
        device.save_document("d0", {"i": 0, "after": "restart"})
        ended = await sync(phone, server)
        assert sorted(d.doc_id for d in ended) == ["d0", "p0"], ended
        totals = connections.totals(since=mark)
        assert totals["docs_in"] == 1 and totals["docs_out"] == 1, totals
        same_docs(device, phone)
    finally:
        await server.stop()


# -- mixed fleet: a 3.2 phone and a 4.1 phone through one device ----------------------------------


def _resolve_all(phone: LiteDatabase) -> None:
    """Couchbase Lite's default resolver: a deletion wins, else the newer revision (3.x:
    higher generation; 4.x: later timestamp); resolved as CBL-C does (3.x keeps the remote
    branch and puts the local body on top when local wins)."""
    for doc_id in sorted(conflicted(phone)):
        leaves = phone.leaf_revisions(doc_id)
        mine, theirs = leaves[0], next(leaf for leaf in leaves[1:] if leaf["conflict"])
        if phone.version_vectors:
            local_wins = _timestamp(phone.get(doc_id)["globalRevID"]) > _timestamp(theirs["revID"])
            if local_wins:
                phone.resolve_conflict(doc_id, mine["revID"], theirs["revID"])
            else:
                phone.resolve_conflict(doc_id, theirs["revID"], mine["revID"])
        else:
            local_wins = _generation(mine["revID"]) > _generation(theirs["revID"]) or (
                _generation(mine["revID"]) == _generation(theirs["revID"])
                and mine["revID"] > theirs["revID"]
            )
            body = mine["body"] if local_wins else None
            phone.resolve_conflict(doc_id, theirs["revID"], mine["revID"], body)


def _timestamp(rev: str) -> int:
    first = rev.split(";")[0].split(",")[0].strip()
    if "@" in first:
        return int(first.split("@")[0], 16)
    return int(first.split("-")[0])


def _generation(rev: str) -> int:
    return int(rev.split("-")[0])


async def test_mixed_fleet_converges(
    litecore: LiteCore,
    litecore41: LiteCore,
    listener: Any,
    device_db: Any,
    phone: LiteDatabase,
    phone41_vv: LiteDatabase,
) -> None:
    """Both phones and the device's application edit the same documents; the phones sync in
    several orders. Conflicts appear only where the data has them, each is resolved on the
    phone that sees it, and at the end all three hold the same bodies with no conflict."""
    three, four, device = phone, phone41_vv, device_db.default_collection
    docs = [f"m{i}" for i in range(6)]
    for i, doc_id in enumerate(docs):
        device.save_document(doc_id, {"i": i, "by": "device", "round": -1})
    await sync(three, listener)
    await sync(four, listener)
    assert not conflicted(three) and not conflicted(four)
    orders = [("3", "4"), ("4", "3"), ("4", "3"), ("3", "4")]
    real: dict[str, set[str]] = {"3": set(), "4": set()}
    for round_, order in enumerate(orders):
        # Round r: the 3.x phone edits m0..m3, the 4.x phone m2..m5, the device m0, m3, m5:
        # m2/m3 (and m0, m3, m5 with the device) are real concurrent edits.
        for doc_id in docs[:4]:
            three.put(doc_id, {"by": "three", "round": round_})
        for doc_id in docs[2:]:
            four.put(doc_id, {"by": "four", "round": round_})
        for doc_id in (docs[0], docs[3], docs[5]):
            current = device.get_document(doc_id)
            device.save_document(
                doc_id, {"by": "device", "round": round_}, expected_rev=current.rev_id
            )
        # Where a conflict is real: the 3.x phone's edits meet the device's (m0, m3) and the
        # 4.x phone's (m2, m3); the 4.x phone's meet the 3.x phone's (m2, m3) and the
        # device's (m3, m5). m1 and m4 are edited by one party only.
        possible = {"3": {"m0", "m2", "m3"}, "4": {"m2", "m3", "m5"}}
        for who in order:
            target = three if who == "3" else four
            await sync(target, listener, conflicts_ok=True)
            seen = conflicted(target)
            assert seen <= possible[who], (round_, who, seen)
            real[who] |= seen
            _resolve_all(target)
            await sync(target, listener, conflicts_ok=True)
            assert not conflicted(target), (round_, who, conflicted(target))
        # Each phone now gets the other's resolutions as ordinary updates: no conflict, no
        # refusal, in either order.
        for target in (three, four) if round_ % 2 else (four, three):
            await sync(target, listener)
            assert not conflicted(target), (round_, conflicted(target))
        assert not conflicted(three) and not conflicted(four), round_
        same_docs(device, three)
        same_docs(device, four)
    # The real conflicts did reach the phones (so the checks above were not vacuous).
    assert real["3"] and real["4"], real


async def test_mixed_fleet_resolution_is_an_ordinary_update(
    litecore: LiteCore,
    litecore41: LiteCore,
    listener: Any,
    device_db: Any,
    phone: LiteDatabase,
    phone41_vv: LiteDatabase,
) -> None:
    """A 3.x edit and a 4.x edit of one document: whichever phone syncs second sees a real
    conflict; once it resolves, the other phone gets the result as a plain update."""
    three, four, device = phone, phone41_vv, device_db.default_collection
    device.save_document("a", {"v": 0})
    device.save_document("b", {"v": 0})
    await sync(three, listener)
    await sync(four, listener)
    # "a": the 3.x phone syncs first; "b": the 4.x phone syncs first.
    three.put("a", {"a": "three"})
    four.put("a", {"a": "four"})
    three.put("b", {"b": "three"})
    four.put("b", {"b": "four"})
    await sync(three, listener, pull=False, conflicts_ok=True)  # a lands, b (later) too
    ended4 = await sync(four, listener, conflicts_ok=True)
    assert conflicted(four) == {"a", "b"}, ended4
    four_mine = {d: four.leaf_revisions(d)[0] for d in ("a", "b")}
    four_theirs = {d: four.leaf_revisions(d)[1] for d in ("a", "b")}
    four.resolve_conflict("a", four_theirs["a"]["revID"], four_mine["a"]["revID"], {"a": "merged"})
    four.resolve_conflict("b", four_mine["b"]["revID"], four_theirs["b"]["revID"])
    await sync(four, listener)
    assert device.get_document("a").body == {"a": "merged"}
    assert device.get_document("b").body == {"b": "four"}
    ended3 = await sync(three, listener)
    assert not conflicted(three), ended3
    assert three.get("a")["body"] == {"a": "merged"} and three.get("b")["body"] == {"b": "four"}
    await sync(four, listener)
    assert not conflicted(four)
    same_docs(device, three)
    same_docs(device, four)


# -- a phone upgraded from rev trees: legacy revIDs in a CBMobile_4 session (VV-NOTES §3.3) ------


async def test_upgraded_phone_no_spurious_conflict(
    litecore41: LiteCore, listener: Any, device_db: Any, tmp_path: Path
) -> None:
    """A 4.1 phone synced as a rev-tree database (CBMobile_3), then opened with version
    vectors (what a Couchbase Lite 4.x app update does): its documents keep their legacy revIDs
    until saved. Pulls must reach it as newer (the tail down to its legacy revID, then its
    learned lastLegacyRevID), its own first VV saves must be accepted, and an unpushed
    rev-tree edit made before the upgrade goes up as a legacy revID."""
    device = device_db.default_collection
    for i in range(6):
        device.save_document(f"u{i}", {"i": i})
    phone = litecore41.open_db(tmp_path / "up", "up")
    try:
        phone.put("mine", {"from": "phone"})
        await sync(phone, listener)  # CBMobile_3: a rev-tree 4.1 database offers only 3
        phone.put("u5", {"i": 5, "edited": "before the upgrade"})  # not pushed yet
    finally:
        phone.close()
    phone = litecore41.open_db(tmp_path / "up", "up", version_vectors=True)
    try:
        assert not phone.get("u0")["revID"].count("@")  # still legacy
        # 1. The device edits a doc the phone holds as legacy: newer, not a conflict.
        device.save_document("u0", {"i": 0, "by": "device"})
        # 2. The phone saves its first VV revision over a legacy doc and pushes it.
        phone.put("u1", {"i": 1, "by": "phone"})
        ended = await sync(phone, listener)
        assert not conflicted(phone), ended
        assert device.get_document("u1").body == {"i": 1, "by": "phone"}
        assert device.get_document("u5").body == {"i": 5, "edited": "before the upgrade"}
        assert phone.get("u0")["body"] == {"i": 0, "by": "device"}
        same_docs(device, phone)
        # 3. The device edits both again: the phone now holds vectors with a lastLegacyRevID.
        for doc_id in ("u0", "u1", "u5"):
            current = device.get_document(doc_id)
            device.save_document(
                doc_id, dict(current.body, again=True), expected_rev=current.rev_id
            )
        ended = await sync(phone, listener)
        assert not conflicted(phone), ended
        same_docs(device, phone)
        # 4. A real conflict on an upgraded doc is still a conflict, and resolves.
        device.save_document("u2", {"i": 2, "by": "device"})
        phone.put("u2", {"i": 2, "by": "phone"})
        await sync(phone, listener, conflicts_ok=True)
        assert conflicted(phone) == {"u2"}
        _resolve_all(phone)
        await sync(phone, listener)
        await sync(phone, listener)
        assert not conflicted(phone)
        same_docs(device, phone)
    finally:
        phone.close()


def _old_device_db(tmp_path: Path) -> Any:
    """The schema-1 fixture of tests/store (documents without vectors), opened as /device."""
    import sqlite3

    from fieldsync.store.paths import DATABASE_FILE

    fixture = Path(__file__).parent.parent / "store" / "fixtures" / "schema_v1.sql"
    if not fixture.is_file():
        pytest.skip(f"no schema-1 fixture at {fixture}")
    directory = tmp_path / "old" / "device"  # served as /device
    directory.mkdir(parents=True)
    conn = sqlite3.connect(directory / DATABASE_FILE)
    conn.executescript(fixture.read_text())
    conn.close()
    return store_mod.Database.open(directory)


async def test_upgraded_device_serves_legacy_docs(
    litecore41: LiteCore, phone41_vv: LiteDatabase, tmp_path: Path
) -> None:
    """A device database from before version vectors (the schema-1 fixture of tests/store):
    its untouched documents have no vector and go to a 4.x phone as RTE versions of their
    revIDs (a bare legacy revID breaks a fresh LiteCore 4.1 phone's next pull of that doc);
    the device app's and the phone's later edits then replicate both ways as versions, with no
    conflict, and a rev-tree phone (4.1, CBMobile_3) still sees one rev tree."""
    device_db = _old_device_db(tmp_path)
    server = await _start(device_db)
    rev_tree_phone = litecore41.open_db(tmp_path / "rt", "rt")
    try:
        device = device_db.default_collection
        legacy = {c.doc_id: c.rev_id for c in device.changes_since(0) if c.version is None}
        assert legacy, "the fixture's documents should start without vectors"
        await sync(phone41_vv, server)
        same_docs(device, phone41_vv)
        for doc_id, rev_id in legacy.items():
            doc = phone41_vv.get(doc_id)
            if doc is not None and not doc["deleted"]:  # sent as RTE(revID), never bare
                assert doc["revID"] == str(legacy_version(rev_id)), (doc_id, doc)
        live = sorted(d for d in legacy if device.get_document(d) is not None)
        first, second = live[0], live[1]
        # The device app edits one legacy doc, the phone another.
        current = device.get_document(first)
        device.save_document(first, dict(current.body, by="device"), expected_rev=current.rev_id)
        phone41_vv.put(second, dict(phone41_vv.get(second)["body"], by="phone"))
        await sync(phone41_vv, server)
        assert not conflicted(phone41_vv)
        same_docs(device, phone41_vv)
        assert device.get_document(second).body["by"] == "phone"
        # Round trip again on the same two docs, other way round.
        current = device.get_document(second)
        device.save_document(
            second, dict(current.body, again="device"), expected_rev=current.rev_id
        )
        phone41_vv.put(first, dict(phone41_vv.get(first)["body"], again="phone"))
        await sync(phone41_vv, server)
        assert not conflicted(phone41_vv)
        same_docs(device, phone41_vv)
        # A rev-tree phone sees the same documents as one rev tree.
        await sync(rev_tree_phone, server)
        same_docs(device, rev_tree_phone)
    finally:
        rev_tree_phone.close()
        await server.stop()
        device_db.close()


async def test_41_rev_tree_push_only_phone_gets_cbmobile4_and_legacy_revids(
    listener: Any, device_db: Any, phone41: LiteDatabase, phone: LiteDatabase
) -> None:
    """A 4.1 rev-tree database pushing only offers ``CBMobile_4,CBMobile_3``; the listener
    picks 4 (as Sync Gateway does) and the phone sends rev-tree revIDs in that session. They
    land as the same rev-tree revisions a 3.x phone then pulls."""
    revs = {f"rt{i}": phone41.put(f"rt{i}", {"i": i}) for i in range(5)}
    ended = await sync(phone41, listener, pull=False)
    assert {d.doc_id for d in ended if d.pushing} == set(revs)
    device = device_db.default_collection
    for doc_id, rev in revs.items():
        assert device.get_document(doc_id).rev_id == rev
    phone41.put("rt0", {"i": 0, "again": True})
    await sync(phone41, listener, pull=False)
    await sync(phone, listener)  # a 3.2 phone
    same_docs(device, phone)
    assert phone.get("rt0")["revID"] == phone41.get("rt0")["revID"]


# -- the same mixed fleet with the command-line phones and Couchbase Lite's resolver ---------------


async def test_mixed_fleet_with_cblpeer_phones_and_their_resolver(
    cbl32: Any, cbl41: Any, listener: Any, device_db: Any, tmp_path: Path
) -> None:
    """``cblpeer`` 3.2 (rev trees) and ``cblpeer --vv`` 4.1 as the two phones; conflicts are
    resolved by ``cblpeer resolve`` (Couchbase Lite's default resolver as CBL-C runs it, incl.
    4.x's trivial merge). Several sync orders; at the end all three hold the same bodies and
    no phone shows a conflict."""
    import asyncio
    import json as json_module

    device = device_db.default_collection
    endpoint = url(listener)
    phones = {"3": (cbl32, tmp_path / "p32", False), "4": (cbl41, tmp_path / "p41", True)}

    async def peer(who: str, command: str, *args: str) -> Any:
        tools, directory, vv = phones[who]
        return await asyncio.to_thread(
            tools.peer,
            directory,
            command,
            *args,
            url=endpoint if command in ("push", "pull", "pushpull") else None,
            vv=vv,
            timeout=120,
        )

    async def pushpull(who: str) -> dict[str, Any]:
        result: dict[str, Any] = (await peer(who, "pushpull")).result
        assert result["status"] == "ok", (who, result)
        return result

    async def dump(who: str) -> dict[str, dict[str, Any]]:
        return {line["id"]: line for line in (await peer(who, "dump")).lines if "id" in line}

    for i in range(4):
        device.save_document(f"c{i}", {"i": i, "by": "device"})
    for who in ("3", "4"):
        await pushpull(who)
    resolved = {"3": 0, "4": 0}
    for round_, order in enumerate([("3", "4"), ("4", "3"), ("3", "4")]):
        for i in range(3):  # c0..c2 by the 3.x phone
            await peer("3", "put", f"c{i}", json_module.dumps({"by": "three", "r": round_}))
        for i in range(1, 4):  # c1..c3 by the 4.x phone
            await peer("4", "put", f"c{i}", json_module.dumps({"by": "four", "r": round_}))
        for doc_id in ("c0", "c3"):  # and the device app
            current = device.get_document(doc_id)
            device.save_document(doc_id, {"by": "device", "r": round_}, expected_rev=current.rev_id)
        for who in order:
            await pushpull(who)
            resolved[who] += (await peer(who, "resolve")).result.get("resolved", 0)
            await pushpull(who)
        for who in (*order, *order):
            await pushpull(who)
        on_device = {d: body for d, (_, body) in device_docs(device).items()}
        for who in ("3", "4"):
            docs = await dump(who)
            assert [d for d, line in docs.items() if line.get("conflicted")] == [], (round_, who)
            assert {d: line["body"] for d, line in docs.items()} == on_device, (round_, who)
    assert resolved["3"] > 0 and resolved["4"] > 0, resolved  # real conflicts did reach both


async def test_mixed_fleet_continuous(
    litecore: LiteCore,
    litecore41: LiteCore,
    listener: Any,
    device_db: Any,
    phone: LiteDatabase,
    phone41_vv: LiteDatabase,
) -> None:
    """Both phones stay connected (continuous push+pull) while each of the three writes: every
    write reaches the other two, live, and nothing conflicts."""
    three, four, device = phone, phone41_vv, device_db.default_collection

    def bodies(db: LiteDatabase) -> dict[str, Any]:
        return {d: (db.get(d) or {}).get("body") for d in db.all_docs()}

    def converged() -> bool:
        on_device = {d: body for d, (_, body) in device_docs(device).items()}
        return bodies(three) == on_device and bodies(four) == on_device

    with (
        three.replicator(url(listener), continuous=True) as r3,
        four.replicator(url(listener), continuous=True) as r4,
    ):
        r3.start()
        r4.start()
        for round_ in range(3):
            device.save_document(f"dev-{round_}", {"by": "device", "r": round_})
            three.put(f"three-{round_}", {"by": "three", "r": round_})
            four.put(f"four-{round_}", {"by": "four", "r": round_})
            await wait_for(converged, what=f"round {round_} everywhere")
            # Now one shared doc, edited in turn (each waits for the previous edit to arrive).
            for writer in ("device", "three", "four"):
                if writer == "device":
                    current = device.get_document("shared")
                    device.save_document(
                        "shared",
                        {"by": writer, "r": round_},
                        expected_rev=current.rev_id if current else None,
                    )
                else:
                    (three if writer == "three" else four).put(
                        "shared", {"by": writer, "r": round_}
                    )
                await wait_for(converged, what=f"round {round_} shared by {writer}")
        assert not conflicted(three) and not conflicted(four)
        r3.stop()
        r4.stop()
        assert not (await r3.wait_async("stopped", timeout=30)).error
        assert not (await r4.wait_async("stopped", timeout=30)).error
    same_docs(device, three)
    same_docs(device, four)


async def test_two_vv_phones_merge_reaches_the_other(
    litecore41: LiteCore, listener: Any, device_db: Any, phone41_vv: LiteDatabase, tmp_path: Path
) -> None:
    """Two 4.x phones conflict through the device; one resolves with a merged body (a merge
    vector, ``cv, mv…;``); the device stores it and the other phone gets it as an update."""
    a, device = phone41_vv, device_db.default_collection
    b = litecore41.open_db(tmp_path / "b", "b", version_vectors=True)
    try:
        a.put("m", {"v": 0})
        await sync(a, listener)
        await sync(b, listener)
        a.put("m", {"v": "a"})
        b.put("m", {"v": "b"})
        await sync(a, listener)
        await sync(b, listener, conflicts_ok=True)
        assert conflicted(b) == {"m"}
        mine, theirs = b.leaf_revisions("m")
        b.resolve_conflict("m", theirs["revID"], mine["revID"], {"v": "a+b"})
        assert b.get("m")["globalRevID"].count(",") >= 1  # a merge vector
        await sync(b, listener)
        assert device.get_document("m").body == {"v": "a+b"}
        assert device.get_versions("m").hlv.mv, device.get_versions("m")
        ended = await sync(a, listener)
        assert [d.doc_id for d in ended if not d.pushing] == ["m"], ended
        assert not conflicted(a) and a.get("m")["body"] == {"v": "a+b"}
        # And the device app edits the merged doc: both phones take it as an update.
        current = device.get_document("m")
        device.save_document("m", {"v": "device"}, expected_rev=current.rev_id)
        await sync(a, listener)
        await sync(b, listener)
        assert not conflicted(a) and not conflicted(b)
        same_docs(device, a)
        same_docs(device, b)
    finally:
        b.close()


@pytest.mark.parametrize("skew_minutes", [10, -60])
async def test_device_clock_skew_after_seeing_a_phone(
    listener: Any, device_db: Any, phone41_vv: LiteDatabase, skew_minutes: int
) -> None:
    """A device without RTC/NTP whose clock is 10 minutes ahead (LiteCore refuses versions more
    than 2 minutes ahead of its own clock) or an hour behind: once it has seen a phone's
    versions it stamps its own edits close after them, so the phone takes them as updates."""
    import time

    from fieldsync.store.doc_versions import device_versions

    device = device_db.default_collection
    device_versions(device_db.engine).wall = lambda: time.time_ns() + skew_minutes * 60 * 10**9
    phone41_vv.put("p", {"v": 0})
    await sync(phone41_vv, listener)
    device.save_document("p", {"v": "device"}, expected_rev=device.get_document("p").rev_id)
    device.save_document("d", {"v": "device"})
    ended = await sync(phone41_vv, listener)
    assert {d.doc_id for d in ended if not d.pushing} == {"p", "d"}, ended
    assert phone41_vv.get("p")["body"] == {"v": "device"}
    same_docs(device, phone41_vv)
    stamped = device.get_versions("d").hlv.cv.time
    assert abs(stamped - time.time_ns()) < 60 * 10**9, "stamped within a minute of the phone"


async def test_upgraded_device_and_upgraded_phone(litecore41: LiteCore, tmp_path: Path) -> None:
    """Both sides upgraded: the device's schema-1 database and a 4.1 phone that pulled it as a
    rev-tree database before being opened with version vectors. Untouched docs are not sent
    again (the phone's legacy revID and our RTE version are one revision); edits on either side
    are updates."""
    device_db = _old_device_db(tmp_path)
    server = await _start(device_db)
    try:
        device = device_db.default_collection
        phone = litecore41.open_db(tmp_path / "ph", "ph")
        try:
            await sync(phone, server)  # CBMobile_3
        finally:
            phone.close()
        phone = litecore41.open_db(tmp_path / "ph", "ph", version_vectors=True)
        try:
            ended = await sync(phone, server)  # CBMobile_4: nothing new either way
            assert [d.doc_id for d in ended] == [], ended
            live = sorted(d for d in phone.all_docs() if device.get_document(d) is not None)
            first, second = live[0], live[1]
            current = device.get_document(first)
            device.save_document(
                first, dict(current.body, by="device"), expected_rev=current.rev_id
            )
            phone.put(second, dict(phone.get(second)["body"], by="phone"))
            ended = await sync(phone, server)
            assert sorted(d.doc_id for d in ended) == sorted([first, second]), ended
            assert not conflicted(phone)
            same_docs(device, phone)
            current = device.get_document(second)
            device.save_document(second, dict(current.body, again=1), expected_rev=current.rev_id)
            phone.put(first, dict(phone.get(first)["body"], again=1))
            await sync(phone, server)
            assert not conflicted(phone)
            same_docs(device, phone)
        finally:
            phone.close()
    finally:
        await server.stop()
        device_db.close()


async def test_vv_phone_over_tls_with_a_password(device_db: Any, phone41_vv: LiteDatabase) -> None:
    """What a 4.x app in the field does: wss with the device's pinned certificate and Basic auth."""
    from fieldsync.listener.auth import ListenerPasswordAuthenticator, hash_password

    auth = ListenerPasswordAuthenticator.from_users({"ranger": hash_password("s3cret")})
    config = listener_mod.URLEndpointListenerConfiguration(
        database=device_db, port=0, authenticator=auth
    )
    async with listener_mod.URLEndpointListener(config) as server:
        pem = server.tls_identity.certificate_pem(chain=False)
        phone41_vv.put("secure", {"v": 1})
        device_db.default_collection.save_document("from-device", {"v": 2})
        with phone41_vv.replicator(
            url(server, scheme="wss"), pinned_cert_pem=pem, username="ranger", password="s3cret"
        ) as repl:
            status = await run(repl)
            ended = list(repl.documents_ended)
        assert not status.error, status
        assert {d.doc_id for d in ended if not d.error} == {"secure", "from-device"}, ended
        with phone41_vv.replicator(
            url(server, scheme="wss"), pinned_cert_pem=pem, username="ranger", password="nope"
        ) as repl:
            status = await run(repl)
        assert status.error.code == 401, status
    same_docs(device_db.default_collection, phone41_vv)
