"""Issue 11, row 10: a pushed revision naming a blob the device holds (and did not send on
this connection) is stored only after the peer proves it has the bytes (proveAttachment)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.listener.raw_blip import RawClient

from fieldsync.listener import URLEndpointListener, URLEndpointListenerConfiguration
from fieldsync.replication.blobs import blob_proof
from fieldsync.store import Database

SECRET = b"the device's private survey photo " * 100


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[URLEndpointListener, Database, str]]:
    db = Database.open(tmp_path / "db")
    digest = db.blobs.put(SECRET)  # held by the device, in no document a peer can pull
    listener = URLEndpointListener(
        URLEndpointListenerConfiguration(database=db, port=0, disable_tls=True)
    )
    await listener.start()
    yield listener, db, digest
    await listener.stop()
    db.close()


def rev_naming(digest: str, doc_id: str = "steal") -> tuple[dict[str, str], bytes]:
    body = {"photo": {"@type": "blob", "digest": digest, "length": len(SECRET)}}
    return {"id": doc_id, "rev": "1-" + "b" * 40, "history": ""}, json.dumps(body).encode()


async def test_naming_a_blob_without_proof_is_refused(served) -> None:
    listener, db, digest = served
    async with RawClient(listener) as session:
        asked: list[bytes] = []

        def bluff(request) -> None:
            asked.append(request.body)
            request.respond({}, b"sha1-AAAAAAAAAAAAAAAAAAAAAAAAAAA=")

        session.register("proveAttachment", bluff)
        reply = await asyncio.wait_for(session.request("rev", *rev_naming(digest)), 10)
        assert reply is not None and reply.is_error and reply.error_code == 403
        assert len(asked) == 1 and 0 < len(asked[0]) <= 255
        # Nothing stored, so there is nothing to pull the blob through.
        assert db.default_collection.get_document("steal") is None
        pulled = await session.request("getAttachment", {"digest": digest})
        assert pulled is not None and pulled.is_error


async def test_a_peer_that_has_the_blob_proves_it_and_is_stored(served) -> None:
    listener, db, digest = served
    async with RawClient(listener) as session:
        session.register(
            "proveAttachment",
            lambda request: request.respond({}, blob_proof(request.body, SECRET).encode()),
        )
        reply = await asyncio.wait_for(session.request("rev", *rev_naming(digest, "mine")), 10)
        assert reply is not None and not reply.is_error
    assert db.default_collection.get_document("mine") is not None


async def test_without_prove_attachment_sending_the_bytes_proves_it(served) -> None:
    """A peer with no proveAttachment handler (BLIP 404) is asked for the blob instead."""
    listener, db, digest = served
    async with RawClient(listener) as session:
        session.register("getAttachment", lambda request: request.respond({}, SECRET))
        reply = await asyncio.wait_for(session.request("rev", *rev_naming(digest, "sent")), 10)
        assert reply is not None and not reply.is_error
        liar = await asyncio.wait_for(session.request("rev", *rev_naming(digest, "sent2")), 10)
        assert liar is not None and not liar.is_error  # proven once per connection
    assert db.default_collection.get_document("sent") is not None
