"""Benchmark: a real LiteCore 3.2 replicator (Couchbase Lite's engine) against ``fieldsync run``.

LiteCore pushes N documents of ~1 KB to a fieldsync listener on loopback, then pulls them all
back into a fresh LiteCore database. The listener is ``fieldsync run --no-tls`` in its own
process, so its peak RSS (``VmHWM``) and CPU time are its own. Writes docs/s, seconds and
memory to ``--out`` (default bench/results/interop.json).

Needs ``FIELDSYNC_LITECORE_LIB`` (a libLiteCore.so built outside this repository; see
tests/interop/); without it the benchmark is skipped with a message (exit status 0). The ctypes
harness is imported from tests/interop/litecore.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LIB_ENV = "FIELDSYNC_LITECORE_LIB"
URL_LINE = re.compile(r"^fieldsync:\s+wss?://\S+:(\d+)/\S+\s*$")


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS/VmHWM (kB) of a process, from /proc."""
    result = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            result[key] = int(value.split()[0])
    return result


def _proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """``fieldsync run`` on an OS-chosen port, plain ws://, in a child process."""

    def __init__(self, db_dir: Path, log_path: Path, timeout: float = 60.0) -> None:
        self._log = log_path.open("w")
        command = [sys.executable, "-m", "fieldsync", "run", "--db", str(db_dir), "--port", "0"]
        self.process = subprocess.Popen(
            [*command, "--no-tls"],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
        )
        self.port = self._read_port(timeout)
        # Keep draining stdout so the child never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _read_port(self, timeout: float) -> int:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        port = None
        for line in self.process.stdout:
            match = URL_LINE.match(line.rstrip("\n"))
            if match:
                port = int(match.group(1))
            if "press Ctrl-C to stop" in line:
                break
            if time.monotonic() > deadline:
                break
        if port is None:
            self.process.kill()
            raise SystemExit("fieldsync run did not print a URL line; see its log")
        return port

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for _ in self.process.stdout:
            pass

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        finally:
            self._log.close()


def _replicate(db: Any, url: str, *, push: bool, timeout: float) -> tuple[float, Any]:
    with db.replicator(url, push=push, pull=not push) as repl:
        start = time.perf_counter()
        repl.start()
        status = repl.wait("stopped", timeout=timeout)
        elapsed = time.perf_counter() - start
        ended = repl.documents_ended
    if status.error:
        raise SystemExit(f"{'push' if push else 'pull'} failed: {status}")
    errors = [d for d in ended if d.error]
    if errors:
        raise SystemExit(f"{len(errors)} documents failed, first: {errors[0]}")
    return elapsed, ended


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--doc-size", type=int, default=1024, help="approximate JSON bytes")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/interop.json")
    parser.add_argument("--timeout", type=float, default=600.0, help="per replication, seconds")
    args = parser.parse_args()

    lib = os.environ.get(LIB_ENV, "").strip()
    if not lib or not Path(lib).is_file():
        print(
            f"bench_interop: skipped: {LIB_ENV} is not set to a libLiteCore.so (build LiteCore "
            "3.2.4 outside the repo and point this at it)"
        )
        return 0
    sys.path.insert(0, str(ROOT / "tests" / "interop"))
    from litecore import LiteCore

    import fieldsync

    lc = LiteCore(lib)
    with tempfile.TemporaryDirectory(prefix="bench-interop-") as tmp:
        tmp_path = Path(tmp)
        lc.enable_log("warning", tmp_path / "litecore.log")
        phone = lc.open_db(tmp_path / "phone", "phone")
        filler_size = max(args.doc_size - 60, 0)
        with phone.transaction():
            for i in range(args.docs):
                filler = (f"{i:08d}" * (filler_size // 8 + 1))[:filler_size]
                phone.put(f"doc-{i:06}", {"n": i, "kind": "reading", "filler": filler})

        server = Server(tmp_path / "device", tmp_path / "server.log")
        try:
            url = f"ws://127.0.0.1:{server.port}/device"
            idle = _proc_status(server.process.pid)
            cpu_before = _proc_cpu_seconds(server.process.pid)
            push_seconds, pushed = _replicate(phone, url, push=True, timeout=args.timeout)
            if len(pushed) != args.docs:
                raise SystemExit(f"pushed {len(pushed)} of {args.docs} documents")
            cpu_push = _proc_cpu_seconds(server.process.pid) - cpu_before

            fresh = lc.open_db(tmp_path / "fresh", "fresh")
            cpu_before = _proc_cpu_seconds(server.process.pid)
            pull_seconds, pulled = _replicate(fresh, url, push=False, timeout=args.timeout)
            cpu_pull = _proc_cpu_seconds(server.process.pid) - cpu_before
            if len(pulled) != args.docs or fresh.count() != args.docs:
                raise SystemExit(f"pulled {len(pulled)} of {args.docs} documents")
            peak = _proc_status(server.process.pid)
        finally:
            exit_code = server.stop()
        if exit_code != 0:
            raise SystemExit(f"fieldsync run exited with {exit_code}")
        if fresh.all_docs() != phone.all_docs():
            raise SystemExit("the pulled documents differ from the pushed ones")
        fresh.close()
        phone.close()

    results = {
        "docs": args.docs,
        "doc_size_bytes": args.doc_size,
        "push_seconds": round(push_seconds, 3),
        "push_docs_per_second": round(args.docs / push_seconds, 1),
        "pull_seconds": round(pull_seconds, 3),
        "pull_docs_per_second": round(args.docs / pull_seconds, 1),
        "server_peak_rss_mb": round(peak["VmHWM"] / 1024, 1),
        "server_idle_rss_mb": round(idle["VmRSS"] / 1024, 1),
        "server_cpu_seconds_push": round(cpu_push, 2),
        "server_cpu_seconds_pull": round(cpu_pull, 2),
        "server": "fieldsync run --no-tls (own process)",
        "client": f"LiteCore {lc.version} via ctypes, same host (loopback)",
        "fieldsync_version": getattr(fieldsync, "__version__", "?"),
        "cpu_count": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
