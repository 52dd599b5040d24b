"""CBMobile_4 sessions against the real listener: a scripted 4.x phone (tests/replication/
vv_phone.py over real loopback WebSockets) and, for mixed fleets, our own CBMobile_3
Replicator as the 3.x phone, all on one device database.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.listener.raw_blip import CBMOBILE_4, RawClient
from tests.replication.vv_phone import VVPhone
from tests.support.fixtures import serving
from websockets.asyncio.client import connect

from fieldsync.listener import URLEndpointListener, URLEndpointListenerConfiguration
from fieldsync.replicator import Replicator, ReplicatorConfiguration, ReplicatorType
from fieldsync.store import Database
from fieldsync.store.versions import HLV, Version, legacy_version

PUSH, PULL = ReplicatorType.PUSH, ReplicatorType.PULL


def replicate(db: Database, url: str, kind: ReplicatorType) -> Any:
    return Replicator(ReplicatorConfiguration(database=db, url=url, replicator_type=kind)).run()


def collections_body(*names: str) -> bytes:
    return json.dumps(
        {"checkpoint_ids": [f"cp-{n}" for n in names], "collections": list(names)}
    ).encode()


async def test_cbmobile4_only_client_gets_a_session(listener) -> None:
    ws = await connect(
        f"ws://127.0.0.1:{listener.port}/device/_blipsync", subprotocols=list(CBMOBILE_4)
    )
    assert ws.subprotocol == "BLIP_3+CBMobile_4"
    await ws.close()


async def test_push_new_update_and_delete(listener, device_db) -> None:
    phone = VVPhone()
    first = phone.put("a", {"n": 1})
    phone.put("b", {"n": 2})
    report = await phone.push(listener)
    assert report.statuses == {"a": 0, "b": 0} and not report.rev_errors
    device = device_db.default_collection
    versions = device.get_versions("a")
    assert versions is not None and versions.hlv == HLV(first)
    assert device.get_document("a").body == {"n": 1}
    assert device.get_document("a").rev_id.startswith("1-")
    # Same author again: parent = previous cv, still one entry, no history.
    second = phone.put("a", {"n": 10})
    phone.put("b", {}, deleted=True)
    report = await phone.push(listener)
    assert report.statuses == {"a": 0, "b": 0} and not report.rev_errors
    assert device.get_versions("a").hlv == HLV(second)
    assert device.get_document("a").rev_id.startswith("2-")
    assert device.get_document("b") is None
    # Pushing the same again stores nothing: 304, or (Sync Gateway's order of rules: the
    # parent is our cv) 0 and then a rev answered with noop.
    phone.docs["a"].dirty = True
    before = device.get_document("a").rev_id
    report = await phone.push(listener)
    assert report.statuses == {"a": 304} or (report.statuses == {"a": 0} and report.noops == {"a"})
    assert device.get_document("a").rev_id == before


async def test_pull_sends_cv_and_history(listener, device_db) -> None:
    device = device_db.default_collection
    device.save_document("srv", {"from": "device"})
    phone = VVPhone()
    mine = phone.put("mine", {"from": "phone"})
    await phone.push(listener)
    pulled = await phone.pull(listener)
    assert "srv" in pulled.received and not pulled.conflicts
    cv = device.get_versions("srv").hlv.cv
    (row,) = [r for r in pulled.rows if r[1] == "srv"]
    assert row[2] == str(cv)
    (rev,) = [r for r in pulled.revs if r["id"] == "srv"]
    assert rev["rev"] == str(cv) and "history" not in rev
    # The device edits the phone's document: history carries the phone's version as pv.
    device.save_document("mine", {"from": "device"})
    again = await phone.pull(listener)
    assert again.received == {"mine"} and not again.conflicts
    (rev,) = [r for r in again.revs if r["id"] == "mine"]
    assert rev["history"] == str(mine)
    assert phone.docs["mine"].body == {"from": "device"}


async def test_conflict_reply_carries_the_current_version(listener, device_db) -> None:
    device = device_db.default_collection
    phone = VVPhone()
    phone.put("d", {"v": 0})
    await phone.push(listener)
    device.save_document("d", {"v": "device"})
    phone.put("d", {"v": "phone"})
    report = await phone.push(listener)
    current = str(device.get_versions("d").hlv.cv)
    assert report.statuses == {"d": {"status": 409, "rev": current}}
    assert device.get_document("d").body == {"v": "device"}


async def test_proposed_whole_vector_and_bad_input(listener, device_db) -> None:
    device = device_db.default_collection
    phone = VVPhone()
    async with RawClient(listener, CBMOBILE_4, "device") as session:
        reply = await session.request("getCollections", {}, collections_body("_default"))
        assert not reply.is_error
        t = Version(0x18ECB6C7F6DC0000, phone.source)
        whole = f"{t}; 18ecb6c7745e0000@oaC0o5yUT7SBuolB0aCZZQ"
        ok = await session.request(
            "proposeChanges", {"collection": "0"}, json.dumps([["w", whole, "", 9]]).encode()
        )
        assert not ok.is_error and json.loads(ok.body or b"[]") == []
        for body, field in (
            ([["x", "18ecb6b01a350000@*", ""]], "rev of 'x'"),
            ([["x", f"{t}", "1-zz"]], "parent of 'x'"),
            ([["x", "1@short", ""]], "rev of 'x'"),
        ):
            bad = await session.request(
                "proposeChanges", {"collection": "0"}, json.dumps(body).encode()
            )
            assert (bad.error_domain, bad.error_code) == ("HTTP", 400), bad.error_message
            assert field in (bad.error_message or ""), bad.error_message
        for properties, field in (
            ({"id": "x", "rev": "18ecb6b01a350000@*"}, "rev"),
            ({"id": "x", "rev": str(t), "history": "nope@nope"}, "history"),
            ({"id": "x", "rev": "1@AAAAAAAAAAAAAAAAAAAAAB"}, "rev"),
        ):
            bad = await session.request("rev", {"collection": "0", **properties}, b"{}")
            assert bad.error_code == 400 and (bad.error_message or "").startswith(field), (
                bad.error_message
            )
        # A good revision on the same connection still lands.
        good = await session.request(
            "rev", {"collection": "0", "id": "w", "rev": str(t), "sequence": "1"}, b'{"ok":1}'
        )
        assert not good.is_error, good.error_message
    assert device.get_document("x") is None
    assert device.get_document("w").body == {"ok": 1}


async def test_bad_uuid_is_400_naming_it(listener) -> None:
    async with RawClient(listener, CBMOBILE_4, "device") as session:
        reply = await session.request(
            "getCollections", {"uuid": "not-a-uuid"}, collections_body("_default")
        )
        assert reply.error_code == 400 and "uuid" in (reply.error_message or "")


@pytest.mark.parametrize(
    ("protocols", "versioning"),
    [(CBMOBILE_4, "rev-trees"), (("BLIP_3+CBMobile_3",), "version-vectors")],
)
async def test_subchanges_versioning_must_match_the_session(listener, protocols, versioning):
    async with RawClient(listener, protocols, "device") as session:
        reply = await session.request("getCollections", {}, collections_body("_default"))
        assert not reply.is_error
        sub = await session.request("subChanges", {"collection": "0", "versioning": versioning})
        assert sub.is_error and "Incompatible document versioning" in (sub.error_message or "")


async def test_continuous_pull_gets_new_versions(listener, device_db) -> None:
    device = device_db.default_collection
    rows: list[list[Any]] = []
    got = asyncio.Event()
    async with RawClient(listener, CBMOBILE_4, "device") as session:

        def on_changes(request: Any) -> None:
            entries = request.json()
            rows.extend(entries)
            if not request.no_reply:
                request.respond({}, json.dumps([0] * len(entries)).encode())
            if any(e[1] == "live" for e in entries):
                got.set()

        session.register("changes", on_changes)
        await session.request("getCollections", {}, collections_body("_default"))
        sub = await session.request(
            "subChanges",
            {"collection": "0", "continuous": "true", "versioning": "version-vectors"},
        )
        assert not sub.is_error
        await asyncio.sleep(0.1)
        device.save_document("live", {"x": 1})
        await asyncio.wait_for(got.wait(), 10)
    (row,) = [r for r in rows if r[1] == "live"]
    assert row[2] == str(device.get_versions("live").hlv.cv)


async def test_named_collection(tmp_path: Path) -> None:
    db = Database.open(tmp_path / "device", create=True)
    db.create_collection("things", "s")
    config = URLEndpointListenerConfiguration(database=db, port=0, disable_tls=True)
    server = URLEndpointListener(config)
    await server.start()
    try:
        async with RawClient(server, CBMOBILE_4, "device") as session:
            reply = await session.request(
                "getCollections", {}, collections_body("_default", "s.things")
            )
            assert json.loads(reply.body) == [{}, {}]
            v = Version(0x18ECB6C7F6DC0000, VVPhone().source)
            ok = await session.request(
                "proposeChanges", {"collection": "1"}, json.dumps([["t", str(v)]]).encode()
            )
            assert not ok.is_error
            stored = await session.request(
                "rev", {"collection": "1", "id": "t", "rev": str(v)}, b'{"in":"things"}'
            )
            assert not stored.is_error, stored.error_message
        things = db.collection("s.things")
        assert things.get_document("t").body == {"in": "things"}
        assert things.get_versions("t").hlv.cv == v
        assert db.default_collection.get_document("t") is None
    finally:
        await server.stop()
        db.close()


# -- mixed fleets: a 3.x phone (our CBMobile_3 Replicator) and a 4.x phone on one database ---------


@pytest.fixture
async def fleet(tmp_path: Path, listener) -> AsyncIterator[tuple[Any, Database, VVPhone]]:
    phone3 = Database.open(tmp_path / "phone3", create=True)
    yield listener, phone3, VVPhone()
    phone3.close()


async def test_3x_edit_first_then_4x_conflicts_and_resolution_reaches_3x(
    fleet, url_of, device_db
) -> None:
    listener, phone3, phone4 = fleet
    url = url_of(listener)
    device = device_db.default_collection
    device.save_document("doc", {"v": 0})
    await replicate(phone3, url, PULL)
    await phone4.pull(listener)
    # Both phones edit; the 3.x phone syncs first.
    base = phone3.default_collection.get_document("doc").rev_id
    phone3.default_collection.save_document("doc", {"v": "three"}, expected_rev=base)
    phone4.put("doc", {"v": "four"})
    pushed3 = await replicate(phone3, url, PUSH)
    assert pushed3.docs_pushed == 1 and not pushed3.conflicts
    # The 4.x phone is refused, then pulls a real conflict.
    report = await phone4.push(listener)
    assert report.statuses["doc"]["status"] == 409
    pulled = await phone4.pull(listener)
    assert pulled.conflicts == {"doc"}
    # It resolves (its side wins, as LWW would) and pushes: accepted as newer.
    phone4.resolve("doc", keep="local")
    report = await phone4.push(listener)
    assert report.statuses == {"doc": 0} and not report.rev_errors, report
    assert device.get_document("doc").body == {"v": "four"}
    # The 3.x phone gets the resolution as an ordinary update.
    await replicate(phone3, url, PULL)
    assert not phone3.default_collection.is_conflicted("doc")
    assert phone3.default_collection.get_document("doc").body == {"v": "four"}
    # And the 4.x phone, pulling again, sees nothing new and no conflict.
    again = await phone4.pull(listener)
    assert not again.conflicts and not again.received


async def test_4x_edit_first_then_3x_conflicts_and_resolution_reaches_4x(
    fleet, url_of, device_db
) -> None:
    listener, phone3, phone4 = fleet
    url = url_of(listener)
    device = device_db.default_collection
    device.save_document("doc", {"v": 0})
    await replicate(phone3, url, PULL)
    await phone4.pull(listener)
    base = phone3.default_collection.get_document("doc").rev_id
    phone3.default_collection.save_document("doc", {"v": "three"}, expected_rev=base)
    phone4.put("doc", {"v": "four"})
    report = await phone4.push(listener)
    assert report.statuses == {"doc": 0} and not report.rev_errors
    # The 3.x phone is refused, pulls the 4.x edit as a rev-tree conflict and resolves it the
    # way Couchbase Lite 3.x does: a child of the remote branch, its own branch closed.
    pushed3 = await replicate(phone3, url, PUSH)
    assert [d for d, _ in pushed3.conflicts] == ["doc"]

    class ThreeWins:  # the pull resolves the conflict with this (issue 11: it used to stay)
        def resolve(self, conflict: Any) -> dict[str, Any]:
            return {"v": "three wins"}

    await Replicator(
        ReplicatorConfiguration(
            database=phone3, url=url, replicator_type=PULL, conflict_resolver=ThreeWins()
        )
    ).run()
    collection3 = phone3.default_collection
    assert not collection3.is_conflicted("doc")
    assert collection3.get_document("doc").body == {"v": "three wins"}
    pushed3 = await replicate(phone3, url, PUSH)
    assert pushed3.docs_pushed == 1 and not pushed3.conflicts, pushed3
    # The 4.x phone gets the resolution as an ordinary update, not a conflict.
    pulled = await phone4.pull(listener)
    assert pulled.received == {"doc"} and not pulled.conflicts
    assert phone4.docs["doc"].body == {"v": "three wins"}
    assert device.get_document("doc").body == {"v": "three wins"}


async def test_device_edits_between_phones_converge(fleet, url_of, device_db) -> None:
    listener, phone3, phone4 = fleet
    url = url_of(listener)
    device = device_db.default_collection
    for i in range(5):
        device.save_document(f"d{i}", {"i": i})
    await replicate(phone3, url, PULL)
    await phone4.pull(listener)
    for round_ in range(3):
        phone4.put("d0", {"by": "four", "round": round_})
        await phone4.push(listener)
        await replicate(phone3, url, PULL)
        doc3 = phone3.default_collection.get_document("d0")
        phone3.default_collection.save_document(
            "d0", {"by": "three", "round": round_}, expected_rev=doc3.rev_id
        )
        await replicate(phone3, url, PUSH)
        pulled = await phone4.pull(listener)
        assert not pulled.conflicts, round_
        device.save_document("d1", {"by": "device", "round": round_})
        pulled = await phone4.pull(listener)
        assert "d1" in pulled.received and not pulled.conflicts
        await replicate(phone3, url, PULL)
    for i in range(5):
        body = device.get_document(f"d{i}").body
        assert phone3.default_collection.get_document(f"d{i}").body == body
        assert phone4.docs[f"d{i}"].body == body


# -- phones upgraded from rev trees (legacy revIDs in a CBMobile_4 session, VV-NOTES §3.3) --------


async def test_upgraded_phone_first_vv_save_over_our_current_revision(listener, device_db):
    """Regression (found by a real LiteCore 4.1 phone): a phone that held our current revision
    R as a legacy revID saves its first version over it and pushes ``rev: t@phone, history: R``.
    That descends from what we have, although our vector for R (a device version) is not in
    the phone's vector: it must be stored, not refused with 409."""
    device = device_db.default_collection
    device.save_document("u", {"v": 0})
    phone = VVPhone()
    phone.adopt_legacy("u", device.get_document("u").rev_id, {"v": 0})
    phone.put("u", {"v": 1})
    report = await phone.push(listener)
    assert report.statuses == {"u": 0} and not report.rev_errors, report
    assert device.get_document("u").body == {"v": 1}
    # The device edits again: the phone (vector + lastLegacyRevID) takes it as newer.
    current = device.get_document("u")
    device.save_document("u", {"v": 2}, expected_rev=current.rev_id)
    pulled = await phone.pull(listener)
    assert pulled.received == {"u"} and not pulled.conflicts, pulled
    assert phone.docs["u"].body == {"v": 2}


