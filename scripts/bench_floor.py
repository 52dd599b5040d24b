"""Benchmark (issue 13): what a Python passive peer costs per pushed document, floor by floor.

One LiteCore 3.2 ``cblpeer`` pushes ``--docs`` documents to each server in turn (the order
alternates per round) and the server's CPU per 1,000 documents is measured as in
bench_interop.py (utime+stime from /proc, peak RSS from VmHWM):

- ``raw``: websockets + zlib + the least BLIP that answers a push: inline, no limits, no
  checks. The floor of this language and WebSocket library.
- ``session``: fieldsync's ``BLIPSession`` (frame checks, limits, budgets, flow control), its
  handlers answering at once. Adds fieldsync's BLIP layer.
- ``store``: ``session``, each revision inserted into a one-table SQLite database on a writer
  thread and answered after its batch commits (WAL, ``synchronous=FULL``). The floor of a
  durable Python peer.
- ``fieldsync``: ``fieldsync run --no-tls`` (revision trees, version vectors, conflicts,
  blobs, checkpoints, everything).
- ``litecore``: ``cblpassive``, LiteCore's passive replicator (when built).

The three floor servers answer only what a push asks (getCollections, getCheckpoint,
proposeChanges, rev, setCheckpoint) and keep nothing but what ``store`` inserts: they are
measuring tools, not peers. ``bench_floor.py --serve KIND --db DIR [--record FILE]`` runs
one and prints ``port N`` (``--record``: appends every message received to FILE, for
bench_replay.py). Writes every round and the medians to ``--out``; skips (exit 0) without
``FIELDSYNC_LITECORE_LIB``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:  # the measuring side only: a floor server imports none of it
    from bench_interop import CblpeerClient, Server

    from fieldsync.blip import BLIPSession

FLOORS = ("raw", "session", "store")
KINDS = (*FLOORS, "fieldsync", "litecore")
SUBPROTOCOL = "BLIP_3+CBMobile_3"
_MSG, _RPY, _ERR = 0, 1, 2
_COMPRESSED, _NO_REPLY, _TYPE_MASK = 0x08, 0x20, 0x07
_SYNC_FLUSH_TRAILER = b"\x00\x00\xff\xff"


# -- the floor servers (run with --serve) -------------------------------------------------------


def _answer(profile: bytes | None) -> tuple[int, list[tuple[str, str]], bytes]:
    """(frame type, properties, body) of the floor servers' reply to a push's request."""
    if profile == b"getCheckpoint":
        return _ERR, [("Error-Domain", "HTTP"), ("Error-Code", "404")], b""
    if profile == b"getCollections":
        return _RPY, [], b"[{}]"  # one collection, no checkpoint yet
    if profile == b"proposeChanges":
        return _RPY, [], b"[]"  # send every one
    if profile == b"setCheckpoint":
        return _RPY, [("rev", "1-cc")], b""
    return _RPY, [], b""


async def _serve_raw(websocket: Any) -> None:
    from fieldsync.blip.varint import decode_uvarint, encode_uvarint

    inflater = zlib.decompressobj(-15)
    crc = 0
    async for data in websocket:
        number, pos = decode_uvarint(data, 0)
        flags, pos = decode_uvarint(data, pos)
        payload = data[pos:-4]
        body = (
            inflater.decompress(payload + _SYNC_FLUSH_TRAILER) if flags & _COMPRESSED else payload
        )
        if flags & _TYPE_MASK != _MSG or flags & _NO_REPLY:
            continue
        length, pos = decode_uvarint(body, 0)
        strings = body[pos : pos + length - 1].split(b"\0")  # key\0value\0...
        profile = dict(zip(strings[::2], strings[1::2], strict=True)).get(b"Profile")
        kind, properties, reply = _answer(profile)
        block = b"".join(f"{k}\0{v}\0".encode() for k, v in properties)
        frame_data = encode_uvarint(len(block)) + block + reply
        crc = zlib.crc32(frame_data, crc)
        await websocket.send(
            encode_uvarint(number) + encode_uvarint(kind) + frame_data + crc.to_bytes(4, "big")
        )


class _FloorStore:
    """One table, one writer thread; a batch is answered once its transaction committed."""

    def __init__(self, path: Path) -> None:
        from fieldsync.replication.writer import SerialExecutor

        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(
            "CREATE TABLE docs (id INTEGER PRIMARY KEY, doc_id TEXT UNIQUE, rev_id TEXT,"
            " sequence INTEGER UNIQUE, body BLOB)"
        )
        self._sequence = 0
        self._writer = SerialExecutor("floor-writer")
        self._batch: list[Any] = []
        self._flushing = False

    def add(self, request: Any) -> None:
        self._batch.append(request)
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0.005)  # let a batch gather, as an inserter does
        while self._batch:
            batch, self._batch = self._batch, []
            rows = [(r.properties["id"], r.properties["rev"], r.body) for r in batch]
            await loop.run_in_executor(self._writer, self._commit, rows)
            for request in batch:
                request.respond()
        self._flushing = False

    def _commit(self, rows: list[tuple[str, str, bytes]]) -> None:
        numbered = []
        for doc_id, rev_id, body in rows:
            self._sequence += 1
            numbered.append((doc_id, rev_id, self._sequence, body))
        self._conn.execute("BEGIN IMMEDIATE")
        self._conn.executemany(
            "INSERT INTO docs (doc_id, rev_id, sequence, body) VALUES (?, ?, ?, ?)", numbered
        )
        self._conn.execute("COMMIT")


def floor_session(websocket: Any, store: _FloorStore | None = None) -> BLIPSession:
    """fieldsync's BLIPSession answering a push: at once, or (``store``) once stored."""
    from fieldsync.blip import BLIPSession

    session = BLIPSession(websocket)
    session.register("getCheckpoint", lambda r: r.respond_error("HTTP", 404, "no checkpoint"))
    for profile in ("getCollections", "proposeChanges", "setCheckpoint"):
        _kind, properties, reply = _answer(profile.encode())
        session.register(profile, lambda r, p=dict(properties), b=reply: r.respond(p, b))
    session.register("rev", store.add if store is not None else lambda r: r.respond())
    return session


