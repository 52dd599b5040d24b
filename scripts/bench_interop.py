"""Benchmark (issue 13): fieldsync against LiteCore's own passive replicator, same client, one run.

The client is a real LiteCore 3.2 replicator: the ``cblpeer`` tool built next to
``FIELDSYNC_LITECORE_LIB`` (``<prefix>/bin/cblpeer`` beside ``<prefix>/lib/libLiteCore.so``; see
tests/interop/ and the litecore-tools notes). The servers take turns, each in its own process on
loopback with a fresh database:

- ``fieldsync run --no-tls`` (this checkout), and
- ``cblpassive``: LiteCore's passive replicator, what Couchbase Lite's URLEndpointListener runs.

For each round, variant and server: push ``--docs`` documents of ~``--doc-size`` bytes from a
pre-generated phone database, then pull them all into an empty one. Measured: docs/s (from the
replicator's own start-to-stopped time), the server's CPU time per 1,000 documents (utime+stime
from /proc/<pid>/stat, its threads and child processes included), and its peak RSS (VmHWM).
Variants: ``free`` (nothing pinned) and ``pinned`` (server ``taskset -c 0``, client
``taskset -c 1``: one core, as a stand-in for a Pi). With ``--phones N`` (N > 1) it also runs N
phones at once, each pushing its own ``docs/N`` documents, then each pulling everything.

Writes all rounds, the medians and the ratios (fieldsync / LiteCore) to ``--out``
(default bench/results/interop-<UTC time>.json) and prints a table. Skips the LiteCore reference
with a message when ``cblpassive`` is not built; without ``cblpeer`` it falls back to the ctypes
harness as the client (fieldsync only); without ``FIELDSYNC_LITECORE_LIB`` it skips (exit 0).
The fieldsync measured is the one this Python imports (``PYTHONPATH=<checkout>/firmware`` picks
another checkout); its folder and git commit are recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
LIB_ENV = "FIELDSYNC_LITECORE_LIB"
URL_LINE = re.compile(r"^fieldsync:\s+wss?://\S+:(\d+)/(\S+)\s*$")
PHONE_NAME = "phone"

sys.path.insert(0, str(ROOT / "tests" / "interop"))
from litecore import CblPassive, CblTools, LiteCore  # noqa: E402


class BenchError(RuntimeError):
    """A replication in one measurement failed: that round is recorded as failed."""


# -- measuring a server process (and its children) through /proc -----------------------------------


def _children(pid: int) -> list[int]:
    """Every live descendant of ``pid``."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user+system) of ``pid``, its live descendants and its reaped children."""
    ticks = 0
    fields = _stat_fields(pid)
    ticks += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    for child in _children(pid):
        with contextlib.suppress(OSError):  # it may exit between the listing and the read
            ticks += sum(int(f) for f in _stat_fields(child)[11:13])
    return ticks / os.sysconf("SC_CLK_TCK")


def process_memory_kb(pid: int) -> dict[str, int]:
    """VmRSS/VmHWM (kB) of ``pid``, and the sum of VmHWM over it and its descendants."""
    result = {"VmRSS": 0, "VmHWM": 0, "tree_VmHWM": 0}
    for n, p in enumerate([pid, *_children(pid)]):
        try:
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                kb = int(value.split()[0])
                if n == 0:
                    result[key] = kb
                if key == "VmHWM":
                    result["tree_VmHWM"] += kb
    return result


# -- the two servers ----------------------------------------------------------------------------


class Server(Protocol):
    label: str
    url: str

    @property
    def pid(self) -> int: ...

    def stop(self) -> None: ...


class FieldsyncServer:
    """``fieldsync run --no-tls`` on an OS-chosen port, in its own process."""

    label = "fieldsync"

    def __init__(
        self,
        db_dir: Path,
        log_path: Path,
        pin: str | None,
        timeout: float = 60.0,
        workers: int = 1,
    ):
        self._log = log_path.open("w")
        command = [sys.executable, "-m", "fieldsync", "run", "--db", str(db_dir)]
        command += ["--name", "device", "--port", "0", "--no-tls"]
        if workers > 1:
            command += ["--workers", str(workers)]
        if pin is not None:
            command = ["taskset", "-c", pin, *command]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1
        )
        port = self._read_port(timeout)
        self.url = f"ws://127.0.0.1:{port}/device"
        # Keep draining stdout so the child never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read_port(self, timeout: float) -> int:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        port = None
        for line in self.process.stdout:
            match = URL_LINE.match(line.rstrip("\n"))
            if match:
                port = int(match.group(1))
            if "press Ctrl-C to stop" in line or time.monotonic() > deadline:
                break
        if port is None:
            self.process.kill()
            raise SystemExit("fieldsync run did not print a URL line; see its log")
        return port

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for _ in self.process.stdout:
            pass

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=30)
        finally:
            self._log.close()
        if code != 0:
            raise SystemExit(f"fieldsync run exited with {code}")


