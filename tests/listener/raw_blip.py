"""A bare BLIP client over a real WebSocket, for tests that script a peer message by message.

``RawClient(listener, protocols, database)`` connects to ``/<database>/_blipsync`` offering
``protocols`` and yields a ``BLIPSession``: send any request, register handlers for the
listener's requests. Used by tests/listener (malformed input, modes) and tests/replication
(CBMobile_4 phones): ``from tests.listener.raw_blip import RawClient``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from fieldsync.blip import BLIPSession

CBMOBILE_3 = ("BLIP_3+CBMobile_3",)
CBMOBILE_4 = ("BLIP_3+CBMobile_4",)


class RawClient:
    """``async with RawClient(listener) as session: ...``"""

    def __init__(
        self,
        listener: Any,
        protocols: Sequence[str] = CBMOBILE_3,
        database: str = "db",
        *,
        name: str = "raw",
    ) -> None:
        self.url = f"ws://127.0.0.1:{listener.port}/{database}/_blipsync"
        self.protocols = list(protocols)
        self.name = name
        self.ws: ClientConnection | None = None

    async def __aenter__(self) -> BLIPSession:
        self.ws = await connect(self.url, subprotocols=self.protocols, compression=None)
        self.session = BLIPSession(self.ws, name=self.name)
        self.reader = asyncio.create_task(self.session.run())
        return self.session

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()
        self.reader.cancel()
