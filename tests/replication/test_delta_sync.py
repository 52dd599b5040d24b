"""Delta sync against the listener: deltas sent and accepted, fallbacks, blobs inside deltas."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from fieldsync.blip import BLIPSession
from fieldsync.delta import apply_delta_json, create_delta_json
from fieldsync.listener import URLEndpointListener, URLEndpointListenerConfiguration
from fieldsync.replicator import Replicator, ReplicatorConfiguration, ReplicatorType
from fieldsync.store import Database

#: Incompressible filler, so that BLIP compression does not hide what deltas save.
BIG = {"title": "pump station", "log": random.Random(7).randbytes(2500).hex(), "reading": 1}


async def _served(db: Database, *, delta: bool) -> URLEndpointListener:
    listener = URLEndpointListener(
        URLEndpointListenerConfiguration(
            database=db, port=0, disable_tls=True, enable_delta_sync=delta
        )
    )
    await listener.start()
    return listener


class Raw:
    """A hand-driven peer, to see exactly what the listener sends and answers."""

    def __init__(self, listener: URLEndpointListener) -> None:
        self.url = f"ws://127.0.0.1:{listener.port}/device/_blipsync"

    async def __aenter__(self) -> BLIPSession:
        ws = await connect(self.url, subprotocols=["BLIP_3+CBMobile_3"], compression=None)
        self.session = BLIPSession(ws, name="raw")
        self.reader = asyncio.create_task(self.session.run())
        return self.session

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()
        self.reader.cancel()


@pytest.fixture
def device(tmp_path: Path):
    db = Database.open(tmp_path / "device")
    yield db
    db.close()


async def _pull_one(session: BLIPSession, known: list[str], *, deltas: bool) -> dict:
    """Ask for changes, answer with ``known`` ancestors, return the first rev's properties+body."""
    got: asyncio.Future = asyncio.get_running_loop().create_future()

    def on_changes(request) -> None:
        if request.no_reply:
            return
        props = {"deltas": "true"} if deltas else {}
        request.respond(props, json.dumps([known]).encode())

    def on_rev(request) -> None:
        if not got.done():
            got.set_result((dict(request.properties), request.body))
        request.respond()

    session.register("changes", on_changes)
    session.register("rev", on_rev)
    await session.request("subChanges", {})
    return await asyncio.wait_for(got, 10)


@pytest.mark.parametrize("delta_on", [True, False])
async def test_pull_sends_a_delta_only_when_on(device, delta_on) -> None:
    coll = device.default_collection
    first = coll.save_document("doc", BIG)
    second = coll.save_document("doc", {**BIG, "reading": 2})
    listener = await _served(device, delta=delta_on)
    try:
        async with Raw(listener) as session:
            props, body = await _pull_one(session, [first.rev_id], deltas=True)
    finally:
        await listener.stop()
    assert props["rev"] == second.rev_id
    base = coll.get_revision("doc", first.rev_id).body
    if delta_on:
        assert props["deltaSrc"] == first.rev_id
        assert len(body) < 100
        assert json.loads(apply_delta_json(base, body)) == {**BIG, "reading": 2}
    else:
        assert "deltaSrc" not in props
        assert json.loads(body) == {**BIG, "reading": 2}


async def test_no_delta_when_the_peer_did_not_offer_deltas(device) -> None:
    coll = device.default_collection
    first = coll.save_document("doc", BIG)
    coll.save_document("doc", {**BIG, "reading": 2})
    listener = await _served(device, delta=True)
    try:
        async with Raw(listener) as session:
            props, _ = await _pull_one(session, [first.rev_id], deltas=False)
    finally:
        await listener.stop()
    assert "deltaSrc" not in props


async def _propose(session: BLIPSession, doc_id: str, rev_id: str, parent: str):
    return await session.request(
        "proposeChanges", {}, json.dumps([[doc_id, rev_id, parent]]).encode()
    )


async def test_push_with_delta_accepted_and_deltas_announced(device) -> None:
    coll = device.default_collection
    base = coll.save_document("doc", BIG)
    new_body = {**BIG, "reading": 3}
    rev2 = "2-" + "ab" * 20
    listener = await _served(device, delta=True)
    try:
        async with Raw(listener) as session:
            reply = await _propose(session, "doc", rev2, base.rev_id)
            assert reply.properties.get("deltas") == "true"
            delta = create_delta_json(json.dumps(BIG), json.dumps(new_body))
            answer = await session.request(
                "rev",
                {"id": "doc", "rev": rev2, "history": base.rev_id, "deltaSrc": base.rev_id},
                delta,
            )
            assert not answer.is_error, answer.error_message
    finally:
        await listener.stop()
    assert coll.get_document("doc").body == new_body


async def test_delta_off_means_no_deltas_property(device) -> None:
    listener = await _served(device, delta=False)
    try:
        async with Raw(listener) as session:
            reply = await _propose(session, "doc", "1-" + "cd" * 20, "")
            assert "deltas" not in reply.properties
    finally:
        await listener.stop()


