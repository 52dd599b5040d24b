"""Drive a ServiceAdvertiser from JSON commands on stdin (used inside a namespace)."""

from __future__ import annotations

import asyncio
import json
import sys

from fieldsync.agent.advertiser import ServiceAdvertiser


async def main(service_type: str, instance: str, interface: str) -> None:
    advertiser = ServiceAdvertiser(
        service_type, instance, host_name="fs-test-device", interface=interface
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"event": "ready"}), flush=True)
    while line := await reader.readline():
        command = json.loads(line)
        name = command.pop("cmd")
        try:
            await getattr(advertiser, name)(**command)
        except Exception as exc:
            print(json.dumps({"event": "error", "cmd": name, "error": repr(exc)}), flush=True)
            continue
        print(
            json.dumps(
                {
                    "event": "done",
                    "cmd": name,
                    "name": advertiser.name,
                    "addresses": list(advertiser.addresses),
                }
            ),
            flush=True,
        )
        if name == "close":
            return


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
