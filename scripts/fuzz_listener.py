#!/usr/bin/env python3
"""Fuzz a live fieldsync listener over loopback: generated BLIP frame sequences and HTTP upgrades.

It starts a listener (ws://, no TLS, no auth) in a child process on a fresh database, so its
RSS and CPU can be read from /proc, then runs CASES generated cases (seeded, reproducible)
with CONCURRENCY connections at a time while a witness connection, in a process of its own,
keeps syncing (a proposeChanges/rev/getCheckpoint round every 20 ms), and reports:

* the listener's RSS before, peak and after, the peak growth per hostile connection, and
  CPU seconds used;
* the witness's stalls (how long its getCheckpoint, which touches no disk, waited for an
  answer) and its whole rounds (which include a durable commit of its rev);
* case outcomes (closed by the server with which code, refused at HTTP, ...).

It fails (exit 1) if the listener dies, a case hangs past its deadline, the witness fails a
round, the RSS after the run exceeds the start by more than 32 MB, or the peak grew by more
than 32 MB per hostile connection.

    .venv/bin/python scripts/fuzz_listener.py --cases 100000 --out bench/results/fuzz.json

Frames are built with fieldsync's own BLIP codec pieces (header encoding, varints, running
CRC32, raw deflate), then mutated: random flags, numbers, truncation, bit flips, bad CRCs,
bombs, oversized WebSocket messages, requests that never end, floods of tiny requests.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from fieldsync.blip import BLIPSession
from fieldsync.blip.frame import COMPRESSED, MORE_COMING, NO_REPLY, URGENT, encode_header
from fieldsync.blip.properties import encode_properties
from fieldsync.blip.varint import encode_uvarint

SUBPROTOCOL = "BLIP_3+CBMobile_3"
PROFILES = [
    "getCheckpoint",
    "setCheckpoint",
    "subChanges",
    "changes",
    "proposeChanges",
    "rev",
    "norev",
    "getAttachment",
    "proveAttachment",
    "getCollections",
    "frobnicate",
    "",
]
CASE_TIMEOUT = 20.0


# -- generating frames ------------------------------------------------------------------------


class FrameMaker:
    """A client's outgoing frames with a consistent running CRC (until a case breaks it)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.crc = 0
        self._z = zlib.compressobj(6, zlib.DEFLATED, -15, 9)

    def frame(self, number: int, flags: int, data: bytes, *, compress: bool = False) -> bytes:
        self.crc = zlib.crc32(data, self.crc)
        if compress:
            packed = self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)
            data = packed[:-4]
            flags |= COMPRESSED
        return encode_header(number, flags) + data + self.crc.to_bytes(4, "big")

    def bomb(self, number: int, flags: int) -> bytes:
        """A frame of ~15 KB that inflates to 15 MB of zeros."""
        self.crc = zlib.crc32(_BOMB_DATA, self.crc)
        header = encode_header(number, flags | COMPRESSED)
        return header + _BOMB + self.crc.to_bytes(4, "big")


_BOMB_SIZE = 15 << 20
_BOMB_DATA = bytes(_BOMB_SIZE)
# A fresh raw-deflate stream, sync-flushed, continues any receiver's stream (no back-references
# before it): compress the bomb once.
_z = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
_BOMB = (_z.compress(_BOMB_DATA) + _z.flush(zlib.Z_SYNC_FLUSH))[:-4]
del _z


def json_body(rng: random.Random) -> bytes:
    """Plausible and implausible JSON for the replication messages."""
    choice = rng.randrange(9)
    if choice == 0:
        depth = rng.choice([10, 100, 1000, 5000])
        return b"[" * depth + b"]" * depth
    if choice == 1:
        return json.dumps([["doc", f"{rng.randrange(1, 9)}-{'ab' * 20}"]]).encode()
    if choice == 2:
        return json.dumps(
            [[rng.randrange(100), f"d{rng.randrange(50)}", "1-" + "c" * 40, rng.random() < 0.5]]
        ).encode()
    if choice == 3:
        return json.dumps({"_id": "x", "v": rng.random(), "_attachments": {"a": {}}}).encode()
    if choice == 4:
        return json.dumps({"checkpoint_ids": ["a"], "collections": ["_default", "x.y"]}).encode()
    if choice == 5:
        return rng.randbytes(rng.randrange(0, 300))
    if choice == 6:
        return b'{"a":' * 50
    if choice == 7:
        return json.dumps({"time": rng.random(), "remote": rng.randrange(1 << 40)}).encode()
    return b""


