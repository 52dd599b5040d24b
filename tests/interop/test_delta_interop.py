"""Delta sync between LiteCore 3.2 (the phone) and fieldsync's listener (``enable_delta_sync``).

Documents of ~10 KB (incompressible text, so BLIP's deflate cannot hide a full body) are synced,
then one field changes on one side. The evidence that a delta crossed the wire comes from
LiteCore's own ``BLIPMessages`` log (a ``rev`` carrying ``deltaSrc``) and from the listener's
byte counters; the bodies must come out equal either way. A blob added inside a delta-updated
document must reach the other side in both directions. With delta sync off, everything still
syncs with full bodies. Skipped without ``FIELDSYNC_LITECORE_LIB``.
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
)
from tests.interop.litecore import LiteDatabase

listener_mod = pytest.importorskip("fieldsync.listener", reason="fieldsync.listener not importable")
store_mod = pytest.importorskip("fieldsync.store", reason="fieldsync.store not importable")

DOCS = 4
FIELDS = 20
FIELD_CHARS = 500  # 20 fields x 500 base64 chars: ~10 KB of JSON that deflate cannot shrink much
#: Upper bound on what one connection moves for a one-field delta (checkpoints, changes, rev).
DELTA_CONNECTION_BYTES = 4_000
#: A full ~10 KB body compresses to no less than this (base64 of random bytes: 6 bits/char).
FULL_BODY_MIN_BYTES = 7_000


def _text(rng: random.Random, chars: int) -> str:
    return base64.b64encode(rng.randbytes(chars * 3 // 4)).decode()[:chars]


def _big_body(seed: str) -> dict[str, Any]:
    rng = random.Random(seed)
    body: dict[str, Any] = {f"f{k:02}": _text(rng, FIELD_CHARS) for k in range(FIELDS)}
    body["meta"] = {"seed": seed, "tags": ["a", "b", {"deep": [1, 2.5, None, True]}]}
    return body


async def _listener(device_db: Any, delta: bool) -> Any:
    config = listener_mod.URLEndpointListenerConfiguration(
        database=device_db, port=0, disable_tls=True, enable_delta_sync=delta
    )
    server = listener_mod.URLEndpointListener(config)
    await server.start()
    return server


@pytest.fixture
async def delta_listener(device_db: Any, connections: ConnectionRecorder) -> AsyncIterator[Any]:
    server = await _listener(device_db, True)
    yield server
    await server.stop()


@pytest.fixture
async def plain_listener(device_db: Any, connections: ConnectionRecorder) -> AsyncIterator[Any]:
    server = await _listener(device_db, False)
    yield server
    await server.stop()


class Session:
    """One one-shot push+pull, with what LiteCore logged and what the listener counted."""

    def __init__(self, messages: list[LoggedMessage], totals: dict[str, int], ended: list) -> None:
        self.messages = messages
        self.totals = totals
        self.ended = ended

    def revs(self, direction: str) -> dict[str, LoggedMessage]:
        """``rev`` requests by docID; "RECEIVED" = pulled by LiteCore, "SENDING" = pushed."""
        return {
            m.properties["id"]: m
            for m in self.messages
            if m.kind == "REQ" and m.profile == "rev" and m.direction == direction
        }


async def _sync(
    phone: LiteDatabase, server: Any, log: Path | None, connections: ConnectionRecorder
) -> Session:
    start, mark = log_size(log), connections.mark()
    with phone.replicator(url(server)) as repl:
        status = await run(repl)
        assert not status.error, status
        ended = list(repl.documents_ended)
    assert not [d for d in ended if d.error], ended
    return Session(logged_messages(log, start), connections.totals(since=mark), ended)


def _seed(device_db: Any, phone: LiteDatabase) -> None:
    with device_db.transaction():
        for i in range(DOCS):
            device_db.default_collection.save_document(f"dev-{i}", _big_body(f"dev-{i}"))
    for i in range(DOCS):
        phone.put(f"ph-{i}", _big_body(f"ph-{i}"))


def _assert_same(device_db: Any, phone: LiteDatabase) -> None:
    on_device, on_phone = device_docs(device_db.default_collection), phone_docs(phone)
    assert on_device.keys() == on_phone.keys()
    assert [d for d in on_device if on_device[d] != on_phone[d]] == []


async def test_delta_sync_both_ways_with_blobs(
    delta_listener: Any,
    device_db: Any,
    phone: LiteDatabase,
    connections: ConnectionRecorder,
    litecore_log: Path | None,
) -> None:
    if litecore_log is None:
        pytest.skip("LiteCore's log is needed to see deltas on the wire")
    device = device_db.default_collection
    _seed(device_db, phone)
    first = await _sync(phone, delta_listener, litecore_log, connections)
    assert len(first.ended) == 2 * DOCS
    assert all("deltaSrc" not in m.properties for m in first.revs("RECEIVED").values())
    _assert_same(device_db, phone)
    # The listener announced delta support in its proposeChanges reply (first reply only).
    replies = [m for m in first.messages if m.direction == "RECEIVED" and m.kind == "RES"]
    assert any(m.properties.get("deltas") == "true" for m in replies), replies

    # One field changed on the device: LiteCore pulls a delta.
    base = device.get_document("dev-0")
    body = dict(base.body, f05="changed on the device")
    new_rev = device.save_document("dev-0", body, expected_rev=base.rev_id).rev_id
    pull = await _sync(phone, delta_listener, litecore_log, connections)
    rev = pull.revs("RECEIVED")["dev-0"]
    assert rev.properties["rev"] == new_rev
    assert rev.properties.get("deltaSrc") == base.rev_id, rev
    assert phone.get("dev-0")["body"] == body
    assert pull.totals["docs_out"] == 1 and pull.totals["docs_in"] == 0, pull.totals
    assert pull.totals["bytes_out"] < DELTA_CONNECTION_BYTES, pull.totals

    # One field changed on the phone: LiteCore pushes a delta, fieldsync applies it.
    old_rev = phone.get("ph-0")["revID"]
    phone_body = dict(phone.get("ph-0")["body"], f11="changed on the phone", extra=[1, 2])
    del phone_body["f12"]
    pushed_rev = phone.put("ph-0", phone_body)
    push = await _sync(phone, delta_listener, litecore_log, connections)
    rev = push.revs("SENDING")["ph-0"]
    assert rev.properties.get("deltaSrc") == old_rev, rev
    assert device.get_document("ph-0").body == phone_body
    assert device.get_document("ph-0").rev_id == pushed_rev
    assert push.totals["docs_in"] == 1, push.totals
    assert push.totals["bytes_in"] < DELTA_CONNECTION_BYTES, push.totals

    # A blob added inside a delta-updated document, device -> phone.
    blob_data = random.Random("device blob").randbytes(30_000)
    digest = device_db.blobs.put(blob_data)
    base = device.get_document("dev-1")
    blob = {
        "@type": "blob",
        "digest": digest,
        "length": len(blob_data),
        "content_type": "application/octet-stream",
    }
    body = dict(base.body, f00="and a photo", photo=blob)
    device.save_document("dev-1", body, expected_rev=base.rev_id)
    pulled = await _sync(phone, delta_listener, litecore_log, connections)
    rev = pulled.revs("RECEIVED")["dev-1"]
    assert rev.properties.get("deltaSrc") == base.rev_id, rev
    assert phone.get_blob(digest) == blob_data
    assert phone.get("dev-1")["body"] == body
    assert pulled.totals["blobs_out"] == 1, pulled.totals

    # A blob added inside a delta-updated document, phone -> device.
    phone_blob_data = random.Random("phone blob").randbytes(25_000)
    phone_blob = phone.put_blob(phone_blob_data, "image/jpeg")
    old_rev = phone.get("ph-1")["revID"]
    phone_body = dict(phone.get("ph-1")["body"], f19="with a picture", pic=[phone_blob])
    phone.put("ph-1", phone_body)
    pushed = await _sync(phone, delta_listener, litecore_log, connections)
    rev = pushed.revs("SENDING")["ph-1"]
    assert rev.properties.get("deltaSrc") == old_rev, rev
    assert device_db.blobs.read(phone_blob["digest"]) == phone_blob_data
    assert device.get_document("ph-1").body == phone_body
    assert pushed.totals["blobs_in"] == 1, pushed.totals

    _assert_same(device_db, phone)
    assert pushed.totals["errors"] == 0 and pulled.totals["errors"] == 0


async def test_delta_sync_off_sends_full_bodies(
    plain_listener: Any,
    device_db: Any,
    phone: LiteDatabase,
    connections: ConnectionRecorder,
    litecore_log: Path | None,
) -> None:
    device = device_db.default_collection
    _seed(device_db, phone)
    first = await _sync(phone, plain_listener, litecore_log, connections)
    assert len(first.ended) == 2 * DOCS
    if litecore_log is not None:
        replies = [m for m in first.messages if m.direction == "RECEIVED" and m.kind == "RES"]
        assert not any("deltas" in m.properties for m in replies), replies

    base = device.get_document("dev-0")
    body = dict(base.body, f05="changed on the device")
    device.save_document("dev-0", body, expected_rev=base.rev_id)
    phone_body = dict(phone.get("ph-0")["body"], f11="changed on the phone")
    phone.put("ph-0", phone_body)
    blob_data = random.Random("blob").randbytes(10_000)
    phone_blob = phone.put_blob(blob_data, "application/octet-stream")
    phone.put("ph-1", dict(phone.get("ph-1")["body"], att=phone_blob))
    second = await _sync(phone, plain_listener, litecore_log, connections)
    assert second.totals["docs_in"] == 2 and second.totals["docs_out"] == 1, second.totals
    # Full bodies: the device sent at least one whole ~10 KB revision, and received two.
    assert second.totals["bytes_out"] > FULL_BODY_MIN_BYTES, second.totals
    assert second.totals["bytes_in"] > 2 * FULL_BODY_MIN_BYTES + len(blob_data), second.totals
    if litecore_log is not None:
        revs = [m for m in second.messages if m.profile == "rev"]
        assert {m.properties["id"] for m in revs} == {"dev-0", "ph-0", "ph-1"}
        assert not [m for m in revs if "deltaSrc" in m.properties], revs
    assert device.get_document("ph-0").body == phone_body
    assert phone.get("dev-0")["body"] == body
    assert device_db.blobs.read(phone_blob["digest"]) == blob_data
    _assert_same(device_db, phone)