class ReferenceServer:
    """``cblpassive``: LiteCore's passive replicator (Couchbase Lite's URLEndpointListener)."""

    label = "litecore"

    def __init__(self, tools: CblTools, db_dir: Path, pin: str | None) -> None:
        self.passive: CblPassive = tools.passive(db_dir, name="db", taskset=pin)
        self.url = self.passive.url

    @property
    def pid(self) -> int:
        return self.passive.pid

    def stop(self) -> None:
        end = self.passive.stop()
        if not end.get("db_closed"):
            raise SystemExit(f"cblpassive did not exit cleanly: {end} {self.passive.stderr}")


# -- the client ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Replication:
    seconds: float  # the replicator's own start -> stopped time
    docs: int


class Client(Protocol):
    description: str

    def generate(self, directory: Path, docs: int, size: int, prefix: str) -> None: ...

    def replicate(self, directory: Path, url: str, push: bool, pin: str | None) -> Replication: ...


class CblpeerClient:
    """LiteCore's replicator in the ``cblpeer`` tool, one process per replication."""

    def __init__(self, tools: CblTools, version: str, timeout: float) -> None:
        self.tools = tools
        self.timeout = timeout
        self.description = f"cblpeer (LiteCore {version}), one process per phone, loopback"

    def generate(self, directory: Path, docs: int, size: int, prefix: str) -> None:
        run = self.tools.peer(
            directory,
            "info",
            name=PHONE_NAME,
            options=["--gen", str(docs), "--size", str(size), "--prefix", prefix],
        )
        if run.returncode != 0:
            raise SystemExit(f"cblpeer --gen failed: {run.stderr}")

    def replicate(self, directory: Path, url: str, push: bool, pin: str | None) -> Replication:
        run = self.tools.peer(
            directory,
            "push" if push else "pull",
            url=url,
            name=PHONE_NAME,
            timeout=self.timeout,
            taskset=pin,
        )
        result = run.result
        if run.returncode != 0 or result.get("status") != "ok":
            raise BenchError(f"cblpeer {'push' if push else 'pull'} failed: {result}")
        errors = result["push_errors"] + result["pull_errors"]
        if errors:
            raise BenchError(
                f"{'push' if push else 'pull'}: {errors} documents failed, first: "
                f"{result['first_doc_error']}"
            )
        docs = result["docs_pushed"] if push else result["docs_pulled"]
        return Replication(float(result["seconds"]), int(docs))


