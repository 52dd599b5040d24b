"""Benchmark: the BLIP engine alone (in memory) and BLIPSession over loopback websockets.

Writes messages/s and MB/s to a JSON file (default bench/results/blip.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from fieldsync.blip import BLIPProtocol, BLIPSession, IncomingRequest, RequestReceived


def _doc(i: int) -> bytes:
    return json.dumps({"_id": f"doc-{i:06}", "n": i, "filler": "x" * 950}).encode()


def core_small_messages(count: int, compressed: bool) -> float:
    """Request + reply round trips of 1 KB JSON through two engines; returns messages/s."""
    a, b = BLIPProtocol(), BLIPProtocol()
    start = time.perf_counter()
    for i in range(count):
        a.send_request({"Profile": "rev", "id": f"doc-{i}"}, _doc(i), compressed=compressed)
        for frame in a.frames_to_send():
            for event in b.receive_frame(frame):
                assert isinstance(event, RequestReceived)
                b.send_response(event.message.number, {}, b"", compressed=compressed)
        for frame in b.frames_to_send():
            a.receive_frame(frame)
    return count / (time.perf_counter() - start)


def core_large_message(size: int, compressed: bool) -> float:
    """One large message through two engines with ACK flow control; returns MB/s."""
    body = os.urandom(size // 2) + bytes(size - size // 2)
    a, b = BLIPProtocol(), BLIPProtocol()
    start = time.perf_counter()
    a.send_request({"Profile": "blob"}, body, compressed=compressed)
    received = []
    while a.has_pending_output:
        for frame in a.frames_to_send():
            received += b.receive_frame(frame)
        for frame in b.frames_to_send():
            a.receive_frame(frame)
    elapsed = time.perf_counter() - start
    assert received[0].message.read_body() == body  # spooled past the memory allowance
    return size / elapsed / 1e6


async def session_round_trips(count: int, concurrency: int) -> float:
    """Request/response round trips of 1 KB over loopback websockets; returns requests/s."""

    def echo(request: IncomingRequest) -> None:
        request.respond({}, b"{}")

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        session = BLIPSession(ws, name="server")
        session.register("rev", echo)
        await session.run()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
            client = BLIPSession(ws, name="client")
            reader = asyncio.create_task(client.run())
            semaphore = asyncio.Semaphore(concurrency)

            async def one(i: int) -> None:
                async with semaphore:
                    reply = await client.request("rev", {"id": str(i)}, _doc(i), compressed=True)
                    assert reply is not None and not reply.is_error

            start = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(count)))
            elapsed = time.perf_counter() - start
            await client.close()
            await reader
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--large-mb", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench/results/blip.json"))
    args = parser.parse_args()
    size = args.large_mb * 1_000_000
    results: dict[str, object] = {
        "messages": args.messages,
        "core_round_trips_per_second_raw": round(core_small_messages(args.messages, False)),
        "core_round_trips_per_second_compressed": round(core_small_messages(args.messages, True)),
        "large_message_mb": args.large_mb,
        "core_large_mb_per_second_raw": round(core_large_message(size, False), 1),
        "core_large_mb_per_second_compressed": round(core_large_message(size, True), 1),
        "session_round_trips_per_second": round(
            asyncio.run(session_round_trips(args.messages, 50))
        ),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