def write_frame(out: BinaryIO, frame: bytes) -> None:
    """Append one received WebSocket message to a recording (``--record``)."""
    out.write(len(frame).to_bytes(4, "big") + frame)


def read_frames(path: Path) -> list[bytes]:
    """The messages of a recording, in the order they arrived."""
    data = path.read_bytes()
    frames, pos = [], 0
    while pos < len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        frames.append(data[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return frames


async def _serve(kind: str, db_dir: Path, record: Path | None = None) -> None:
    from websockets.asyncio.server import serve
    from websockets.typing import Subprotocol

    store = _FloorStore(db_dir / "floor.sqlite3") if kind == "store" else None

    async def handler(websocket: Any) -> None:
        if record is not None:  # keep what the phone sends, for bench_replay.py
            out = record.open("ab")
            receive = websocket.recv

            async def recv() -> Any:
                frame = await receive()
                write_frame(out, frame)
                return frame

            websocket.recv = recv
        try:
            if kind == "raw":
                await _serve_raw(websocket)
            else:
                await floor_session(websocket, store).run()
        finally:
            if record is not None:
                out.close()

    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(
        handler,
        "127.0.0.1",
        0,
        subprotocols=[Subprotocol(SUBPROTOCOL)],
        compression=None,
        max_size=None,
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"port {port}", flush=True)
        await stop


class FloorServer:
    """A floor server (``--serve KIND``) in its own process."""

    def __init__(self, kind: str, db_dir: Path, record: Path | None = None) -> None:
        db_dir.mkdir()
        self.label = kind
        recording = ["--record", str(record)] if record is not None else []
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--db", str(db_dir), *recording],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("port "):
            self.process.kill()
            raise SystemExit(f"floor server {kind} did not start")
        self.url = f"ws://127.0.0.1:{int(line.split()[1])}/device"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


# -- the measurement ----------------------------------------------------------------------------


def _push(client: CblpeerClient, template: Path, base: Path, server: Server) -> dict[str, float]:
    from bench_interop import process_cpu_seconds, process_memory_kb

    phone = base / "phone"
    shutil.copytree(template, phone)
    try:
        cpu = process_cpu_seconds(server.pid)
        run = client.replicate(phone, server.url, True, None)
        cpu = process_cpu_seconds(server.pid) - cpu
        peak = process_memory_kb(server.pid)
    finally:
        server.stop()
    return {
        "push_docs_per_second": round(run.docs / run.seconds, 1),
        "server_cpu_us_per_doc_push": round(cpu * 1e6 / run.docs, 1),
        "server_peak_rss_mb": round(peak["VmHWM"] / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--doc-size", type=int, default=1024, help="approximate JSON bytes")
    parser.add_argument("--rounds", type=int, default=3, help="median over this many rounds")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=600.0, help="per push, seconds")
    parser.add_argument("--serve", choices=FLOORS, help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--record", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        import uvloop

        uvloop.run(_serve(args.serve, args.db, args.record))
        return 0
    from bench_interop import (
        LIB_ENV,
        ROOT,
        CblpeerClient,
        FieldsyncServer,
        ReferenceServer,
        _git_head,
    )
    from litecore import CblTools, LiteCore

    lib = os.environ.get(LIB_ENV, "").strip()
    if not lib or not Path(lib).is_file():
        print(f"bench_floor: skipped: {LIB_ENV} is not set to a libLiteCore.so")
        return 0
    tools = CblTools.beside(lib)
    if not tools.cblpeer.is_file():
        print(f"bench_floor: skipped: no cblpeer in {tools.bin_dir}")
        return 0
    client = CblpeerClient(tools, LiteCore(lib).version, args.timeout)
    kinds = [k for k in KINDS if k != "litecore" or tools.cblpassive.is_file()]
    rounds: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        work = Path(tmp)
        template = work / "template"
        client.generate(template, args.docs, args.doc_size, "doc-")
        for r in range(args.rounds):
            for kind in kinds if r % 2 == 0 else list(reversed(kinds)):
                base = work / f"r{r}-{kind}"
                base.mkdir()
                server: Server
                if kind == "fieldsync":
                    server = FieldsyncServer(base / "server", work / "fieldsync.log", None)
                elif kind == "litecore":
                    server = ReferenceServer(tools, base / "server", None)
                else:
                    server = FloorServer(kind, base / "server")
                result = _push(client, template, base, server)
                rounds[kind].append(result)
                shutil.rmtree(base, ignore_errors=True)
                print(f"round {r + 1} {kind:9} {json.dumps(result)}", flush=True)

    medians = {
        kind: {key: statistics.median(x[key] for x in runs) for key in runs[0]}
        for kind, runs in rounds.items()
    }
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = args.out or ROOT / "bench" / "results" / f"floor-{stamp}.json"
    report = {
        "benchmark": "issue 13: per-document CPU of Python floors vs fieldsync vs LiteCore, push",
        "when_utc": stamp,
        "docs": args.docs,
        "doc_size_bytes": args.doc_size,
        "rounds": args.rounds,
        "client": client.description,
        "fieldsync_git": _git_head(ROOT),
        "medians": medians,
        "rounds_detail": rounds,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{args.docs} docs x ~{args.doc_size} B pushed by one phone, median of {args.rounds}")
    print(f"{'server':10} {'CPU us/doc':>11} {'docs/s':>9} {'peak RSS MB':>12}")
    for kind, m in medians.items():
        print(
            f"{kind:10} {m['server_cpu_us_per_doc_push']:11.1f} "
            f"{m['push_docs_per_second']:9.1f} {m['server_peak_rss_mb']:12.1f}"
        )
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
