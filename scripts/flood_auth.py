#!/usr/bin/env python3
"""Flood a live listener with wrong passwords while a phone keeps logging in.

Starts a listener (ws://, HTTP Basic with a real scrypt hash) in a child process, then for
SECONDS sends wrong passwords from 127.0.0.1 as fast as CONCURRENCY connections allow, while a
"phone" at 127.0.0.2 opens a replication connection with the right password every 0.25 s.
Reports the phone's connect times (worst must stay under 1 s), the flood's answers (401 /
429 / 503), and the listener's CPU seconds and RSS (from /proc).

    .venv/bin/python scripts/flood_auth.py --seconds 20 --out bench/results/auth-flood.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fuzz_listener import (  # scripts/ is on sys.path
    free_port,
    read_cpu_seconds,
    read_rss_kb,
    wait_for_listener,
)
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

SUBPROTOCOL = "BLIP_3+CBMobile_3"

_LISTENER = """
import asyncio, logging, os, sys
from fieldsync.listener import URLEndpointListener, URLEndpointListenerConfiguration
from fieldsync.listener.auth import ListenerPasswordAuthenticator, hash_password
from fieldsync.store import Database

logging.basicConfig(level=logging.ERROR)

async def orphan_watch():
    while os.getppid() != 1:
        await asyncio.sleep(1)
    os._exit(0)

async def main():
    asyncio.get_running_loop().create_task(orphan_watch())
    db = Database.open(sys.argv[1])
    auth = ListenerPasswordAuthenticator.from_users({"ranger": hash_password("right")})
    config = URLEndpointListenerConfiguration(
        database=db, port=int(sys.argv[2]), disable_tls=True, network_interface="127.0.0.1",
        authenticator=auth,
    )
    async with URLEndpointListener(config):
        await asyncio.Event().wait()

asyncio.run(main())
"""


def basic(password: str) -> dict[str, str]:
    token = base64.b64encode(f"ranger:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def attempt(port: int, password: str, source: str) -> int:
    try:
        ws = await connect(
            f"ws://127.0.0.1:{port}/db/_blipsync",
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            additional_headers=basic(password),
            local_addr=(source, 0),
            open_timeout=30,
        )
    except InvalidStatus as refused:
        return refused.response.status_code
    except Exception:
        return 0
    await ws.close()
    return 101


async def flood(port: int, pid: int, seconds: float, concurrency: int) -> dict[str, Any]:
    answers: collections.Counter[int] = collections.Counter()
    phone_ms: list[float] = []
    phone_status: collections.Counter[int] = collections.Counter()
    stop = time.monotonic() + seconds
    rss0, cpu0 = read_rss_kb(pid), read_cpu_seconds(pid)
    peak = rss0

    async def attacker(n: int) -> None:
        i = 0
        while time.monotonic() < stop:
            i += 1
            answers[await attempt(port, f"wrong-{n}-{i}", "127.0.0.1")] += 1

    async def phone() -> None:
        while time.monotonic() < stop:
            start = time.perf_counter()
            status = await attempt(port, "right", "127.0.0.2")
            phone_ms.append((time.perf_counter() - start) * 1000)
            phone_status[status] += 1
            await asyncio.sleep(0.25)

    async def sample() -> None:
        nonlocal peak
        while time.monotonic() < stop:
            peak = max(peak, read_rss_kb(pid))
            await asyncio.sleep(0.2)

    await asyncio.gather(*(attacker(n) for n in range(concurrency)), phone(), sample())
    return {
        "seconds": seconds,
        "concurrency": concurrency,
        "flood_answers": {str(k): v for k, v in sorted(answers.items())},
        "flood_attempts": sum(answers.values()),
        "phone_attempts": len(phone_ms),
        "phone_statuses": {str(k): v for k, v in phone_status.items()},
        "phone_connect_ms_median": round(statistics.median(phone_ms), 1) if phone_ms else None,
        "phone_connect_ms_max": round(max(phone_ms), 1) if phone_ms else None,
        "listener_cpu_seconds": round(read_cpu_seconds(pid) - cpu0, 2),
        "listener_cpu_share": round((read_cpu_seconds(pid) - cpu0) / seconds, 2),
        "listener_rss_kb_start": rss0,
        "listener_rss_kb_peak": peak,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        child = subprocess.Popen([sys.executable, "-c", _LISTENER, f"{tmp}/db", str(port)])
        try:
            if not wait_for_listener(port, child):
                print("listener did not start", file=sys.stderr)
                return 1
            report = asyncio.run(flood(port, child.pid, args.seconds, args.concurrency))
        finally:
            child.kill()
            child.wait()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    ok = (
        report["phone_statuses"] == {"101": report["phone_attempts"]}
        and (report["phone_connect_ms_max"] or 0) < 1000
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
