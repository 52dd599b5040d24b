"""Benchmark (issue 13, responsiveness): device write -> continuous phones, and idle wake-ups.

``fieldsync run --no-tls`` serves a database in its own process; ``--phones`` LiteCore 3.2
replicators (the ctypes harness, in this process) pull from it continuously. This process then
writes ``--writes`` documents into the served database through the store API — as a sensor
daemon on the device would: another process, so fieldsync must notice the commit itself — and
measures, per phone, the time from the write's commit until the document is in the phone's
database (polled every 0.5 ms). Then, with the phones still connected and nothing written, it
counts the server's wake-ups (context switches of all its threads, /proc) for ``--idle``
seconds: polling every 25 ms would show >= 40/s.

Writes JSON to ``--out`` (default bench/results/latency-<UTC time>.json) and prints a summary.
Needs ``FIELDSYNC_LITECORE_LIB`` (skips with exit 0 without it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests" / "interop"))
from bench_interop import FieldsyncServer, process_cpu_seconds  # noqa: E402
from litecore import LiteCore  # noqa: E402

from fieldsync.store import Database  # noqa: E402


def _wakeups(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phones", type=int, default=5)
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between writes")
    parser.add_argument("--idle", type=float, default=10.0, help="idle seconds measured")
    parser.add_argument("--pin", default=None, help="taskset CPU list for the server")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    lib = os.environ.get("FIELDSYNC_LITECORE_LIB")
    if not lib or not Path(lib).exists():
        print("FIELDSYNC_LITECORE_LIB not set or missing: skipped")
        return 0
    lc = LiteCore(lib)
    with tempfile.TemporaryDirectory(prefix="fs-latency-") as tmp:
        work = Path(tmp)
        served = work / "device"
        Database.open(served).close()
        server = FieldsyncServer(served, work / "server.log", args.pin)
        phones, replicators = [], []
        try:
            for p in range(args.phones):
                db = lc.open_db(work / f"phone{p}", "phone")
                repl = db.replicator(server.url, push=False, pull=True, continuous=True)
                repl.start()
                phones.append(db)
                replicators.append(repl)
            time.sleep(2.0)  # connected and caught up
            latencies: list[float] = []
            misses = 0
            with Database.open(served) as device:
                coll = device.default_collection
                for i in range(args.writes):
                    doc_id = f"lat-{i:05}"
                    coll.save_document(doc_id, {"i": i, "reading": 21.5 + i % 7})
                    written = time.perf_counter()
                    waiting = set(range(len(phones)))
                    deadline = written + 5.0
                    while waiting and time.perf_counter() < deadline:
                        for p in list(waiting):
                            if phones[p].get(doc_id) is not None:
                                latencies.append(time.perf_counter() - written)
                                waiting.discard(p)
                        time.sleep(0.0005)
                    misses += len(waiting)
                    time.sleep(args.interval)
            time.sleep(2.0)
            cpu0, wake0, start = process_cpu_seconds(server.pid), _wakeups(server.pid), time.time()
            time.sleep(args.idle)
            elapsed = time.time() - start
            idle_cpu = process_cpu_seconds(server.pid) - cpu0
            wakeups = (_wakeups(server.pid) - wake0) / elapsed
        finally:
            for repl in replicators:
                repl.stop()
            for repl in replicators:
                with contextlib.suppress(Exception):
                    repl.wait("stopped", timeout=10)
                repl.free()
            for db in phones:
                db.close()
            server.stop()
    ms = [v * 1000 for v in latencies]
    result = {
        "benchmark": "issue 13 responsiveness: device write (another process) -> continuous phones",
        "phones": args.phones,
        "writes": args.writes,
        "pin": args.pin,
        "missed_over_5s": misses,
        "latency_ms": {
            "p50": round(statistics.median(ms), 2) if ms else None,
            "p90": round(_percentile(ms, 0.90), 2) if ms else None,
            "p99": round(_percentile(ms, 0.99), 2) if ms else None,
            "max": round(max(ms), 2) if ms else None,
        },
        "idle": {
            "seconds": round(elapsed, 2),
            "server_wakeups_per_second": round(wakeups, 2),
            "server_cpu_ms_per_second": round(idle_cpu * 1000 / elapsed, 3),
        },
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = args.out or ROOT / "bench" / "results" / time.strftime(
        "latency-%Y%m%dT%H%M%SZ.json", time.gmtime()
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
