"""Large incoming messages go to spool files, not memory (issue 11, bounded memory per
connection): handlers still get them whole within a process-wide budget, large replies are
copied from their file, and a connection that ends mid-message leaves no spooled bytes behind."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from tests.blip.test_blip_limits import MiB, Peer, start
from tests.blip.test_blip_session import TIMEOUT, blip_pair
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from fieldsync.blip import BLIPConnectionClosed, BLIPError, BLIPSession, IncomingRequest
from fieldsync.blip.frame import MORE_COMING, MessageType
from fieldsync.blip.spool import READ_BACK_BUDGET, SPOOL_BUDGET


def large_echo(seen: list[int], active: list[int]) -> object:
    def setup(session: BLIPSession) -> None:
        async def rev(request: IncomingRequest) -> None:
            active.append(1)
            seen.append(len(active))
            await asyncio.sleep(0.05)  # overlap, if the gate let two in
            active.pop()
            request.respond({"size": str(len(request.body))}, request.body[:16])

        def small(request: IncomingRequest) -> None:
            seen.append(-1)
            request.respond()

        session.register("rev", rev, large_bodies=True)
        session.register("changes", small)

    return setup


async def test_large_body_arrives_whole_within_the_memory_allowance() -> None:
    seen: list[int] = []
    body = bytes(range(256)) * (6 * MiB // 256)
    async with blip_pair(large_echo(seen, [])) as pair:  # type: ignore[arg-type]
        reply = await asyncio.wait_for(pair.client.request("rev", {}, body), TIMEOUT)
        server = await pair.server_session()
        peak = server.protocol.peak_incoming_memory
        limit = server.protocol.limits.max_incoming_memory
    assert reply is not None and not reply.is_error
    assert reply.properties["size"] == str(len(body)) and reply.body == body[:16]
    assert peak <= limit < len(body)


async def test_large_body_for_an_ordinary_profile_gets_413_unread() -> None:
    seen: list[int] = []
    async with blip_pair(large_echo(seen, [])) as pair:  # type: ignore[arg-type]
        reply = await asyncio.wait_for(
            pair.client.request("changes", {}, b"[" * (2 * MiB)), TIMEOUT
        )
        ok = await asyncio.wait_for(pair.client.request("changes", {}, b"[]"), TIMEOUT)
    assert reply is not None and reply.error_code == 413 and reply.error_domain == "HTTP"
    assert ok is not None and not ok.is_error
    assert seen == [-1]  # the handler ran only for the small one


async def test_a_large_handler_can_wait_for_a_large_reply() -> None:
    """A handler holding a large request body asks its peer for a large reply (as the puller
    fetches a blob for a pushed document): the reply arrives in a spool file and is copied
    from there; nothing waits for the handler to finish first (no deadlock)."""
    blob = bytes(range(256)) * (5 * MiB // 256)

    def setup(session: BLIPSession) -> None:
        async def rev(request: IncomingRequest) -> None:
            reply = await session.request("getAttachment", {})
            assert reply is not None and reply.spooled is not None
            with pytest.raises(BLIPError):  # too large to read back as a plain body
                _ = reply.body
            copied = bytearray()
            await asyncio.to_thread(reply.spooled.copy_to, copied.extend)
            request.respond({"doc": str(len(request.body)), "blob": str(len(copied))})
            assert bytes(copied) == blob

        session.register("rev", rev, large_bodies=True)

    async with blip_pair(setup) as pair:
        pair.client.register("getAttachment", lambda r: r.respond({}, blob))
        reply = await asyncio.wait_for(pair.client.request("rev", {}, b"d" * (3 * MiB)), TIMEOUT)
    assert reply is not None and not reply.is_error, reply
    assert reply.properties == {"doc": str(3 * MiB), "blob": str(len(blob))}


async def test_read_back_past_the_process_budget_gets_503_at_once() -> None:
    seen: list[int] = []
    before = READ_BACK_BUDGET.used
    READ_BACK_BUDGET.used = READ_BACK_BUDGET.limit - 1 * MiB  # as if others held the rest
    try:
        async with blip_pair(large_echo(seen, [])) as pair:  # type: ignore[arg-type]
            big = await asyncio.wait_for(pair.client.request("rev", {}, b"z" * (3 * MiB)), TIMEOUT)
            small = await asyncio.wait_for(pair.client.request("rev", {}, b"z" * 1000), TIMEOUT)
        assert big is not None and big.error_code == 503
        assert small is not None and not small.is_error
        assert seen == [1]  # only the small one reached the handler
        assert READ_BACK_BUDGET.used == READ_BACK_BUDGET.limit - 1 * MiB
    finally:
        READ_BACK_BUDGET.used = before


async def test_connection_ending_mid_message_returns_its_spool() -> None:
    before = SPOOL_BUDGET.used
    done = asyncio.Event()
    during: list[int] = []

    async def handler(ws: ServerConnection) -> None:
        session = BLIPSession(ws, name="server")
        try:
            await session.run()
        finally:
            done.set()

    peer = Peer()
    chunk = b"j" * 16_000
    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
            acks = asyncio.create_task(_read_all(ws))  # the server's ACKs
            flags = int(MessageType.MSG) | MORE_COMING
            await ws.send(peer.plain(1, flags, start() + chunk))
            for _ in range(300):  # ~4.8 MB, never finished
                await ws.send(peer.plain(1, flags, chunk))
            await asyncio.sleep(0.2)
            during.append(SPOOL_BUDGET.used - before)
        await acks
        await asyncio.wait_for(done.wait(), TIMEOUT)
    assert during[0] > 2 * MiB  # it was spooled...
    assert SPOOL_BUDGET.used == before  # ...and given back when the connection ended


async def test_full_spool_disk_closes_1013_and_gives_back(small_disk: Path, caplog) -> None:
    """A spool directory on a full card: the connection closes with 1013 (try again later),
    one log line and no traceback, and no spooled bytes stay counted."""
    before = SPOOL_BUDGET.used
    sessions: list[BLIPSession] = []
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        session = BLIPSession(ws, name="server", spool_dir=str(small_disk))
        sessions.append(session)
        try:
            await session.run()
        finally:
            done.set()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
            client = BLIPSession(ws, name="client")
            reader = asyncio.create_task(client.run())
            with contextlib.suppress(BLIPConnectionClosed):
                await asyncio.wait_for(client.request("rev", {}, b"q" * (6 * MiB)), TIMEOUT)
            await asyncio.wait_for(done.wait(), TIMEOUT)
            reader.cancel()
    assert sessions[0].close_code == 1013
    assert "temporary file" in sessions[0].close_reason
    assert not [r for r in caplog.records if r.exc_info]
    assert SPOOL_BUDGET.used == before


async def _read_all(ws: object) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for _ in ws:  # type: ignore[attr-defined]
            pass
