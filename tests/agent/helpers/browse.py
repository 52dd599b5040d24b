"""Browse a DNS-SD service type with python-zeroconf; print what is seen as JSON lines."""

from __future__ import annotations

import asyncio
import json
import sys

from zeroconf import ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf


async def main(service_type: str, address: str) -> None:
    aiozc = AsyncZeroconf(interfaces=[address])
    loop = asyncio.get_running_loop()

    async def report(change: ServiceStateChange, name: str) -> None:
        event = {"event": change.name.lower(), "name": name}
        if change is not ServiceStateChange.Removed:
            info = AsyncServiceInfo(service_type, name)
            if await info.async_request(aiozc.zeroconf, 3000):
                event["addresses"] = sorted(info.parsed_addresses())
                event["port"] = info.port
                event["txt"] = {
                    k.decode(): (v.decode() if v is not None else None)
                    for k, v in info.properties.items()
                }
        print(json.dumps(event), flush=True)

    def on_change(zeroconf, service_type, name, state_change) -> None:  # noqa: ANN001
        loop.create_task(report(state_change, name))

    browser = AsyncServiceBrowser(aiozc.zeroconf, [service_type], handlers=[on_change])
    print(json.dumps({"event": "ready"}), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await browser.async_cancel()
        await aiozc.async_close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
