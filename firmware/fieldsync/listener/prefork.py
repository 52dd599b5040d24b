"""Worker processes sharing one listening socket (``fieldsync run --workers N``).

Python runs one thread of Python code at a time, so one process uses about one core however
many phones it serves. With workers, the parent binds the socket, forks N processes that each
accept on it and serve the phones they accepted (the kernel hands each new connection to one
of them), and supervises them: a worker that dies is replaced, and SIGINT/SIGTERM stop them
all. Each worker opens the database itself; SQLite serialises their transactions, so every
guarantee holds across processes as it does across sessions of one process: a revision is
acknowledged after its own durable commit, a conflict is found by the one transaction that
sees both revisions, checkpoints are rows of the database, and a document written in one
worker reaches the continuous phones of the others through the change notifier, which
already watches the database for writes by other processes.

Pure process management: what a worker runs is the caller's ``serve_worker(index)``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType

__all__ = ["EARLY_END_SECONDS", "MAX_EARLY_ENDS", "RESTART_DELAY", "serve_in_workers"]

log = logging.getLogger("fieldsync.workers")

#: A worker that dies is replaced after this long (seconds), so one that cannot start does not
#: turn into a fork loop.
RESTART_DELAY = 1.0
#: A worker that ends this many times in a row, each within ``EARLY_END_SECONDS`` of its
#: start, cannot serve: all are stopped and the server exits 1.
MAX_EARLY_ENDS = 5
EARLY_END_SECONDS = 10.0

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PR_SET_PDEATHSIG = 1


def serve_in_workers(count: int, serve_worker: Callable[[int], int]) -> int:
    """Run ``serve_worker(index)`` in ``count`` forked processes until SIGINT/SIGTERM; replace
    a worker that exits on its own. Returns 0 once all have stopped after a stop signal, or 1
    after stopping them all because one kept failing at start (it cannot serve: a port or a
    database it cannot open; a service manager may then restart the whole server).

    Call it with no event loop and no other thread running (fork copies only the caller's
    thread), and with nothing open that a worker must not share (database connections).
    """
    if count < 1:
        raise ValueError("at least one worker is needed")
    stopping = False
    failed = False
    workers: dict[int, int] = {}  # pid -> index
    started: dict[int, float] = {}  # index -> when its current process started
    early_ends: dict[int, int] = {}  # index -> how many times in a row it ended soon after start

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(workers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    previous = {signum: signal.signal(signum, stop) for signum in _STOP_SIGNALS}
    try:
        for index in range(count):
            workers[_fork(index, serve_worker)] = index
            started[index] = time.monotonic()
        while workers:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries os.wait
                continue
            index = workers.pop(pid, -1)
            if index < 0 or stopping:
                continue
            soon = time.monotonic() - started[index] < EARLY_END_SECONDS
            early_ends[index] = early_ends.get(index, 0) + 1 if soon else 0
            if early_ends[index] >= MAX_EARLY_ENDS:
                log.error(
                    "worker %d (pid %d) ended (%s) %d times in a row right after starting; "
                    "stopping",
                    index,
                    pid,
                    _describe(status),
                    MAX_EARLY_ENDS,
                )
                failed = True
                stop(signal.SIGTERM, None)
                continue
            log.error(
                "worker %d (pid %d) ended (%s); starting another", index, pid, _describe(status)
            )
            wait = started[index] + RESTART_DELAY - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if stopping:
                continue
            workers[_fork(index, serve_worker)] = index
            started[index] = time.monotonic()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 1 if failed else 0


def _fork(index: int, serve_worker: Callable[[int], int]) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    # The worker: default signal handling until its event loop installs its own, and stopped
    # with its parent even if the parent is killed outright (no unsupervised worker keeps the
    # port).
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    _stop_with_parent()
    if os.getppid() != parent:  # it died before that took effect
        os._exit(0)
    code = 1
    try:
        code = serve_worker(index)
    except KeyboardInterrupt:
        code = 0
    except BaseException:
        log.exception("worker %d failed", index)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _stop_with_parent() -> None:
    """SIGTERM this process when its parent dies (Linux ``PR_SET_PDEATHSIG``)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: no such call
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.WEXITSTATUS(status)}"
