"""Run an InterfaceWatcher and print every snapshot as a JSON line (used inside a namespace)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys

from fieldsync.agent.interfaces import InterfaceWatcher


async def main(target: str) -> None:
    watcher = InterfaceWatcher(target, debounce=0.1)
    await watcher.start()
    print(json.dumps({"event": "ready", "udev": watcher.udev_active}), flush=True)
    async for state in watcher:
        print(json.dumps({"event": "state", **dataclasses.asdict(state)}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