def properties(rng: random.Random) -> bytes:
    props: list[tuple[str, str]] = [("Profile", rng.choice(PROFILES))]
    for _ in range(rng.randrange(4)):
        key = rng.choice(
            [
                "id",
                "rev",
                "history",
                "client",
                "collection",
                "digest",
                "batch",
                "deleted",
                "sequence",
                "since",
                "continuous",
                "rev",
                "compress",
            ]
        )
        value = rng.choice(
            [
                "",
                "0",
                "1",
                "-1",
                "true",
                "x" * rng.randrange(1, 64),
                "1-" + "a" * 40,
                "sha1-" + "A" * 27 + "=",
                str(rng.randrange(1 << 33)),
            ]
        )
        props.append((key, value))
    return encode_properties(props)


def message_frames(rng: random.Random, maker: FrameMaker, number: int) -> list[bytes]:
    """One request as one or more frames (sometimes compressed, urgent, NoReply)."""
    encoded = properties(rng)
    data = encode_uvarint(len(encoded)) + encoded + json_body(rng)
    flags = 0
    if rng.random() < 0.2:
        flags |= URGENT
    if rng.random() < 0.2:
        flags |= NO_REPLY
    compress = rng.random() < 0.3
    cuts = sorted(rng.sample(range(1, max(2, len(data))), k=min(len(data) - 1, rng.randrange(3))))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)] or [data]
    frames = []
    for i, piece in enumerate(pieces):
        more = MORE_COMING if i + 1 < len(pieces) else 0
        frames.append(maker.frame(number, flags | more, piece, compress=compress))
    return frames


def mutate(rng: random.Random, frame: bytes) -> bytes:
    kind = rng.randrange(6)
    if kind == 0 and len(frame) > 1:
        return frame[: rng.randrange(1, len(frame))]  # truncated
    if kind == 1 and frame:
        i = rng.randrange(len(frame))
        return frame[:i] + bytes([frame[i] ^ (1 << rng.randrange(8))]) + frame[i + 1 :]
    if kind == 2:
        return frame[:-4] + rng.randbytes(4)  # wrong CRC
    if kind == 3:
        return encode_uvarint(rng.randrange(1 << 20)) + bytes([rng.randrange(256)]) + frame[2:]
    if kind == 4:
        return rng.randbytes(rng.randrange(0, 64))
    return frame


def frame_sequence(rng: random.Random) -> list[bytes]:
    """One case: a sequence of frames for a fresh connection."""
    maker = FrameMaker(rng)
    shape = rng.randrange(10)
    if shape == 0:  # a deflate bomb, possibly with a wrong CRC
        frames = [maker.frame(1, MORE_COMING, encode_uvarint(14) + b"Profile\0rev\0\0"[:14])]
        for _ in range(rng.randrange(1, 6)):
            frames.append(maker.bomb(1, MORE_COMING))
        if rng.random() < 0.5:
            frames[-1] = frames[-1][:-4] + b"\0\0\0\0"
        return frames
    if shape == 1:  # a WebSocket message over the cap
        return [maker.frame(1, MORE_COMING, rng.randbytes(rng.choice([40_000, 300_000])))]
    if shape == 2:  # a flood of tiny requests
        return [f for n in range(1, rng.randrange(50, 400)) for f in message_frames(rng, maker, n)]
    if shape == 3:  # a request that never ends
        first = message_frames(rng, maker, 1)[0]
        return [first] + [maker.frame(1, MORE_COMING, rng.randbytes(16_000)) for _ in range(40)]
    frames: list[bytes] = []
    for number in range(1, rng.randrange(2, 8)):
        frames.extend(message_frames(rng, maker, number))
    if shape >= 7:
        i = rng.randrange(len(frames))
        frames[i] = mutate(rng, frames[i])
    if shape == 9 and frames:  # replies/ACKs to requests never made
        frames.append(encode_header(rng.randrange(1, 9), rng.choice([1, 2, 4, 5])) + b"\x05")
    return frames


def http_upgrade(rng: random.Random, port: int) -> bytes:
    """One case: bytes of a (mostly broken) HTTP upgrade request."""
    path = rng.choice(
        [
            "/db/_blipsync",
            "/db",
            "/nope/_blipsync",
            "/%00/_blipsync",
            "/db/_blipsync?x=" + "y" * rng.randrange(9000),
            "/" + "a/" * 500,
            "*",
        ]
    )
    headers = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: " + rng.choice(["13", "8", "", "x"]),
        "Sec-WebSocket-Protocol: " + rng.choice([SUBPROTOCOL, "BLIP_3+CBMobile_4", "", "a,b,,"]),
        "Authorization: Basic " + rng.choice(["", "!!!", "YTpi", "=" * 40]),
    ]
    rng.shuffle(headers[1:])
    if rng.random() < 0.3:
        headers.append("X-" + "h" * 100 + ": " + "v" * rng.randrange(20_000))
    if rng.random() < 0.2:
        headers = headers[: rng.randrange(1, len(headers))]
    data = ("\r\n".join(headers) + "\r\n\r\n").encode()
    if rng.random() < 0.2:
        data = rng.randbytes(rng.randrange(1, 200))
    return data


