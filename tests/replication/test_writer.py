"""The store-writer executor: one thread, submission order, results and failures, shutdown."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import CancelledError
from pathlib import Path

import pytest

from fieldsync.replication.writer import SerialExecutor


def test_calls_run_in_submission_order_on_one_named_thread() -> None:
    executor = SerialExecutor("test-writer")
    seen: list[tuple[int, str]] = []
    futures = [
        executor.submit(lambda n: seen.append((n, threading.current_thread().name)) or n, n)
        for n in range(200)
    ]
    assert [f.result(timeout=10) for f in futures] == list(range(200))
    assert seen == [(n, "test-writer") for n in range(200)]
    executor.shutdown()


def test_a_failure_goes_to_its_future_and_the_thread_goes_on() -> None:
    executor = SerialExecutor("test-writer")

    def fail() -> None:
        raise ValueError("disk on fire")

    failed = executor.submit(fail)
    after = executor.submit(lambda: "still running")
    with pytest.raises(ValueError, match="disk on fire"):
        failed.result(timeout=10)
    assert after.result(timeout=10) == "still running"
    executor.shutdown()


def test_a_call_cancelled_before_it_starts_never_runs() -> None:
    executor = SerialExecutor("test-writer")
    gate = threading.Event()
    ran: list[str] = []
    blocker = executor.submit(gate.wait, 10)
    cancelled = executor.submit(ran.append, "cancelled")
    assert cancelled.cancel()
    gate.set()
    assert blocker.result(timeout=10)
    executor.submit(ran.append, "next").result(timeout=10)
    assert ran == ["next"]
    with pytest.raises(CancelledError):
        cancelled.result()
    executor.shutdown()


async def test_run_in_executor_answers_on_the_loop() -> None:
    executor = SerialExecutor("test-writer")
    loop = asyncio.get_running_loop()
    name = await loop.run_in_executor(executor, lambda: threading.current_thread().name)
    assert name == "test-writer"
    executor.shutdown()


def test_shutdown_runs_what_is_queued_then_refuses_more() -> None:
    executor = SerialExecutor("test-writer")
    done: list[int] = []
    for n in range(5):
        executor.submit(lambda n: (time.sleep(0.01), done.append(n)), n)
    executor.shutdown(wait=True)
    assert done == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(done.append, 5)


def test_shutdown_can_cancel_what_is_queued() -> None:
    executor = SerialExecutor("test-writer")
    gate = threading.Event()
    executor.submit(gate.wait, 10)
    queued = [executor.submit(time.sleep, 0) for _ in range(3)]
    gate.set()
    executor.shutdown(wait=True, cancel_futures=True)
    assert all(f.done() for f in queued)


def test_an_unused_executor_starts_no_thread() -> None:
    before = threading.active_count()
    SerialExecutor("test-writer").shutdown()
    assert threading.active_count() == before


def test_calls_queued_at_interpreter_exit_still_run(tmp_path: Path) -> None:
    """As with ThreadPoolExecutor: a write queued just before the program ends is done."""
    out = tmp_path / "written"
    program = textwrap.dedent(
        f"""
        import time
        from fieldsync.replication.writer import SerialExecutor
        executor = SerialExecutor("exit-writer")
        executor.submit(time.sleep, 0.3)
        executor.submit(open({str(out)!r}, "w").write, "durable")
        """
    )
    subprocess.run([sys.executable, "-c", program], check=True, timeout=60)
    assert out.read_text() == "durable"