async def test_upgraded_phone_pulls_over_its_legacy_revision(listener, device_db):
    device = device_db.default_collection
    device.save_document("w", {"v": 0})
    base = device.get_document("w").rev_id
    phone = VVPhone()
    phone.adopt_legacy("w", base, {"v": 0})
    device.save_document("w", {"v": 1}, expected_rev=base)
    device.save_document("w", {"v": 2}, expected_rev=device.get_document("w").rev_id)
    pulled = await phone.pull(listener)
    assert pulled.received == {"w"} and not pulled.conflicts, pulled
    (rev,) = [r for r in pulled.revs if r["id"] == "w"]
    assert rev["history"].endswith(base)  # the rev-tree chain down to the phone's revision
    # Learned: the phone's lastLegacyRevID is the base; its next edit goes up and a later
    # device edit comes back down, neither as a conflict.
    phone.put("w", {"v": 3})
    report = await phone.push(listener)
    assert report.statuses == {"w": 0} and not report.rev_errors, report
    device.save_document("w", {"v": 4}, expected_rev=device.get_document("w").rev_id)
    pulled = await phone.pull(listener)
    assert pulled.received == {"w"} and not pulled.conflicts, pulled
    assert phone.docs["w"].body == {"v": 4} and device.get_document("w").body == {"v": 4}


