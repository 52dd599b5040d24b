"""Keeping a flood of wrong passwords from turning password hashing into a denial of service.

Two parts:

* :class:`FailureBackoff` — pure bookkeeping per client address: a few free failures, then
  each further failure doubles how long that address must wait before it is heard again
  (answered ``429 Too Many Requests`` with ``Retry-After``, without hashing anything). A
  success clears the address. Bounded: at most ``max_tracked`` addresses are remembered.
* :class:`AuthGuard` — runs the slow check (scrypt, tens of milliseconds) off the event loop,
  at most ``max_concurrent`` at a time and one per address (more from the same address get
  429 at once), with a short bounded queue: past it, a request is answered ``503`` with
  ``Retry-After`` at once. So the listener's CPU spent on hashing is
  bounded whatever the number of attackers, and a phone from another address is not stuck
  behind a flood.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["AuthGuard", "Busy", "FailureBackoff", "TooManyFailures"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TooManyFailures:
    """The address failed too often: answer 429 with ``Retry-After: retry_after``."""

    retry_after: int


@dataclass(frozen=True, slots=True)
class Busy:
    """Too many checks waiting: answer 503 with ``Retry-After: retry_after``."""

    retry_after: int


@dataclass(slots=True)
class _Record:
    failures: int = 0
    blocked_until: float = 0.0


class FailureBackoff:
    """Per-address failed-login bookkeeping (pure; the clock is injected)."""

    def __init__(
        self,
        *,
        free_failures: int = 5,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        max_tracked: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_tracked = max_tracked
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def retry_after(self, address: str) -> int | None:
        """Whole seconds ``address`` must still wait, or None if it may try now."""
        record = self._records.get(address)
        if record is None:
            return None
        remaining = record.blocked_until - self._clock()
        return math.ceil(remaining) if remaining > 0 else None

    def failed(self, address: str) -> None:
        """Record one failed authentication from ``address``."""
        record = self._records.pop(address, None) or _Record()
        record.failures += 1
        excess = record.failures - self.free_failures
        if excess > 0:
            delay = min(self.max_delay, self.base_delay * 2 ** min(excess - 1, 30))
            record.blocked_until = self._clock() + delay
        self._records[address] = record  # most recently failed last
        while len(self._records) > self.max_tracked:
            self._records.popitem(last=False)

    def succeeded(self, address: str) -> None:
        """A correct login clears the address's record."""
        self._records.pop(address, None)

    def failures(self, address: str) -> int:
        record = self._records.get(address)
        return record.failures if record else 0


class AuthGuard:
    """Runs authentication checks with bounded concurrency and per-address backoff."""

    def __init__(
        self,
        *,
        max_concurrent: int = 2,
        max_waiting: int = 16,
        max_per_address: int = 1,
        backoff: FailureBackoff | None = None,
    ) -> None:
        self.backoff = backoff if backoff is not None else FailureBackoff()
        self.max_concurrent = max_concurrent
        self.max_waiting = max_waiting
        self.max_per_address = max_per_address
        self._semaphore: asyncio.Semaphore | None = None
        self._waiting = 0
        self._by_address: dict[str, int] = {}

    async def check(
        self, address: str, work: Callable[[], T], succeeded: Callable[[T], bool]
    ) -> T | TooManyFailures | Busy:
        """Run ``work`` (blocking; in a worker thread) for a client at ``address``.

        Returns its result, or :class:`TooManyFailures` / :class:`Busy` without running it.
        ``succeeded(result)`` tells a correct login from a failed one.
        """
        wait = self.backoff.retry_after(address)
        if wait is not None:
            return TooManyFailures(wait)
        if self._by_address.get(address, 0) >= self.max_per_address:
            return TooManyFailures(1)  # one address, one check at a time: no queue hogging
        if self._waiting >= self.max_waiting:
            return Busy(1)
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.max_concurrent)
        self._waiting += 1
        self._by_address[address] = self._by_address.get(address, 0) + 1
        try:
            async with self._semaphore:
                wait = self.backoff.retry_after(address)  # failures while it queued
                if wait is not None:
                    return TooManyFailures(wait)
                result = await asyncio.get_running_loop().run_in_executor(None, work)
        finally:
            self._waiting -= 1
            left = self._by_address.pop(address) - 1
            if left:
                self._by_address[address] = left
        if succeeded(result):
            self.backoff.succeeded(address)
        else:
            self.backoff.failed(address)
        return result