# -- running cases ----------------------------------------------------------------------------


@dataclass
class Report:
    cases: int = 0
    frame_cases: int = 0
    http_cases: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    hangs: int = 0
    sync_rounds: int = 0
    sync_failures: int = 0
    worst_stall_ms: float = 0.0
    stalls_over_100ms: int = 0
    worst_round_ms: float = 0.0
    round_p50_ms: float = 0.0
    round_p99_ms: float = 0.0
    rss_start_kb: int = 0
    rss_peak_kb: int = 0
    rss_end_kb: int = 0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    listener_alive: bool = True
    concurrency: int = 0

    @property
    def peak_growth_per_connection_mb(self) -> float:
        return (self.rss_peak_kb - self.rss_start_kb) / 1024 / max(1, self.concurrency)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["peak_growth_per_connection_mb"] = round(self.peak_growth_per_connection_mb, 1)
        data["outcomes"] = dict(self.outcomes.most_common())
        return data


async def run_frame_case(port: int, frames: list[bytes], report: Report) -> None:
    try:
        ws = await connect(
            f"ws://127.0.0.1:{port}/db/_blipsync",
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            compression=None,
            max_size=None,
            open_timeout=CASE_TIMEOUT,
            close_timeout=1,
        )
    except Exception as exc:
        report.outcomes[f"connect:{type(exc).__name__}"] += 1
        return

    async def drain() -> None:
        with contextlib.suppress(Exception):
            while True:
                await ws.recv()

    reader = asyncio.create_task(drain())
    try:
        for frame in frames:
            await ws.send(frame)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), 0.05)
        code = ws.close_code
        report.outcomes[f"closed:{code}" if code is not None else "open"] += 1
    except Exception:
        report.outcomes[f"closed:{ws.close_code}"] += 1
    finally:
        reader.cancel()
        with contextlib.suppress(Exception):
            await ws.close()
        ws.transport.abort()


async def run_http_case(port: int, data: bytes, report: Report) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 1)
        parts = line.split()
        report.outcomes[f"http:{parts[1].decode() if len(parts) > 1 else 'eof'}"] += 1
    except TimeoutError:
        report.outcomes["http:no-answer-1s"] += 1  # the server is waiting for more: fine
    except Exception as exc:
        report.outcomes[f"http:{type(exc).__name__}"] += 1
    finally:
        writer.transport.abort()


async def run_case(port: int, rng: random.Random, report: Report) -> None:
    if rng.random() < 0.25:
        report.http_cases += 1
        await run_http_case(port, http_upgrade(rng, port), report)
    else:
        report.frame_cases += 1
        await run_frame_case(port, frame_sequence(rng), report)


