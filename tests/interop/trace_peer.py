"""A tracing WebSocket peer on loopback: records what a client sends during the upgrade.

It accepts the upgrade with subprotocol ``BLIP_3+CBMobile_3`` (when offered), records the request
line and headers, then records incoming frames until the client goes away or ``close()`` is called.
It speaks no BLIP: it only proves a client reached the WebSocket handshake and what it asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

SUBPROTOCOL = "BLIP_3+CBMobile_3"
#: How long the peer waits for the client's first frame before closing anyway (seconds).
FIRST_FRAME_TIMEOUT = 5.0


@dataclass
class TracedRequest:
    path: str
    headers: list[tuple[str, str]]
    frames: list[bytes] = field(default_factory=list)
    close_code: int | None = None

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class TracePeer:
    """``async with TracePeer() as peer: peer.port, peer.requests``."""

    def __init__(self, *, reject_status: int | None = None, hold_open: bool = False) -> None:
        self.requests: list[TracedRequest] = []
        self.reject_status = reject_status
        self.hold_open = hold_open
        self._server: Server | None = None
        self.connected = asyncio.Event()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.requests.append(TracedRequest(request.path, list(request.headers.raw_items())))
        if self.reject_status is not None:
            return connection.respond(self.reject_status, "rejected by trace peer\n")
        return None

    def _select_subprotocol(self, _connection: ServerConnection, offered: list[str]) -> str | None:
        return SUBPROTOCOL if SUBPROTOCOL in offered else None

    async def _handle(self, connection: ServerConnection) -> None:
        traced = self.requests[-1]
        self.connected.set()
        if not self.hold_open:
            # Close only once the client has sent its first frame: LiteCore 3.2.4 crashes
            # (null _responseTimer in WebSocketImpl::onConnect) when a close arrives while its
            # connect thread is still finishing the handshake.
            with contextlib.suppress(asyncio.TimeoutError, ConnectionClosed):
                first = await asyncio.wait_for(connection.recv(), FIRST_FRAME_TIMEOUT)
                traced.frames.append(first if isinstance(first, bytes) else first.encode())
            await connection.close(1008, "trace peer speaks no BLIP")
            traced.close_code = 1008
            return
        try:
            async for message in connection:
                traced.frames.append(message if isinstance(message, bytes) else message.encode())
        finally:
            traced.close_code = connection.close_code

    async def __aenter__(self) -> TracePeer:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            compression=None,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
