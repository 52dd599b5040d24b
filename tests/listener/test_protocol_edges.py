"""The listener against a raw BLIP client: malformed input, modes, NoReply, HTTP refusals."""

from __future__ import annotations

import asyncio
import json

import pytest
from tests.listener.raw_blip import RawClient
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus


async def test_101_echoes_the_subprotocol(served) -> None:
    listener, _ = served
    async with RawClient(listener, ["BLIP_3+CBMobile_3", "BLIP_3+CBMobile_2"]):
        pass
    ws = await connect(
        f"ws://127.0.0.1:{listener.port}/db/_blipsync", subprotocols=["BLIP_3+CBMobile_2"]
    )
    assert ws.subprotocol == "BLIP_3+CBMobile_2"
    await ws.close()


@pytest.mark.parametrize(
    ("path", "protocols", "status"),
    [
        ("/nope/_blipsync", ["BLIP_3+CBMobile_3"], 404),
        ("/db/_blipsync", ["BLIP_3+CBMobile_9"], 406),
        ("/db", ["BLIP_3+CBMobile_3"], 404),
    ],
)
async def test_upgrade_refusals_are_clear_http_errors(served, path, protocols, status) -> None:
    listener, _ = served
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"ws://127.0.0.1:{listener.port}{path}", subprotocols=protocols)
    assert refused.value.response.status_code == status
    assert refused.value.response.body.strip()


async def test_unknown_profile_is_blip_404(served) -> None:
    async with RawClient(served[0]) as session:
        reply = await session.request("frobnicate", {})
        assert (reply.error_domain, reply.error_code) == ("BLIP", 404)


async def test_checkpoints_mvcc(served) -> None:
    async with RawClient(served[0]) as session:
        missing = await session.request("getCheckpoint", {"client": "cp-x"})
        assert (missing.error_domain, missing.error_code) == ("HTTP", 404)
        saved = await session.request("setCheckpoint", {"client": "cp-x"}, b'{"local":5}')
        rev = saved.properties["rev"]
        got = await session.request("getCheckpoint", {"client": "cp-x"})
        assert got.properties["rev"] == rev and json.loads(got.body) == {"local": 5}
        stale = await session.request("setCheckpoint", {"client": "cp-x", "rev": "0-cc"}, b"{}")
        assert stale.error_code == 409
        again = await session.request("setCheckpoint", {"client": "cp-x", "rev": rev}, b"{}")
        assert not again.is_error and again.properties["rev"] != rev


async def test_collection_property_in_legacy_mode_is_400(served) -> None:
    async with RawClient(served[0]) as session:
        await session.request("getCheckpoint", {"client": "cp-y"})
        reply = await session.request("proposeChanges", {"collection": "0"}, b"[]")
        assert reply.error_code == 400
        late = await session.request(
            "getCollections", {}, b'{"checkpoint_ids":["a"],"collections":["_default"]}'
        )
        assert late.error_code == 400


async def test_collection_aware_mode(served) -> None:
    _, db = served
    db.create_collection("things", "s")
    async with RawClient(served[0]) as session:
        body = {
            "checkpoint_ids": ["a", "b", "c", "d"],
            "collections": ["_default", "s.things", "s.no", "bad name!"],
        }
        reply = await session.request("getCollections", {}, json.dumps(body).encode())
        assert json.loads(reply.body) == [{}, {}, None, None]
        without = await session.request("proposeChanges", {}, b'[["d","1-aa"]]')
        assert without.error_code == 400
        to_missing = await session.request("proposeChanges", {"collection": "2"}, b"[]")
        assert to_missing.error_code == 404
        ok = await session.request("proposeChanges", {"collection": "1"}, b'[["d","1-aa"]]')
        assert not ok.is_error and json.loads(ok.body) == []


@pytest.mark.parametrize(
    ("profile", "body"),
    [
        ("proposeChanges", b"{not json"),
        ("proposeChanges", b'{"a": 1}'),
        ("changes", b'[["seq-only"]]'),
        ("getCollections", b"[]"),
        ("subChanges", b"[1,2"),
    ],
)
async def test_malformed_messages_get_400_and_the_connection_survives(served, profile, body):
    async with RawClient(served[0]) as session:
        reply = await session.request(profile, {}, body)
        assert reply.is_error and reply.error_code == 400
        alive = await session.request("getCheckpoint", {"client": "still-here"})
        assert alive.error_code == 404


async def test_noreply_requests_are_never_answered(served) -> None:
    async with RawClient(served[0]) as session:
        assert await session.request("proposeChanges", {}, b"[]", no_reply=True) is None
        assert await session.request("frobnicate", {}, no_reply=True) is None
        reply = await session.request("getCheckpoint", {"client": "z"})
        # The first answer this client sees is the one to its last request: nothing else came.
        assert reply.error_code == 404


async def test_bad_rev_is_refused_and_nothing_stored(served) -> None:
    _, db = served
    async with RawClient(served[0]) as session:
        bad_id = await session.request("rev", {"id": "d", "rev": "banana"}, b"{}")
        assert bad_id.error_code == 400
        # Bodies are checked by the store (the loop parses only one that may name blobs).
        for body in (b"[1]", b"{not json", b'{"a":' * 5000, b'{"digest": [}'):
            refused = await session.request("rev", {"id": "d", "rev": "1-" + "a" * 40}, body)
            assert refused.error_code == 400, body[:20]
    assert db.default_collection.get_document("d") is None


async def test_garbage_frame_closes_only_that_connection(served) -> None:
    listener, db = served
    db.default_collection.save_document("x", {"y": 1})
    ws = await connect(
        f"ws://127.0.0.1:{listener.port}/db/_blipsync", subprotocols=["BLIP_3+CBMobile_3"]
    )
    await ws.send(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff")
    await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 1002
    async with RawClient(listener) as session:
        reply = await session.request("getCheckpoint", {"client": "after"})
        assert reply.error_code == 404


async def test_get_attachment_only_for_blobs_sent_on_the_connection(served) -> None:
    _, db = served
    digest = db.blobs.put(b"secret bytes")
    async with RawClient(served[0]) as session:
        reply = await session.request("getAttachment", {"digest": digest})
        assert reply.error_code == 403


async def test_caught_up_changes_comes_after_the_backlog(served) -> None:
    """LiteCore ends a one-shot pull at the first empty ``changes``: it must come last."""
    _, db = served
    for i in range(450):
        db.default_collection.save_document(f"d{i}", {"i": i})
    async with RawClient(served[0]) as session:
        seen: list[int] = []
        done = asyncio.Event()

        def on_changes(request) -> None:
            entries = request.json()
            seen.append(len(entries))
            if entries:
                request.respond({}, b"[]")  # want none of them
            else:
                done.set()

        session.register("changes", on_changes)
        reply = await session.request("subChanges", {"batch": "200"})
        assert not reply.is_error
        await asyncio.wait_for(done.wait(), 10)
    assert seen == [200, 200, 50, 0]
