"""Issue 11, rows 1, 2 and 7: one hostile or stuck peer against a live listener on loopback.

Every assertion is structural (connection closed and with which code, bytes held, who else is
still served); the few waits have generous bounds that only a hang would reach.
"""

from __future__ import annotations

import asyncio
import gc
import random
import weakref
import zlib
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from fieldsync.blip import BLIPSession
from fieldsync.blip.frame import MORE_COMING, MessageType, decode_header, encode_header
from fieldsync.blip.varint import encode_uvarint
from fieldsync.listener import URLEndpointListener
from fieldsync.store import Database

MiB = 1024 * 1024
SUBPROTOCOL = "BLIP_3+CBMobile_3"


def url(listener: URLEndpointListener) -> str:
    return f"ws://127.0.0.1:{listener.port}/db/_blipsync"


async def raw_connect(listener: URLEndpointListener) -> ClientConnection:
    return await connect(url(listener), subprotocols=[SUBPROTOCOL], compression=None, max_size=None)


class FrameWriter:
    """Crafts a client's frames by hand (header, data, running CRC32 of uncompressed data)."""

    def __init__(self) -> None:
        self.crc = 0
        self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15, 9)

    def plain(self, number: int, flags: int, data: bytes) -> bytes:
        self.crc = zlib.crc32(data, self.crc)
        return encode_header(number, flags) + data + self.crc.to_bytes(4, "big")

    def compressed(self, number: int, flags: int, data: bytes, *, bad_crc: bool = False) -> bytes:
        self.crc = zlib.crc32(data, self.crc)
        packed = self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        crc = self.crc ^ 1 if bad_crc else self.crc
        return encode_header(number, flags | 0x08) + packed[:-4] + crc.to_bytes(4, "big")


def request_start(profile: str) -> bytes:
    props = f"Profile\0{profile}\0".encode()
    return encode_uvarint(len(props)) + props


def server_sessions() -> list[BLIPSession]:
    """The listener's sessions (named after their peer's address) that are still open."""
    return [
        o
        for o in gc.get_objects()
        if type(o) is BLIPSession and o.name.startswith("127.") and not o.closed
    ]


async def server_side(ws: ClientConnection) -> BLIPSession:
    """The listener's session for this client connection."""
    port = ws.local_address[1]
    async with asyncio.timeout(10):
        while True:
            for session in server_sessions():
                if session.name.endswith(f":{port}"):
                    return session
            await asyncio.sleep(0.01)


async def closed_by_server(session: BLIPSession, bound: float = 20) -> int | None:
    """Wait until the server closes its side; return the close code it used."""
    async with asyncio.timeout(bound):
        await session.wait_closed()
    return session.close_code


async def discard_incoming(ws: ClientConnection) -> None:
    try:
        while True:
            await ws.recv()
    except Exception:
        return


async def still_served(listener: URLEndpointListener) -> None:
    ws = await raw_connect(listener)
    session = BLIPSession(ws, name="witness")
    reader = asyncio.create_task(session.run())
    reply = await asyncio.wait_for(session.request("getCheckpoint", {"client": "w"}), 10)
    assert reply is not None and reply.error_code == 404
    await session.close()
    reader.cancel()


# -- row 1: one huge WebSocket message, one huge streamed BLIP request --------------------------


async def test_oversized_websocket_message_is_refused_1009(served) -> None:
    listener, _ = served
    ws = await raw_connect(listener)
    server = await server_side(ws)
    writer = FrameWriter()
    body = request_start("rev") + random.Random(1).randbytes(1 * MiB)
    await ws.send(writer.plain(1, int(MessageType.MSG) | MORE_COMING, body))
    assert await closed_by_server(server) == 1009
    await still_served(listener)


@pytest.mark.slow
async def test_request_streamed_past_the_message_cap_is_refused_1009(served) -> None:
    """MoreComing frames of one request, 16 KiB each, past the 64 MiB message cap."""
    listener, _ = served
    ws = await raw_connect(listener)
    server = await server_side(ws)
    writer = FrameWriter()
    chunk = random.Random(2).randbytes(16_000)
    await ws.send(writer.plain(1, int(MessageType.MSG) | MORE_COMING, request_start("rev")))
    sent = 0
    code = None
    try:
        while sent < 80 * MiB:
            await ws.send(writer.plain(1, int(MessageType.MSG) | MORE_COMING, chunk))
            sent += len(chunk)
    except Exception:
        pass
    code = await closed_by_server(server)
    assert code == 1009
    # refused at the cap, not after everything was buffered:
    assert server.protocol.bytes_received <= 65 * MiB < sent
    # and what it did receive waited on disk, not in memory:
    assert server.protocol.peak_incoming_memory <= server.protocol.limits.max_incoming_memory
    await still_served(listener)


async def test_closed_connection_is_freed_without_the_cyclic_gc(served) -> None:
    """A connection that buffered a partial 8 MB request and ran handlers: once it closes,
    its session (and the bytes it held) go at once, with the cyclic collector off."""
    listener, db = served
    db.default_collection.save_document("d", {"x": 1})
    gc.collect()
    gc.disable()
    try:
        ws = await raw_connect(listener)
        drain = asyncio.create_task(discard_incoming(ws))
        writer = FrameWriter()
        msg = int(MessageType.MSG)
        await ws.send(writer.plain(1, msg, request_start("getCheckpoint") + b""))
        await ws.send(writer.plain(2, msg, request_start("subChanges") + b""))
        # Part of a big request, held by the server until the connection goes:
        await ws.send(writer.plain(3, msg | MORE_COMING, request_start("rev")))
        chunk = random.Random(3).randbytes(16_000)
        for _ in range(100):
            await ws.send(writer.plain(3, msg | MORE_COMING, chunk))
        await asyncio.sleep(0.2)
        ref = weakref.ref(await server_side(ws))
        await ws.close()
        async with asyncio.timeout(10):
            while listener.status.connection_count:
                await asyncio.sleep(0.02)
        drain.cancel()
        for _ in range(10):
            await asyncio.sleep(0.02)
            if ref() is None:
                break
        assert ref() is None, [type(r) for r in gc.get_referrers(ref())]
    finally:
        gc.enable()


