"""The store-writer thread (:data:`WRITER`): the writes sessions make, in submission order.

Why the writes run there, and how revisions are batched for it: see ``inserter``.
"""

from __future__ import annotations

import atexit
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from queue import SimpleQueue
from typing import Any, ParamSpec, TypeVar

__all__ = ["WRITER", "SerialExecutor"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

_Item = tuple["Future[Any]", Callable[[], Any]]


class SerialExecutor(Executor):
    """An executor whose one thread runs the submitted calls in order, started on first use.

    ``ThreadPoolExecutor(max_workers=1)`` does the same, but every ``submit`` also takes its
    idle-worker semaphore, whose lock the worker takes after every call: with the event loop
    and the writer trading the GIL, a submit could wait for the writer to run (py-spy found
    3.9 % of the loop's time in ``submit`` during a push; perf, issue 13). Calls still queued
    when the interpreter exits run first, as a ``ThreadPoolExecutor``'s do.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: SimpleQueue[_Item | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._shut_down = False

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        if self._shut_down:
            raise RuntimeError("cannot schedule new futures after shutdown")
        future: Future[_T] = Future()
        self._queue.put((future, functools.partial(fn, *args, **kwargs)))
        if self._thread is None:
            self._start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Run what is queued (or cancel it) and stop the thread; later submits raise."""
        with self._lock:
            self._shut_down = True
            thread = self._thread
        if cancel_futures:
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if item is not None:
                    item[0].cancel()
        if thread is None:
            return
        self._queue.put(None)
        if wait:
            thread.join()

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._shut_down:
                return
            # A daemon thread, stopped (after the calls queued before it) by an exit hook:
            # at exit, non-daemon threads are joined before such hooks run.
            thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            thread.start()
            self._thread = thread
        atexit.register(self.shutdown)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, call = item
            del item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call())
                except BaseException as exc:
                    future.set_exception(exc)
            del future, call  # nothing of the last call stays alive while the thread waits


#: The store-writer thread: every batch of received revisions, and every other write a
#: session makes, commits here, one at a time.
WRITER = SerialExecutor("fieldsync-store-writer")
