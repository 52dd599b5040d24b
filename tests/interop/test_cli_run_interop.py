"""``fieldsync run`` as a real process, with LiteCore 3.2 (the phone) replicating against it.

The command is started with ``--port 0 --no-tls``; the port comes from the URL lines it prints
(``fieldsync:   ws://<address>:<port>/<name>``) and the phone connects to 127.0.0.1 on it.
After a push and a pull, SIGTERM must stop it with exit status 0 and what the phone pushed must
be in the database on disk. Skipped without ``FIELDSYNC_LITECORE_LIB``.
"""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest
from tests.interop.fieldsync_side import TIMEOUT
from tests.interop.litecore import LiteDatabase, pulled_doc_ids, pushed_doc_ids

store_mod = pytest.importorskip("fieldsync.store", reason="fieldsync.store not importable")

FIELDSYNC = Path(sys.executable).parent / "fieldsync"
URL_LINE = re.compile(r"^fieldsync:\s+(wss?)://(\S+):(\d+)/(\S+)\s*$")
STARTUP_TIMEOUT = 30.0


class RunningCommand:
    """A ``fieldsync run`` child; its stdout lines are collected by a reader thread."""

    def __init__(self, args: list[str]) -> None:
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        assert self.process.stdout is not None and self.process.stderr is not None
        threading.Thread(target=self._pump, args=(self.process.stdout, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.process.stderr, False), daemon=True).start()

    def _pump(self, stream: IO[str], is_stdout: bool) -> None:
        for line in stream:
            (self.stdout if is_stdout else self.stderr).append(line.rstrip("\n"))
            if is_stdout:
                self.lines.put(line.rstrip("\n"))
        if is_stdout:
            self.lines.put(None)

    def wait_for_line(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern!r}: {self.output()}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"fieldsync run exited early: {self.output()}")
            if re.search(pattern, line):
                return line

    def output(self) -> str:
        return "\nstdout:\n" + "\n".join(self.stdout) + "\nstderr:\n" + "\n".join(self.stderr)

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"fieldsync run ignored SIGTERM: {self.output()}") from None


@pytest.fixture
def device_dir(tmp_path: Path) -> Path:
    path = tmp_path / "fieldstation"
    db = store_mod.Database.open(path, create=True)
    with db.transaction():
        for i in range(100):
            db.default_collection.save_document(f"station-{i:03}", {"i": i, "temp": 15 + i / 4})
    db.close()
    return path


def test_fieldsync_run_serves_litecore(device_dir: Path, phone: LiteDatabase) -> None:
    if not FIELDSYNC.is_file():
        pytest.skip(f"{FIELDSYNC} not installed")
    command = RunningCommand(
        [str(FIELDSYNC), "run", "--db", str(device_dir), "--port", "0", "--no-tls"]
    )
    try:
        command.wait_for_line(r"press Ctrl-C to stop", STARTUP_TIMEOUT)
        urls = [m.groups() for m in map(URL_LINE.match, command.stdout) if m]
        assert urls, command.output()
        schemes, _hosts, ports, names = (set(column) for column in zip(*urls, strict=True))
        assert schemes == {"ws"} and names == {"fieldstation"} and len(ports) == 1, urls
        port = int(ports.pop())
        assert f"fieldsync: listening on port {port}" in command.stdout, command.output()
        url = f"ws://127.0.0.1:{port}/fieldstation"

        with phone.transaction():
            for i in range(100):
                phone.put(f"phone-{i:03}", {"i": i, "note": f"observation {i}"})
        with phone.replicator(url) as repl:
            repl.start()
            status = repl.wait("stopped", timeout=TIMEOUT)
            assert not status.error, (status, command.output())
            assert pushed_doc_ids(repl.documents_ended) == {f"phone-{i:03}" for i in range(100)}
            assert pulled_doc_ids(repl.documents_ended) == {f"station-{i:03}" for i in range(100)}
        # A second, continuous replication is still connected when the server is stopped.
        repl = phone.replicator(url, continuous=True)
        repl.start()
        repl.wait("idle", timeout=TIMEOUT)
        phone.put("late", {"v": "pushed while continuous"})
        deadline = time.monotonic() + TIMEOUT
        while not [d for d in repl.documents_ended if d.doc_id == "late" and not d.error]:
            assert time.monotonic() < deadline, "continuous push did not finish"
            time.sleep(0.02)
        code = command.stop()
        assert code == 0, command.output()
        assert "fieldsync: stopping" in command.stdout, command.output()
        status = repl.wait("stopped", timeout=TIMEOUT)
        assert (status.error.domain, status.error.code) == (6, 1001), status
        repl.free()
    finally:
        if command.process.poll() is None:
            command.process.kill()
            command.process.wait()

    db = store_mod.Database.open(device_dir, create=False)
    try:
        collection = db.default_collection
        assert collection.count() == 201
        assert collection.get_document("phone-042").body == {"i": 42, "note": "observation 42"}
        assert collection.get_document("late").body == {"v": "pushed while continuous"}
        for doc_id in ("phone-000", "station-099", "late"):
            assert collection.get_document(doc_id).rev_id == phone.get(doc_id)["revID"]
    finally:
        db.close()
    assert phone.count() == 201