class CtypesClient:
    """Fallback when cblpeer is not built: the ctypes harness, in this process."""

    def __init__(self, lc: LiteCore, timeout: float) -> None:
        self.lc = lc
        self.timeout = timeout
        self.description = f"LiteCore {lc.version} via ctypes in the benchmark process"

    def generate(self, directory: Path, docs: int, size: int, prefix: str) -> None:
        db = self.lc.open_db(directory, PHONE_NAME)
        filler = max(size - 60, 0)
        with db.transaction():
            for i in range(docs):
                db.put(
                    f"{prefix}{i:06}", {"n": i, "filler": (f"{i:08d}" * (filler // 8 + 1))[:filler]}
                )
        db.close()

    def replicate(self, directory: Path, url: str, push: bool, pin: str | None) -> Replication:
        db = self.lc.open_db(directory, PHONE_NAME)
        try:
            with db.replicator(url, push=push, pull=not push) as repl:
                start = time.perf_counter()
                repl.start()
                status = repl.wait("stopped", timeout=self.timeout)
                seconds = time.perf_counter() - start
                ended = repl.documents_ended
        finally:
            db.close()
        if status.error or any(d.error for d in ended):
            raise BenchError(f"{'push' if push else 'pull'} failed: {status}")
        return Replication(seconds, len(ended))


# -- one measurement ----------------------------------------------------------------------------


@dataclass
class Settings:
    docs: int
    size: int
    phones: int
    work: Path
    client: Client
    template: Path  # a generated phone database (one phone, all docs)
    multi_templates: list[Path]  # one per phone for --phones


def _copy_phone(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest)
    return dest


def measure(
    settings: Settings,
    start_server: Callable[[Path, str | None], Server],
    variant: str,
    tag: str,
) -> dict[str, Any]:
    """Push then pull ``docs`` with one phone (or ``phones`` at once) against a fresh server."""
    server_pin, client_pin = ("0", "1") if variant == "pinned" else (None, None)
    base = settings.work / tag
    base.mkdir()
    server = start_server(base / "server", server_pin)
    try:
        idle = process_memory_kb(server.pid)
        templates = settings.multi_templates if settings.phones > 1 else [settings.template]
        phones = [_copy_phone(t, base / f"phone{i}") for i, t in enumerate(templates)]
        fresh = [base / f"fresh{i}" for i in range(len(templates))]

        def phase(dirs: Sequence[Path], push: bool) -> tuple[list[Replication], float, float]:
            cpu = process_cpu_seconds(server.pid)
            wall = time.perf_counter()
            with ThreadPoolExecutor(len(dirs)) as pool:
                runs = list(
                    pool.map(
                        lambda d: settings.client.replicate(d, server.url, push, client_pin), dirs
                    )
                )
            return runs, time.perf_counter() - wall, process_cpu_seconds(server.pid) - cpu

        pushes, push_wall, push_cpu = phase(phones, push=True)
        pulls, pull_wall, pull_cpu = phase(fresh, push=False)
        peak = process_memory_kb(server.pid)
    finally:
        server.stop()
    pushed = sum(r.docs for r in pushes)
    pulled = sum(r.docs for r in pulls)
    if pushed != settings.docs or pulled != settings.docs * len(templates):
        raise BenchError(f"{tag}: pushed {pushed}, pulled {pulled} (expected {settings.docs})")
    # One phone: the replicator's own time. Several: all documents over the wall time.
    push_s = pushes[0].seconds if len(pushes) == 1 else push_wall
    pull_s = pulls[0].seconds if len(pulls) == 1 else pull_wall
    shutil.rmtree(base, ignore_errors=True)
    return {
        "push_docs_per_second": round(pushed / push_s, 1),
        "pull_docs_per_second": round(pulled / pull_s, 1),
        "push_seconds": round(push_s, 3),
        "pull_seconds": round(pull_s, 3),
        "server_cpu_ms_per_1000_docs_push": round(push_cpu * 1e6 / pushed, 1),
        "server_cpu_ms_per_1000_docs_pull": round(pull_cpu * 1e6 / pulled, 1),
        "server_peak_rss_mb": round(peak["VmHWM"] / 1024, 1),
        "server_tree_peak_rss_mb": round(peak["tree_VmHWM"] / 1024, 1),
        "server_idle_rss_mb": round(idle["VmRSS"] / 1024, 1),
    }


FIGURES = (
    ("push_docs_per_second", "push from phone, docs/s", "higher"),
    ("pull_docs_per_second", "pull to phone, docs/s", "higher"),
    ("server_cpu_ms_per_1000_docs_push", "server CPU ms / 1,000 docs, push", "lower"),
    ("server_cpu_ms_per_1000_docs_pull", "server CPU ms / 1,000 docs, pull", "lower"),
    ("server_tree_peak_rss_mb", "server peak RSS, MB (with its workers)", "lower"),
)


def _median(rounds: list[dict[str, Any]]) -> dict[str, float]:
    """Medians over the rounds that did not fail (empty if all failed)."""
    good = [r for r in rounds if "error" not in r]
    if not good:
        return {}
    return {key: round(statistics.median(r[key] for r in good), 1) for key in good[0]}


def _git_head(where: Path) -> str:
    """The commit of the fieldsync code measured (``+dirty`` with local changes), or "?"."""
    try:
        head = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + ("+dirty" if dirty else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--doc-size", type=int, default=1024, help="approximate JSON bytes")
    parser.add_argument("--rounds", type=int, default=3, help="median over this many rounds")
    parser.add_argument("--phones", type=int, default=1, help="phones at once (default 1)")
    parser.add_argument(
        "--variants", default="free,pinned", help="free (nothing pinned), pinned (taskset)"
    )
    parser.add_argument("--no-reference", action="store_true", help="fieldsync only")
    parser.add_argument(
        "--workers", type=int, default=1, help="fieldsync run --workers (default 1)"
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=600.0, help="per replication, seconds")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    if any(v not in ("free", "pinned") for v in variants):
        parser.error("--variants takes free and/or pinned")
    if "pinned" in variants and (os.cpu_count() or 1) < 2:
        parser.error("the pinned variant needs two CPUs (server on 0, client on 1)")

    lib = os.environ.get(LIB_ENV, "").strip()
    if not lib or not Path(lib).is_file():
        print(
            f"bench_interop: skipped: {LIB_ENV} is not set to a libLiteCore.so (build LiteCore "
            "3.2.4 outside the repo and point this at it)"
        )
        return 0
    import fieldsync

    lc = LiteCore(lib)
    tools = CblTools.beside(lib)
    notes = []
    if tools.cblpeer.is_file():
        client: Client = CblpeerClient(tools, lc.version, args.timeout)
    else:
        client = CtypesClient(lc, args.timeout)
        notes.append(f"cblpeer not found in {tools.bin_dir}: client is the ctypes harness")
    reference = not args.no_reference and tools.cblpassive.is_file()
    if not reference and not args.no_reference:
        notes.append(f"reference skipped: cblpassive not found in {tools.bin_dir}")
    for note in notes:
        print(f"bench_interop: {note}")

    servers: list[tuple[str, Callable[[Path, str | None], Server]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-interop-") as tmp:
        work = Path(tmp)
        if isinstance(client, CtypesClient):
            lc.enable_log("warning", work / "litecore.log")
        servers.append(
            (
                "fieldsync",
                lambda d, pin: FieldsyncServer(
                    d, work / "fieldsync.log", pin, workers=args.workers
                ),
            )
        )
        if reference:
            servers.append(("litecore", lambda d, pin: ReferenceServer(tools, d, pin)))
        template = work / "template"
        client.generate(template, args.docs, args.doc_size, "doc-")
        multi = []
        if args.phones > 1:
            share = args.docs // args.phones
            for i in range(args.phones):
                t = work / f"template{i}"
                count = share if i < args.phones - 1 else args.docs - share * (args.phones - 1)
                client.generate(t, count, args.doc_size, f"p{i}-")
                multi.append(t)
        settings = Settings(args.docs, args.doc_size, args.phones, work, client, template, multi)

        rounds: dict[str, dict[str, list[dict[str, Any]]]] = {
            v: {name: [] for name, _ in servers} for v in variants
        }
        for r in range(args.rounds):
            for variant in variants:
                # Alternate which server goes first, so drift on a shared machine evens out.
                order = servers if r % 2 == 0 else list(reversed(servers))
                for name, start in order:
                    try:
                        result = measure(settings, start, variant, f"r{r}-{variant}-{name}")
                    except BenchError as exc:
                        result = {"error": str(exc)}
                    rounds[variant][name].append(result)
                    print(f"round {r + 1} {variant:6} {name:9} {json.dumps(result)}", flush=True)

    medians = {v: {n: _median(rs) for n, rs in by.items()} for v, by in rounds.items()}
    ratios: dict[str, dict[str, float]] = {}
    if reference:
        for v, by in medians.items():
            ratios[v] = {
                key: round(by["fieldsync"][key] / by["litecore"][key], 2)
                for key, _, _ in FIGURES
                if by["litecore"].get(key) and key in by["fieldsync"]
            }
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = args.out or ROOT / "bench" / "results" / f"interop-{stamp}.json"
    report = {
        "benchmark": "issue 13: fieldsync vs LiteCore passive replicator, same client, same run",
        "when_utc": stamp,
        "docs": args.docs,
        "doc_size_bytes": args.doc_size,
        "phones": args.phones,
        "fieldsync_workers": args.workers,
        "rounds": args.rounds,
        "client": client.description,
        "servers": {
            "fieldsync": f"fieldsync run --no-tls --workers {args.workers} (own process)",
            "litecore": "cblpassive (LiteCore passive replicator, own process)"
            if reference
            else "skipped",
        },
        "variants": {
            "free": "nothing pinned",
            "pinned": "server taskset -c 0, client taskset -c 1",
        },
        "notes": notes,
        "fieldsync_version": getattr(fieldsync, "__version__", "?"),
        "fieldsync_source": str(Path(fieldsync.__file__).parent),
        "git_head": _git_head(Path(fieldsync.__file__).parent),
        "litecore_version": lc.version,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "median": medians,
        "ratio_fieldsync_over_litecore": ratios,
        "all_rounds": rounds,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    print(
        f"\n{args.docs} docs x ~{args.doc_size} B, {args.phones} phone(s), median of {args.rounds}"
    )
    for v in variants:
        print(f"\n[{v}: {report['variants'][v]}]")
        print(f"{'figure':36} {'fieldsync':>10} {'litecore':>10} {'ratio':>7}")
        for key, label, better in FIGURES:
            fs = medians[v]["fieldsync"].get(key, "failed")
            ref = medians[v].get("litecore", {}).get(key, "failed" if reference else None)
            ratio = ratios.get(v, {}).get(key)
            print(
                f"{label:36} {fs:>10} {ref if ref is not None else '-':>10} "
                f"{ratio if ratio is not None else '-':>7}  ({better} is better)"
            )
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
