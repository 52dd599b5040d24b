"""Waiting for a condition, always with a timeout (a test that hangs tells nothing)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["async_wait_for", "wait_for"]

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> T:
    """Call ``probe`` until it returns something truthy and return that; ``AssertionError``
    naming ``what`` (and the last value) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    value = probe()
    while not value:
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(timeout, what or repr(probe), value))
        time.sleep(interval)
        value = probe()
    return value


async def async_wait_for(
    probe: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = 20.0,
    interval: float = 0.01,
    what: str = "",
) -> T:
    """``wait_for`` on the event loop: ``probe`` may be a plain function or a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(timeout, what or repr(probe), value))
        await asyncio.sleep(interval)


def _timed_out(timeout: float, what: str, value: object) -> str:
    return f"timed out after {timeout:g}s waiting for {what}: {value!r}"
