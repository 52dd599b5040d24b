"""Open a replication WebSocket to the listener and report how it ends (JSON lines)."""

from __future__ import annotations

import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


async def main(url: str) -> None:
    try:
        async with connect(url, subprotocols=["BLIP_3+CBMobile_3"], open_timeout=10) as ws:
            print(json.dumps({"event": "open", "subprotocol": ws.subprotocol}), flush=True)
            try:
                while True:
                    await ws.recv()
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
                print(json.dumps({"event": "closed", "code": code}), flush=True)
    except Exception as exc:
        print(json.dumps({"event": "error", "error": repr(exc)}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
