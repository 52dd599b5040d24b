"""Benchmark (issue 13): instructions per received frame, counted by callgrind.

CPU time on this shared 2-core machine moves by 10-15 % between runs, more than most changes
to the per-message path gain. Instruction counts do not: the same tree counts the same to
within 0.5 %, whatever else the machine does. So this replays what a real phone sent, in
process, under ``valgrind --tool=callgrind``:

1. Records the messages a LiteCore 3.2 ``cblpeer`` sends while pushing ``--docs`` documents to
   bench_floor.py's ``session`` server (fieldsync's BLIPSession, handlers answering at once).
2. Replays them through two layers, each in a fresh process:
   - ``session``: a ``BLIPSession`` whose handlers answer at once (the BLIP layer alone);
   - ``replicator``: a ``PassiveReplicator`` on a fresh database (BLIP, replication, store and
     the writer thread: every revision stored durably).
   Frames come from memory; sends go through websockets' sans-I/O protocol to a transport that
   drops them. The replay holds frames back while ``--window`` requests wait for replies, as a
   phone's window would.
3. Counts instructions for the first N1 and N2 frames: (I(N2) - I(N1)) / (N2 - N1) per frame,
   start-up and imports left out.

The fieldsync measured is the one this Python imports (``PYTHONPATH=<checkout>/firmware`` picks
another tree); ``--recording FILE`` replays the same input for both. Writes the counts to
``--out``; skips (exit 0) without ``FIELDSYNC_LITECORE_LIB``, ``cblpeer`` or ``valgrind``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LAYERS = ("session", "replicator")
_COLLECTED = re.compile(r"Collected : (\d+)")


# -- the replay (run under callgrind with --replay) ----------------------------------------------


class _Transport:
    """Takes whatever is written and drops it; ``written`` is set on every write."""

    def __init__(self) -> None:
        self.written = asyncio.Event()

    def write(self, data: bytes) -> None:
        self.written.set()

    def is_closing(self) -> bool:
        return False


class _ReplayedConnection:
    """A ``websockets`` server connection whose messages come from a recording: the session
    writes through a real sans-I/O protocol, the way it does on a socket."""

    paused = False

    def __init__(self, frames: list[bytes], window: int) -> None:
        from websockets.protocol import State
        from websockets.server import ServerProtocol

        self.protocol = ServerProtocol()
        self.protocol.state = State.OPEN
        self.transport = _Transport()
        self.session: Any = None
        self._frames = frames
        self._window = window
        self.delivered = 0
        #: Resolved once the last recorded frame was handed over.
        self.all_delivered = asyncio.get_running_loop().create_future()

    async def drain(self) -> None:
        pass

    async def replies_below(self, count: int) -> None:
        """Wait (without polling) until fewer than ``count`` requests await their replies."""
        written = self.transport.written
        while self.session.protocol.unanswered_count >= count:
            written.clear()
            await written.wait()

    async def recv(self) -> bytes:
        if self.delivered >= len(self._frames):
            await asyncio.get_running_loop().create_future()  # over: wait to be cancelled
        await self.replies_below(self._window + 1)  # the phone waits for replies
        frame = self._frames[self.delivered]
        self.delivered += 1
        if self.delivered == len(self._frames):
            self.all_delivered.set_result(None)
        elif self.delivered % 8 == 0:
            await asyncio.sleep(0)  # a socket read returns several messages, not all
        return frame

    async def send(self, message: bytes) -> None:
        pass

    async def close(self, code: int, reason: str) -> None:
        pass


async def _replay(layer: str, frames: list[bytes], window: int, work: Path) -> None:
    from bench_floor import floor_session

    from fieldsync.blip import BLIPSession
    from fieldsync.listener.listener import _DatabaseCollections
    from fieldsync.replication.notifier import ChangeNotifier
    from fieldsync.replication.passive import PassiveReplicator
    from fieldsync.store import Database

    connection = _ReplayedConnection(frames, window)
    database = None
    if layer == "session":
        connection.session = floor_session(connection)
        task = asyncio.ensure_future(connection.session.run())
    else:
        database = Database.open(work / "device", create=True)
        from fieldsync.replication import messages

        # as the listener opens it (a tree from before SHARED_PROPERTY_STRINGS: without)
        shared = getattr(messages, "SHARED_PROPERTY_STRINGS", None)
        options = {"shared_strings": shared} if shared is not None else {}
        session = connection.session = BLIPSession(connection, name="phone", **options)
        replicator = PassiveReplicator(
            session,
            database,
            _DatabaseCollections(database),
            notifier=ChangeNotifier(database),
        )
        task = asyncio.ensure_future(replicator.run())
    await connection.all_delivered
    await connection.replies_below(1)  # every request answered
    task.cancel()
    if database is not None:
        database.close()


# -- the measurement ------------------------------------------------------------------------------


def _record(docs: int, size: int, recording: Path, work: Path) -> int:
    from bench_floor import FloorServer, read_frames
    from bench_interop import LIB_ENV, CblpeerClient
    from litecore import CblTools, LiteCore

    lib = os.environ[LIB_ENV]
    tools = CblTools.beside(lib)
    client = CblpeerClient(tools, LiteCore(lib).version, 600.0)
    client.generate(work / "phone", docs, size, "doc-")
    server = FloorServer("session", work / "server", record=recording)
    try:
        client.replicate(work / "phone", server.url, True, None)
    finally:
        server.stop()
    return len(read_frames(recording))


def _instructions(layer: str, recording: Path, frames: int, window: int, work: Path) -> int:
    log = work / f"callgrind-{layer}-{frames}.log"
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={work / 'callgrind.out'}"]
    command += [sys.executable, __file__, "--replay", str(recording), "--layer", layer]
    command += ["--frames", str(frames), "--window", str(window), "--work", str(work)]
    env = dict(os.environ, PYTHONHASHSEED="0")  # the same dict layouts every run
    with log.open("w") as err:
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=err, env=env, check=True)
    match = _COLLECTED.search(log.read_text())
    if match is None:
        raise SystemExit(f"no instruction count in {log}")
    return int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=20_000, help="documents the phone pushes")
    parser.add_argument("--doc-size", type=int, default=1024, help="approximate JSON bytes")
    parser.add_argument("--frames", default="4000,12000", help="N1,N2: frames replayed")
    parser.add_argument("--window", type=int, default=500, help="requests awaiting replies")
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--recording",
        type=Path,
        default=None,
        help="replay this recording (made here if missing): to compare two trees on one input",
    )
    parser.add_argument("--replay", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--layer", choices=LAYERS, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replay:
        import uvloop
        from bench_floor import read_frames

        frames = read_frames(args.replay)[: int(args.frames)]
        work = Path(tempfile.mkdtemp(dir=args.work))
        try:
            uvloop.run(_replay(args.layer, frames, args.window, work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return 0

    from bench_interop import LIB_ENV, ROOT, _git_head

    lib = os.environ.get(LIB_ENV, "").strip()
    if not lib or not Path(lib).is_file():
        print(f"bench_replay: skipped: {LIB_ENV} is not set to a libLiteCore.so")
        return 0
    if shutil.which("valgrind") is None:
        print("bench_replay: skipped: no valgrind (apt-get install valgrind)")
        return 0
    first, second = (int(n) for n in args.frames.split(","))
    layers = [layer for layer in args.layers.split(",") if layer]
    counts: dict[str, dict[str, int | float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        work = Path(tmp)
        recording = args.recording or work / "frames.bin"
        if recording.exists():
            from bench_floor import read_frames

            recorded = len(read_frames(recording))
        else:
            recorded = _record(args.docs, args.doc_size, recording, work)
        if recorded < second:
            raise SystemExit(f"recorded {recorded} frames, fewer than {second}")
        for layer in layers:
            low = _instructions(layer, recording, first, args.window, work)
            high = _instructions(layer, recording, second, args.window, work)
            per_frame = round((high - low) / (second - first))
            counts[layer] = {"instructions": {str(first): low, str(second): high}}
            counts[layer]["instructions_per_frame"] = per_frame
            print(f"{layer:10} {per_frame:>10,} instructions per frame", flush=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = args.out or ROOT / "bench" / "results" / f"replay-{stamp}.json"
    import fieldsync

    report: dict[str, Any] = {
        "benchmark": "issue 13: instructions per received frame of a LiteCore push (callgrind)",
        "when_utc": stamp,
        "docs": args.docs,
        "recording": str(args.recording) if args.recording else None,
        "recorded_frames": recorded,
        "frames_replayed": [first, second],
        "window": args.window,
        "fieldsync": str(Path(fieldsync.__file__).parent),
        "fieldsync_git": _git_head(Path(fieldsync.__file__).parent),
        "layers": counts,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