async def test_unknown_base_and_corrupt_delta_get_the_errors_litecore_retries_on(device) -> None:
    coll = device.default_collection
    base = coll.save_document("doc", BIG)
    listener = await _served(device, delta=True)
    try:
        async with Raw(listener) as session:
            await _propose(session, "doc", "2-" + "ef" * 20, base.rev_id)
            unknown = await session.request(
                "rev",
                {
                    "id": "doc",
                    "rev": "2-" + "ef" * 20,
                    "history": base.rev_id,
                    "deltaSrc": "1-" + "00" * 20,
                },
                b'{"reading":5}',
            )
            assert (unknown.error_domain, unknown.error_code) == ("HTTP", 422)
            assert "not available" in unknown.error_message
            corrupt = await session.request(
                "rev",
                {
                    "id": "doc",
                    "rev": "2-" + "ef" * 20,
                    "history": base.rev_id,
                    "deltaSrc": base.rev_id,
                },
                b'{"log": [1, 2, 3, 4, 5], "title": {"x": 1}}',
            )
            assert (corrupt.error_domain, corrupt.error_code) == ("HTTP", 422)
            assert "cannot apply delta" in corrupt.error_message
    finally:
        await listener.stop()
    assert coll.get_document("doc").rev_id == base.rev_id


async def test_blob_added_inside_a_delta_is_fetched(device) -> None:
    coll = device.default_collection
    base = coll.save_document("doc", BIG)
    blob_bytes = b"photo-bytes" * 100
    listener = await _served(device, delta=True)
    try:
        async with Raw(listener) as session:
            from fieldsync.store.blobs import compute_digest

            digest = compute_digest(blob_bytes)
            requested = []

            def get_attachment(request) -> None:
                requested.append(request.properties["digest"])
                request.respond({}, blob_bytes)

            session.register("getAttachment", get_attachment)
            new_body = {
                **BIG,
                "photo": {
                    "@type": "blob",
                    "digest": digest,
                    "length": len(blob_bytes),
                    "content_type": "image/jpeg",
                },
            }
            delta = create_delta_json(json.dumps(BIG), json.dumps(new_body))
            rev2 = "2-" + "12" * 20
            await _propose(session, "doc", rev2, base.rev_id)
            answer = await session.request(
                "rev",
                {"id": "doc", "rev": rev2, "history": base.rev_id, "deltaSrc": base.rev_id},
                delta,
            )
            assert not answer.is_error, answer.error_message
            assert requested == [digest]
    finally:
        await listener.stop()
    assert device.blobs.read(digest) == blob_bytes


async def test_replicators_use_deltas_both_ways_and_save_bytes(tmp_path, device) -> None:
    phone = Database.open(tmp_path / "phone")
    docs = {f"d{i}": {**BIG, "log": random.Random(i).randbytes(2500).hex()} for i in range(20)}
    for doc_id, body in docs.items():
        device.default_collection.save_document(doc_id, body)
    listener = await _served(device, delta=True)
    url = f"ws://127.0.0.1:{listener.port}/device"

    def run(kind: ReplicatorType):
        config = ReplicatorConfiguration(database=phone, url=url, replicator_type=kind)
        return Replicator(config).run()

    try:
        full = await run(ReplicatorType.PULL)
        for doc_id in docs:
            doc = device.default_collection.get_document(doc_id)
            device.default_collection.save_document(doc_id, {**doc.body, "reading": 7})
        delta_pull = await run(ReplicatorType.PULL)
        assert delta_pull.docs_pulled == 20
        assert delta_pull.bytes_received * 5 < full.bytes_received
        for doc_id in docs:
            doc = phone.default_collection.get_document(doc_id)
            assert doc.body == {**docs[doc_id], "reading": 7}
            phone.default_collection.save_document(doc_id, {**doc.body, "reading": 8})
        delta_push = await run(ReplicatorType.PUSH)
        assert delta_push.docs_pushed == 20
        assert delta_push.bytes_sent * 5 < full.bytes_received
        for doc_id in docs:
            assert device.default_collection.get_document(doc_id).body["reading"] == 8
    finally:
        await listener.stop()
        phone.close()


async def test_a_refused_delta_is_resent_in_full(device) -> None:
    coll = device.default_collection
    first = coll.save_document("doc", BIG)
    coll.save_document("doc", {**BIG, "reading": 2})
    listener = await _served(device, delta=True)
    received: list[tuple[dict, bytes]] = []
    full = asyncio.Event()
    try:
        async with Raw(listener) as session:

            def on_changes(request) -> None:
                if not request.no_reply:
                    request.respond({"deltas": "true"}, json.dumps([[first.rev_id]]).encode())

            def on_rev(request) -> None:
                received.append((dict(request.properties), request.body))
                if "deltaSrc" in request.properties:
                    request.respond_error("HTTP", 422, "Invalid delta")
                else:
                    request.respond()
                    full.set()

            session.register("changes", on_changes)
            session.register("rev", on_rev)
            await session.request("subChanges", {})
            await asyncio.wait_for(full.wait(), 10)
    finally:
        await listener.stop()
    assert ["deltaSrc" in props for props, _ in received] == [True, False]
    assert json.loads(received[1][1]) == {**BIG, "reading": 2}
