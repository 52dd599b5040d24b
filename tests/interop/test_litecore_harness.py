"""The LiteCore harness itself: local database work and the replicator reaching the network.

These need only the external library (no fieldsync code), so a failure here is a harness or
library problem, not a fieldsync one.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import socket

import pytest
from tests.interop.litecore import (
    NETWORK_DOMAIN,
    POSIX_DOMAIN,
    WEBSOCKET_DOMAIN,
    LiteCore,
    LiteCoreError,
    LiteDatabase,
)
from tests.interop.trace_peer import SUBPROTOCOL, TracePeer

NET_ERR_CONNECTION_REFUSED = 19  # C4NetworkErrorCode kC4NetErrConnectionRefused


def test_library_reports_its_version(litecore: LiteCore) -> None:
    assert "3.2" in litecore.version


def test_put_get_update_delete(phone: LiteDatabase) -> None:
    rev1 = phone.put("doc1", {"name": "pump", "n": 1})
    assert rev1.startswith("1-")
    doc = phone.get("doc1")
    assert doc is not None
    assert doc["revID"] == rev1
    assert doc["body"] == {"name": "pump", "n": 1}
    assert not doc["deleted"]

    rev2 = phone.put("doc1", {"name": "pump", "n": 2})
    assert rev2.startswith("2-")
    doc = phone.get("doc1")
    assert doc is not None
    assert doc["body"]["n"] == 2
    assert doc["history"] == [rev2, rev1]

    rev3 = phone.delete("doc1")
    assert rev3.startswith("3-")
    doc = phone.get("doc1")
    assert doc is not None
    assert doc["deleted"]
    assert phone.all_docs() == {}
    assert phone.all_docs(include_deleted=True) == {"doc1": {}}
    assert phone.get("never-written") is None


def test_all_docs_and_count(phone: LiteDatabase) -> None:
    for i in range(5):
        phone.put(f"d{i}", {"i": i})
    assert phone.count() == 5
    assert phone.all_docs() == {f"d{i}": {"i": i} for i in range(5)}


def test_named_collection_is_separate(phone: LiteDatabase) -> None:
    phone.create_collection("inventory.items")
    phone.put("a", {"where": "items"}, collection="inventory.items")
    phone.put("a", {"where": "default"})
    assert phone.all_docs("inventory.items") == {"a": {"where": "items"}}
    assert phone.all_docs() == {"a": {"where": "default"}}
    with pytest.raises(LiteCoreError):
        phone.all_docs("inventory.missing")


def test_blob_round_trip(phone: LiteDatabase) -> None:
    data = bytes(range(256)) * 40
    blob = phone.put_blob(data, "application/octet-stream")
    expected = "sha1-" + base64.b64encode(hashlib.sha1(data).digest()).decode()
    assert blob == {
        "@type": "blob",
        "digest": expected,
        "length": len(data),
        "content_type": "application/octet-stream",
    }
    assert phone.get_blob(blob) == data
    phone.put("with-blob", {"photo": blob})
    doc = phone.get("with-blob")
    assert doc is not None
    assert doc["hasAttachments"]
    assert doc["body"]["photo"]["digest"] == expected
    missing = "sha1-" + base64.b64encode(hashlib.sha1(b"nope").digest()).decode()
    assert phone.get_blob(missing) is None


def test_fleece_options_encode(litecore: LiteCore) -> None:
    # Fleece is binary and self-describing; the root of a dict ends with its type/count tag.
    data = litecore.encode_fleece({"a": [1, 2.5, True, None, "x", b"\x00\x01"]})
    assert isinstance(data, bytes) and len(data) > 8
    with pytest.raises(TypeError):
        litecore.encode_fleece({"a": object()})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_replicator_reports_connection_refused(phone: LiteDatabase) -> None:
    port = _closed_port()
    with phone.replicator(f"ws://127.0.0.1:{port}/nowhere", max_retries=0) as repl:
        repl.start()
        status = repl.wait("stopped", timeout=30)
        # LiteCore's status callback (a struct passed by value through ctypes) saw the end too.
        assert repl.status_history[-1].level == "stopped"
        assert repl.status_history[-1].error == status.error
    assert status.error, status
    refused = {
        (POSIX_DOMAIN, errno.ECONNREFUSED),
        (NETWORK_DOMAIN, NET_ERR_CONNECTION_REFUSED),
    }
    assert (status.error.domain, status.error.code) in refused, status


def test_invalid_url_is_refused_up_front(phone: LiteDatabase) -> None:
    with pytest.raises(LiteCoreError):
        phone.replicator("http://127.0.0.1:1/x")


async def test_replicator_reaches_websocket_handshake(phone: LiteDatabase) -> None:
    async with TracePeer() as peer:
        repl = phone.replicator(
            f"ws://127.0.0.1:{peer.port}/devicedb", username="alice", password="s3cret"
        )
        with repl:
            repl.start()
            await asyncio.wait_for(peer.connected.wait(), 30)
            status = await repl.wait_async("stopped", timeout=30)
    assert len(peer.requests) >= 1
    request = peer.requests[0]
    assert request.path == "/devicedb/_blipsync"
    offered = (request.header("Sec-WebSocket-Protocol") or "").split(",")
    assert SUBPROTOCOL in [p.strip() for p in offered]
    assert (request.header("User-Agent") or "").startswith("couchbase-lite-core/3.2")
    credentials = base64.b64encode(b"alice:s3cret").decode()
    assert request.header("Authorization") == f"Basic {credentials}"
    # The peer closed with 1008 without speaking BLIP: the run ends in error.
    assert status.error, status


async def test_replicator_reports_http_rejection(phone: LiteDatabase) -> None:
    async with TracePeer(reject_status=401) as peer:
        with phone.replicator(f"ws://127.0.0.1:{peer.port}/devicedb") as repl:
            repl.start()
            status = await repl.wait_async("stopped", timeout=30)
    assert (status.error.domain, status.error.code) == (WEBSOCKET_DOMAIN, 401), status