# -- row 2: deflate bombs ---------------------------------------------------------------------


@pytest.mark.parametrize("bad_crc", [False, True])
async def test_deflate_bomb_stops_at_the_cap(served, bad_crc: bool) -> None:
    """Frames of ~16 KB that inflate to 15 MB each: refused once the message passes the cap,
    the others still served (a wrong CRC is refused at its frame, as before; the bound on
    what is inflated first is tested without sockets in tests/blip/test_blip_limits.py)."""
    listener, _ = served
    ws = await raw_connect(listener)
    server = await server_side(ws)
    writer = FrameWriter()
    bomb = b"\0" * (15 * MiB)
    await ws.send(writer.plain(1, int(MessageType.MSG) | MORE_COMING, request_start("rev")))
    frames = 0
    try:
        for _ in range(8):  # 120 MB once inflated
            await ws.send(
                writer.compressed(1, int(MessageType.MSG) | MORE_COMING, bomb, bad_crc=bad_crc)
            )
            frames += 1
    except Exception:
        pass
    code = await closed_by_server(server)
    assert code == (1002 if bad_crc else 1009)
    assert server.protocol.peak_incoming_memory <= server.protocol.limits.max_incoming_memory
    await still_served(listener)


# -- row 7: a peer that never ACKs, a peer that stops reading -----------------------------------


class DropAcks:
    """A client WebSocket that never sends BLIP ACK frames (flow control stalls the server)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def recv(self) -> bytes | str:
        return await self.ws.recv()

    async def send(self, message: bytes) -> None:
        if decode_header(message).type.is_ack:
            return
        await self.ws.send(message)

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code, reason)


async def pull_blob_doc(session: BLIPSession) -> None:
    """Pull the device's documents so their blobs may be fetched on this connection."""
    revs = asyncio.Event()

    def on_changes(request: Any) -> None:
        entries = request.json()
        request.respond({}, b"[" + b",".join(b"[]" for _ in entries) + b"]")

    def on_rev(request: Any) -> None:
        request.respond({}, b"")
        revs.set()

    session.register("changes", on_changes)
    session.register("rev", on_rev)
    await session.request("subChanges", {})
    await asyncio.wait_for(revs.wait(), 10)


@pytest.fixture
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Second-scale send/ACK timeouts for the listener's sessions (a no-op on old code)."""
    import fieldsync.blip.protocol as protocol

    limits = getattr(protocol, "DEFAULT_LIMITS", None)
    if limits is not None:
        from dataclasses import replace

        monkeypatch.setattr(
            protocol, "DEFAULT_LIMITS", replace(limits, send_timeout=1.0, ack_timeout=1.5)
        )


def reply_bytes_held(session: BLIPSession) -> int:
    """Unsent bytes of the replies a session holds (read from the engine's queues directly)."""
    protocol: Any = session.protocol
    queued = [*protocol._outbox, *protocol._icebox.values()]
    return sum(
        sum(len(seg) for seg in msg._segments)
        for msg in queued
        if msg.type in (MessageType.RPY, MessageType.ERR)
    )


async def blob_doc(db: Database, size: int) -> str:
    digest = db.blobs.put(random.Random(size).randbytes(size))
    db.default_collection.save_document(
        "with-blob", {"b": {"@type": "blob", "digest": digest, "length": size}}
    )
    return digest


async def test_peer_that_never_acks_is_bounded_then_closed(served, short_timeouts) -> None:
    """60 getAttachment requests (~4 KB) for a 1 MB blob, never ACKed: replies are built only
    while the reply budget has room (not 60 MB held), and the connection is closed."""
    listener, db = served
    digest = await blob_doc(db, 1 * MiB)
    ws = await raw_connect(listener)
    client = BLIPSession(DropAcks(ws), name="no-acks")  # type: ignore[arg-type]
    reader = asyncio.create_task(client.run())
    await pull_blob_doc(client)
    for _ in range(60):
        client.send_nowait("getAttachment", {"digest": digest})
    await asyncio.sleep(0.3)
    server = await server_side(ws)
    held = reply_bytes_held(server)
    assert held <= 4 * MiB + 1 * MiB + 64 * 1024, held
    async with asyncio.timeout(20):
        while listener.status.connection_count:
            await asyncio.sleep(0.05)
    reader.cancel()
    await still_served(listener)


async def test_peer_that_stops_reading_is_closed(served, short_timeouts) -> None:
    """Replies of 100 KB (under the ACK window) fill the socket of a peer that stopped
    reading: the send timeout closes it even though websockets' keepalive ping is stuck."""
    listener, db = served
    digest = await blob_doc(db, 100_000)
    ws = await raw_connect(listener)
    client = BLIPSession(ws, name="no-reading")
    reader = asyncio.create_task(client.run())
    await pull_blob_doc(client)
    ws.transport.pause_reading()
    for _ in range(400):
        client.send_nowait("getAttachment", {"digest": digest})
    async with asyncio.timeout(30):
        while listener.status.connection_count:
            await asyncio.sleep(0.05)
    reader.cancel()
    ws.transport.abort()
    await still_served(listener)
