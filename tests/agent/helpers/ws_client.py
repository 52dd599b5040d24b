"""Open a replication WebSocket to the listener and report how it ends (JSON lines)."""

from __future__ import annotations

import asyncio
import json
import ssl
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


def client_ssl(options: list[str]) -> ssl.SSLContext | None:
    """``--insecure``: accept any server certificate (the server's own checks still apply)."""
    if "--insecure" not in options:
        return None
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def main(url: str, *options: str) -> None:
    extra = {"ssl": client_ssl(list(options))} if url.startswith("wss:") else {}
    try:
        async with connect(url, subprotocols=["BLIP_3+CBMobile_3"], open_timeout=10, **extra) as ws:
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
    asyncio.run(main(*sys.argv[1:]))
