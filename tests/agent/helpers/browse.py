"""Browse a DNS-SD service type with python-zeroconf; print what is seen as JSON lines.

stdin commands (JSON lines): {"cmd": "resolve", "name": "<full service name>"} prints the
service's current records as {"event": "resolved", ...} (or "unresolved"); "fresh_resolve" does
the same with a new, empty cache, so only a live answer from the network counts.
"""

from __future__ import annotations

import asyncio
import json
import sys

from zeroconf import ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf


async def describe(aiozc: AsyncZeroconf, service_type: str, name: str) -> dict | None:
    info = AsyncServiceInfo(service_type, name)
    if not await info.async_request(aiozc.zeroconf, 3000):
        return None
    return {
        "addresses": sorted(info.parsed_addresses()),
        "port": info.port,
        "server": info.server,
        "txt": {
            k.decode(): (v.decode() if v is not None else None) for k, v in info.properties.items()
        },
    }


async def main(service_type: str, address: str) -> None:
    aiozc = AsyncZeroconf(interfaces=[address])
    loop = asyncio.get_running_loop()

    async def report(change: ServiceStateChange, name: str) -> None:
        event = {"event": change.name.lower(), "name": name}
        if change is not ServiceStateChange.Removed:
            event.update(await describe(aiozc, service_type, name) or {})
        print(json.dumps(event), flush=True)

    tasks: set[asyncio.Task[None]] = set()

    def on_change(zeroconf, service_type, name, state_change) -> None:
        task = loop.create_task(report(state_change, name))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    browser = AsyncServiceBrowser(aiozc.zeroconf, [service_type], handlers=[on_change])
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"event": "ready"}), flush=True)
    try:
        while line := await reader.readline():
            command = json.loads(line)
            if command["cmd"] in ("resolve", "fresh_resolve"):
                if command["cmd"] == "resolve":
                    found = await describe(aiozc, service_type, command["name"])
                else:
                    fresh = AsyncZeroconf(interfaces=[address])
                    try:
                        found = await describe(fresh, service_type, command["name"])
                    finally:
                        await fresh.async_close()
                event = {"event": "resolved" if found else "unresolved", "name": command["name"]}
                print(json.dumps({**event, **(found or {})}), flush=True)
    finally:
        await browser.async_cancel()
        await aiozc.async_close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