async def keep_syncing(port: int, report: Report, stop: threading.Event) -> None:
    """One well-behaved client doing small replication rounds; records its slowest round."""
    ws = await connect(
        f"ws://127.0.0.1:{port}/db/_blipsync",
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
    )
    session = BLIPSession(ws, name="witness")
    reader = asyncio.create_task(session.run())
    rounds: list[float] = []
    n = 0
    try:
        while not stop.is_set():
            n += 1
            start = time.perf_counter()
            try:
                async with asyncio.timeout(10):
                    doc = f"w{n % 50}"
                    proposal = json.dumps([[doc, f"{n}-" + f"{n:040x}"]]).encode()
                    r1 = await session.request("proposeChanges", {}, proposal)
                    r2 = await session.request(
                        "rev",
                        {"id": doc, "rev": f"{n}-{n:040x}", "history": ""},
                        json.dumps({"n": n}).encode(),
                    )
                    committed = time.perf_counter()
                    r3 = await session.request("getCheckpoint", {"client": "witness"})
            except Exception:
                report.sync_failures += 1
                break
            end = time.perf_counter()
            if r1 is None or r1.is_error or r2 is None or r2.is_error or r3 is None:
                report.sync_failures += 1
            report.sync_rounds += 1
            round_ms = (end - start) * 1000
            rounds.append(round_ms)
            report.worst_round_ms = max(report.worst_round_ms, round_ms)
            # A stall: how long a plain request (no disk) waited for its answer.
            stall = (end - committed) * 1000
            report.worst_stall_ms = max(report.worst_stall_ms, stall)
            if stall > 100:
                report.stalls_over_100ms += 1
            await asyncio.sleep(0.02)
    finally:
        await session.close()
        reader.cancel()
        if rounds:
            rounds.sort()
            report.round_p50_ms = rounds[len(rounds) // 2]
            report.round_p99_ms = rounds[len(rounds) * 99 // 100]


def witness_main(port: int) -> int:
    """The witness process: sync until stdin closes, then print its figures as JSON."""
    report = Report()
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    asyncio.run(keep_syncing(port, report, stop))
    keys = (
        "sync_rounds",
        "sync_failures",
        "worst_stall_ms",
        "stalls_over_100ms",
        "worst_round_ms",
        "round_p50_ms",
        "round_p99_ms",
    )
    print(json.dumps({key: getattr(report, key) for key in keys}))
    return 0


def wait_for_listener(port: int, child: subprocess.Popen[bytes], timeout: float = 30) -> bool:
    """Whether the listener in ``child`` accepts connections on ``port`` within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
            return True
        if time.monotonic() > deadline or child.poll() is not None:
            return False
        time.sleep(0.1)


def read_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def read_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def fuzz(
    port: int,
    cases: int,
    seed: int,
    concurrency: int = 8,
    pid: int | None = None,
    progress: bool = False,
) -> Report:
    """Run ``cases`` generated cases against the listener at ``port`` (pid: to measure it)."""
    report = Report(concurrency=concurrency)
    rng = random.Random(seed)
    if pid is not None:
        report.rss_start_kb = report.rss_peak_kb = read_rss_kb(pid)
        cpu0 = read_cpu_seconds(pid)
    # The witness runs in its own process, so the fuzz client's own work (building bombs,
    # holding the GIL) does not count as the listener's stalls.
    witness = subprocess.Popen(
        [sys.executable, __file__, "--witness", str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    started = time.monotonic()
    queue = iter(range(cases))

    async def worker(index: int) -> None:
        case_rng = random.Random(rng.randrange(1 << 62) ^ index)
        for _ in queue:
            try:
                await asyncio.wait_for(run_case(port, case_rng, report), CASE_TIMEOUT)
            except TimeoutError:
                report.hangs += 1
            report.cases += 1
            if progress and report.cases % 5000 == 0:
                rss = read_rss_kb(pid) if pid else 0
                print(
                    f"{report.cases} cases, {time.monotonic() - started:.0f} s, RSS {rss} kB",
                    file=sys.stderr,
                )

    async def sample() -> None:
        while pid is not None:
            report.rss_peak_kb = max(report.rss_peak_kb, read_rss_kb(pid))
            await asyncio.sleep(0.2)

    sampler = asyncio.create_task(sample())
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    out, _ = await asyncio.get_running_loop().run_in_executor(
        None, lambda: witness.communicate(b"", timeout=60)
    )
    for key, value in json.loads(out or b"{}").items():
        setattr(report, key, value)
    if witness.returncode != 0:
        report.sync_failures += 1
    sampler.cancel()
    report.wall_seconds = time.monotonic() - started
    if pid is not None:
        # The listener may still be working through what the cases sent: wait until its CPU
        # is idle (at most a minute), then read what it holds.
        for _ in range(120):
            before = read_cpu_seconds(pid)
            await asyncio.sleep(0.5)
            if read_cpu_seconds(pid) - before < 0.02:
                break
        await asyncio.sleep(1.5)  # closed sessions give memory back within a second
        report.rss_end_kb = read_rss_kb(pid)
        report.cpu_seconds = read_cpu_seconds(pid) - cpu0
    return report


# The listener under test, in its own process (so /proc shows its RSS and CPU alone).
_LISTENER = """
import asyncio, logging, os, sys
from fieldsync.listener import URLEndpointListener, URLEndpointListenerConfiguration
from fieldsync.store import Database

logging.basicConfig(level=logging.WARNING)

async def orphan_watch():
    while os.getppid() != 1:  # exit with the driver
        await asyncio.sleep(1)
    os._exit(0)

async def main():
    asyncio.get_running_loop().create_task(orphan_watch())
    db = Database.open(sys.argv[1])
    config = URLEndpointListenerConfiguration(
        database=db, port=int(sys.argv[2]), disable_tls=True, network_interface="127.0.0.1"
    )
    async with URLEndpointListener(config):
        await asyncio.Event().wait()

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    if sys.argv[1:2] == ["--witness"]:
        return witness_main(int(sys.argv[2]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        child = subprocess.Popen(
            [sys.executable, "-c", _LISTENER, f"{tmp}/db", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=open(f"{tmp}/listener.log", "w"),  # noqa: SIM115
        )
        try:
            if not wait_for_listener(port, child):
                print("listener did not start", file=sys.stderr)
                return 1
            report = asyncio.run(
                fuzz(port, args.cases, args.seed, args.concurrency, child.pid, progress=True)
            )
            report.listener_alive = child.poll() is None
        finally:
            child.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(10)
            if child.poll() is None:
                child.kill()
    data = report.as_json()
    text = json.dumps(data, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    growth_mb = (report.rss_end_kb - report.rss_start_kb) / 1024
    ok = (
        report.listener_alive
        and report.hangs == 0
        and report.sync_failures == 0
        and growth_mb <= 32
        and report.peak_growth_per_connection_mb <= 32
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