async def test_upgraded_phone_real_conflict_stays_a_conflict(listener, device_db):
    device = device_db.default_collection
    device.save_document("x", {"v": 0})
    base = device.get_document("x").rev_id
    phone = VVPhone()
    phone.adopt_legacy("x", base, {"v": 0})
    device.save_document("x", {"v": "device"}, expected_rev=base)
    phone.put("x", {"v": "phone"})
    report = await phone.push(listener)
    assert report.statuses["x"]["status"] == 409, report
    pulled = await phone.pull(listener)
    assert pulled.conflicts == {"x"}


# -- a device database from before version vectors -------------------------------------------------


@pytest.fixture
async def old_device(tmp_path: Path) -> AsyncIterator[tuple[Any, Database]]:
    """The schema-1 fixture of tests/store (documents without vectors), served as /device."""
    import sqlite3

    from fieldsync.store.paths import DATABASE_FILE

    fixture = Path(__file__).parent.parent / "store" / "fixtures" / "schema_v1.sql"
    directory = tmp_path / "old" / "device"
    directory.mkdir(parents=True)
    conn = sqlite3.connect(directory / DATABASE_FILE)
    conn.executescript(fixture.read_text())
    conn.close()
    db = Database.open(directory)
    async with serving(db) as server:
        yield server, db
    db.close()


