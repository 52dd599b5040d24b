"""BLIPSession over a real websockets connection on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
from collections.abc import AsyncIterator, Callable

import pytest
from tests.blip.blip_reference import (
    CLIENT_ID,
    RefReceiver,
    RefSender,
    golden_frame1,
    props_block,
    split_message,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from fieldsync.blip import (
    BLIPConnectionClosed,
    BLIPError,
    BLIPSession,
    IncomingRequest,
    IncomingResponse,
)

TIMEOUT = 20  # safety net against hangs only


class Pair:
    def __init__(self) -> None:
        self.client: BLIPSession
        self.client_task: asyncio.Task[None]
        self.server: BLIPSession | None = None
        self.server_ready = asyncio.Event()
        self.server_done = asyncio.Event()

    async def server_session(self) -> BLIPSession:
        await asyncio.wait_for(self.server_ready.wait(), TIMEOUT)
        assert self.server is not None
        return self.server


@contextlib.asynccontextmanager
async def blip_pair(setup: Callable[[BLIPSession], None] = lambda s: None) -> AsyncIterator[Pair]:
    pair = Pair()

    async def handler(ws: ServerConnection) -> None:
        session = BLIPSession(ws, name="server")
        setup(session)
        pair.server = session
        pair.server_ready.set()
        try:
            await session.run()
        finally:
            pair.server_done.set()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
            pair.client = BLIPSession(ws, name="client")
            pair.client_task = asyncio.create_task(pair.client.run())
            try:
                yield pair
            finally:
                if not pair.client.closed:
                    await asyncio.wait_for(pair.client.close(), TIMEOUT)
                await asyncio.wait_for(pair.client_task, TIMEOUT)


@contextlib.asynccontextmanager
async def raw_server(
    on_connect: Callable[[ServerConnection], object],
) -> AsyncIterator[int]:
    """A websocket server whose handler talks raw frames (no BLIPSession)."""

    async def handler(ws: ServerConnection) -> None:
        await on_connect(ws)  # type: ignore[misc]

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        yield server.sockets[0].getsockname()[1]


def setup_handlers(session: BLIPSession) -> None:
    async def echo(request: IncomingRequest) -> None:
        await asyncio.sleep(0)
        props = {k: v for k, v in request.properties.items() if k != "Profile"}
        props["urgent"] = str(request.urgent)
        request.respond(props, request.body, compressed=request.compressed)

    def sum_json(request: IncomingRequest) -> None:  # a sync handler
        request.respond({}, json.dumps({"sum": sum(request.json())}).encode())

    def missing(request: IncomingRequest) -> None:
        request.respond_error("HTTP", 404, "no such checkpoint")

    async def broken(request: IncomingRequest) -> None:
        raise RuntimeError("boom")

    def twice(request: IncomingRequest) -> None:
        request.respond()
        with pytest.raises(RuntimeError, match="already answered"):
            request.respond()
        with pytest.raises(RuntimeError, match="already answered"):
            request.respond_error("X", 1)

    def silent(request: IncomingRequest) -> None:
        session.silent_requests.append(request)  # type: ignore[attr-defined]

    def note(request: IncomingRequest) -> None:
        session.notes.append(request)  # type: ignore[attr-defined]
        request.respond({"ignored": "yes"})  # a no-op: NoReply
        request.respond_error("BLIP", 500, "also ignored")

    session.silent_requests = []  # type: ignore[attr-defined]
    session.notes = []  # type: ignore[attr-defined]
    for name, fn in [
        ("echo", echo),
        ("sum", sum_json),
        ("missing", missing),
        ("broken", broken),
        ("twice", twice),
        ("silent", silent),
        ("note", note),
    ]:
        session.register(name, fn, large_bodies=name == "echo")


async def test_request_response() -> None:
    async with blip_pair(setup_handlers) as pair:
        client = pair.client
        reply = await asyncio.wait_for(client.request("echo", {"a": "1"}, b"hello"), TIMEOUT)
        assert isinstance(reply, IncomingResponse)
        assert not reply.is_error and reply.error_code is None and reply.error_domain is None
        assert reply.properties == {"a": "1", "urgent": "False"}
        assert reply.body == b"hello"
        reply.raise_for_error()  # no-op

        reply = await client.request("sum", None, b"[1, 2, 3]", urgent=True)
        assert reply is not None and reply.json() == {"sum": 6}

        reply = await client.request("twice")
        assert reply is not None and not reply.is_error

        # Many concurrent requests, some large and compressed (real ACK flow control).
        bodies = [os.urandom(random.randrange(0, 400_000)) for _ in range(12)]
        futures = [
            client.send_nowait("echo", {"i": str(i)}, b, compressed=i % 2 == 0, urgent=i % 3 == 0)
            for i, b in enumerate(bodies)
        ]
        replies = await asyncio.wait_for(asyncio.gather(*futures), TIMEOUT)  # type: ignore[arg-type]
        for i, (b, r) in enumerate(zip(bodies, replies, strict=True)):
            assert r.properties["i"] == str(i) and r.body == b
            assert r.properties["urgent"] == str(i % 3 == 0)
        big = await client.request("echo", {}, bytes(3_000_000), compressed=True)
        assert big is not None and await big.read_body() == bytes(3_000_000)


async def test_error_replies() -> None:
    async with blip_pair(setup_handlers) as pair:
        client = pair.client
        reply = await asyncio.wait_for(client.request("missing"), TIMEOUT)
        assert reply is not None and reply.is_error
        assert (reply.error_domain, reply.error_code) == ("HTTP", 404)
        assert reply.error_message == "no such checkpoint"
        with pytest.raises(BLIPError) as info:
            reply.raise_for_error()
        assert (info.value.domain, info.value.code, info.value.message) == (
            "HTTP",
            404,
            "no such checkpoint",
        )

        reply = await client.request("no-such-profile", {"x": "y"})
        assert reply is not None
        assert (reply.error_domain, reply.error_code, reply.error_message) == (
            "BLIP",
            404,
            "no handler for profile",
        )

        reply = await client.request("broken")
        assert reply is not None and (reply.error_domain, reply.error_code) == ("BLIP", 500)

        with pytest.raises(ValueError, match="not valid JSON"):
            (await client.request("echo", {}, b"{bad")).json()  # type: ignore[union-attr]
        with pytest.raises(ValueError, match="empty"):
            (await client.request("echo")).json()  # type: ignore[union-attr]


async def test_fallback_handler() -> None:
    def setup(session: BLIPSession) -> None:
        session.set_fallback_handler(lambda r: r.respond({"profile": r.profile}))

    async with blip_pair(setup) as pair:
        reply = await asyncio.wait_for(pair.client.request("whatever"), TIMEOUT)
        assert reply is not None and reply.properties == {"profile": "whatever"}


async def test_no_reply_requests() -> None:
    async with blip_pair(setup_handlers) as pair:
        client = pair.client
        assert await client.request("note", {"k": "v"}, b"[]", urgent=True, no_reply=True) is None
        assert client.send_nowait("note", {}, b"x", no_reply=True) is None
        # An unknown profile and a failing handler must not be answered either.
        assert await client.request("no-such", no_reply=True) is None
        assert await client.request("broken", no_reply=True) is None
        # The client would fail with a protocol error on any reply to those: it still works.
        reply = await asyncio.wait_for(client.request("echo", {}, b"after"), TIMEOUT)
        assert reply is not None and reply.body == b"after"
        server = await pair.server_session()
        notes = server.notes  # type: ignore[attr-defined]
        assert [(r.properties.get("k"), r.body, r.no_reply) for r in notes] == [
            ("v", b"[]", True),
            (None, b"x", True),
        ]
        assert notes[0].urgent
        assert not client.closed and not server.closed


async def test_golden_frame_on_the_wire() -> None:
    """The session's first frame is byte-identical to LiteCore's getCheckpoint frame; a reply
    built by the reference encoder is understood."""
    expected, _ = golden_frame1()
    got: list[bytes] = []

    async def on_connect(ws: ServerConnection) -> None:
        got.append(await ws.recv())  # type: ignore[arg-type]
        got.append(await ws.recv())  # type: ignore[arg-type]
        ref = RefSender()
        error = props_block([("Error-Domain", "HTTP"), ("Error-Code", "404")])
        await ws.send(ref.frame(1, 0x02, error))
        await ws.send(ref.frame(2, 0x01 | 0x08, props_block([("rev", "1-cc")]) + b'{"x":1}'))
        await ws.wait_closed()

    async with (
        raw_server(on_connect) as port,
        connect(f"ws://127.0.0.1:{port}", compression=None) as ws,
    ):
        client = BLIPSession(ws, name="client")
        task = asyncio.create_task(client.run())
        first = client.send_nowait("getCheckpoint", {"client": CLIENT_ID})
        second = client.send_nowait(
            "proposeChanges", {"conflictIncludesRev": "true"}, b"[]", urgent=True, compressed=True
        )
        assert first is not None and second is not None
        r1, r2 = await asyncio.wait_for(asyncio.gather(first, second), TIMEOUT)
        assert (r1.error_domain, r1.error_code) == ("HTTP", 404)
        assert r2.properties == {"rev": "1-cc"} and r2.json() == {"x": 1}
        await client.close()
        await task
    assert got[0] == expected
    assert got[1][:2] == b"\x02\x18"
    ref = RefReceiver()
    ref.frame(got[0])
    _, _, data = ref.frame(got[1])  # checks the running CRC
    assert split_message(data) == (
        {"Profile": "proposeChanges", "conflictIncludesRev": "true"},
        b"[]",
    )


async def test_clean_close_fails_pending_requests() -> None:
    async with blip_pair(setup_handlers) as pair:
        client = pair.client
        closed_calls: list[BLIPSession] = []
        client.on_close.append(closed_calls.append)
        pending = client.send_nowait("silent")  # the server never answers this one
        server = await pair.server_session()
        await asyncio.wait_for(client.request("echo"), TIMEOUT)
        await asyncio.wait_for(client.close(1000, "done"), TIMEOUT)
        assert client.closed and client.close_code == 1000 and client.close_reason == "done"
        with pytest.raises(BLIPConnectionClosed) as info:
            await asyncio.wait_for(pending, TIMEOUT)  # type: ignore[arg-type]
        assert info.value.code == 1000
        assert isinstance(info.value, BLIPError)
        await asyncio.wait_for(client.wait_closed(), TIMEOUT)
        await asyncio.wait_for(pair.server_done.wait(), TIMEOUT)
        assert server.closed and server.close_code == 1000 and server.close_reason == "done"
        assert closed_calls == [client]
        with pytest.raises(BLIPConnectionClosed):
            await client.request("echo")
        # A late answer from a handler after close is dropped quietly.
        server.silent_requests[0].respond()  # type: ignore[attr-defined]


async def test_close_flushes_queued_frames() -> None:
    async with blip_pair(setup_handlers) as pair:
        server = await _connected_server(pair)
        body = os.urandom(600_000)  # needs ACKs from the server while flushing
        assert pair.client.send_nowait("note", {}, body, no_reply=True) is None
        await asyncio.wait_for(pair.client.close(), TIMEOUT)
        await asyncio.wait_for(pair.server_done.wait(), TIMEOUT)
        assert [r.body for r in server.notes] == [body]  # type: ignore[attr-defined]


async def _connected_server(pair: Pair) -> BLIPSession:
    await asyncio.wait_for(pair.client.request("echo"), TIMEOUT)
    return await pair.server_session()


async def test_peer_close_fails_pending_requests() -> None:
    async with blip_pair(setup_handlers) as pair:
        server = await _connected_server(pair)
        pending = pair.client.send_nowait("silent")
        while not server.silent_requests:  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)
        await server.close(4002, "read-only")
        with pytest.raises(BLIPConnectionClosed) as info:
            await asyncio.wait_for(pending, TIMEOUT)  # type: ignore[arg-type]
        assert (info.value.code, info.value.message) == (4002, "read-only")
        await asyncio.wait_for(pair.client_task, TIMEOUT)
        assert pair.client.close_code == 4002 and pair.client.close_reason == "read-only"


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (b"\x01\x03\x00\x00\x00\x00\x00", "unknown BLIP message type"),
        (b"\x02\x00\x00\x00\x00\x00\x00", "checksum"),
        ("text", "text WebSocket message"),
    ],
)
async def test_protocol_error_closes_with_1002(garbage: bytes | str, reason: str) -> None:
    async with blip_pair(setup_handlers) as pair:
        server = await _connected_server(pair)
        # Bypass the client's engine and write garbage on its socket.
        ws: ClientConnection = pair.client._ws  # type: ignore[assignment]
        await ws.send(garbage)
        await asyncio.wait_for(pair.server_done.wait(), TIMEOUT)
        assert server.closed and server.close_code == 1002 and reason in server.close_reason
        await asyncio.wait_for(pair.client_task, TIMEOUT)
        assert pair.client.close_code == 1002 and reason in pair.client.close_reason


async def test_send_after_close_raises() -> None:
    async def on_connect(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            await ws.recv()

    async with (
        raw_server(on_connect) as port,
        connect(f"ws://127.0.0.1:{port}", compression=None) as ws,
    ):
        client = BLIPSession(ws, name="c")
        await client.close()
        assert client.closed
        with pytest.raises(BLIPConnectionClosed):
            client.send_nowait("x")
        await asyncio.wait_for(client.run(), TIMEOUT)  # returns at once


async def test_a_closing_session_gives_the_freed_heap_back(monkeypatch) -> None:
    """An ordinary push leaves ~1 MB of fragmented heap that the next connection does not
    reuse: every session that closes asks glibc to return its free pages (issue 13)."""
    from fieldsync.blip import session as session_module

    trims: list[int] = []
    monkeypatch.setattr(session_module, "_malloc_trim", lambda pad: trims.append(pad) or 1)
    monkeypatch.setattr(session_module, "_last_trim", 0.0)
    monkeypatch.setattr(session_module, "_trim_scheduled", False)
    async with blip_pair(setup_handlers) as pair:
        await pair.client.request("echo", {}, b"x")
        await pair.server_session()
    await asyncio.wait_for(pair.server_done.wait(), TIMEOUT)
    assert trims == [0]  # both ends closed within a second: one trim now, one scheduled