async def test_legacy_docs_go_to_a_4x_phone_as_rte_versions(old_device) -> None:
    """Regression (found with a real LiteCore 4.1 phone): documents without a vector are sent
    as RTE versions, never bare legacy revIDs; later edits on either side then replicate as
    ordinary updates."""
    server, db = old_device
    device = db.default_collection
    legacy = {c.doc_id: c.rev_id for c in device.changes_since(0) if c.version is None}
    assert legacy
    phone = VVPhone()
    pulled = await phone.pull(server)
    assert not pulled.conflicts
    for row in pulled.rows:
        assert "@" in row[2], row  # never a bare legacy revID
    live = sorted(d for d in legacy if device.get_document(d) is not None)
    first, second = live[0], live[1]
    assert phone.docs[first].vector is not None
    assert str(phone.docs[first].vector.cv) == str(legacy_version(legacy[first]))
    # The device app edits one: the phone (holding the RTE version) takes it as newer.
    current = device.get_document(first)
    device.save_document(first, dict(current.body, by="device"), expected_rev=current.rev_id)
    pulled = await phone.pull(server)
    assert pulled.received == {first} and not pulled.conflicts, pulled
    # The phone edits the other one (its vector holds only the RTE version) and pushes.
    phone.put(second, dict(phone.docs[second].body, by="phone"))
    report = await phone.push(server)
    assert report.statuses == {second: 0} and not report.rev_errors, report
    assert device.get_document(second).body["by"] == "phone"
    # Both ways once more: ordinary updates.
    current = device.get_document(second)
    device.save_document(second, dict(current.body, again=True), expected_rev=current.rev_id)
    pulled = await phone.pull(server)
    assert pulled.received == {second} and not pulled.conflicts, pulled


async def test_changes_from_a_vv_peer_are_answered_with_versions(listener, device_db) -> None:
    """A peer pushing with ``changes`` instead of ``proposeChanges`` (LiteCore 4.x does not, a
    Sync Gateway-style peer might): rows name versions, possibly whole vectors."""
    device = device_db.default_collection
    device.save_document("have", {"v": 1})
    have = str(device.get_versions("have").hlv.cv)
    new = Version(0x18ECB6C7F6DC0000, VVPhone().source)
    async with RawClient(listener, CBMOBILE_4, "device") as session:
        await session.request("getCollections", {}, collections_body("_default"))
        rows = [[1, "have", have], [2, "new", f"{new}; {have}"]]
        reply = await session.request("changes", {"collection": "0"}, json.dumps(rows).encode())
        assert not reply.is_error and json.loads(reply.body) == [0, []]
        assert "maxHistory" not in reply.properties
        bad = await session.request(
            "changes", {"collection": "0"}, json.dumps([[3, "x", "1@*"]]).encode()
        )
        assert bad.error_code == 400 and "rev of 'x'" in (bad.error_message or "")
        stored = await session.request(
            "rev", {"collection": "0", "id": "new", "rev": str(new), "sequence": "2"}, b"{}"
        )
        assert not stored.is_error, stored.error_message
    assert device.get_versions("new").hlv.cv == new
