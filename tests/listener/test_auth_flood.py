"""Issue 11, row 3: a flood of wrong passwords is answered 429 + Retry-After without hashing,
hashing is bounded, and a correct login from another address still gets in during the flood."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from fieldsync.listener import URLEndpointListener, URLEndpointListenerConfiguration
from fieldsync.listener.auth import ListenerPasswordAuthenticator, hash_password, verify_password
from fieldsync.store import Database

SUBPROTOCOL = "BLIP_3+CBMobile_3"


class CountingHashes:
    """Real scrypt checks, counted, with the most that ran at the same time."""

    def __init__(self) -> None:
        self.stored = hash_password("right")
        self.calls = 0
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def __call__(self, user: str, password: str) -> bool:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            return user == "ranger" and verify_password(self.stored, password)
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[tuple[URLEndpointListener, CountingHashes]]:
    db = Database.open(tmp_path / "db")
    hashes = CountingHashes()
    listener = URLEndpointListener(
        URLEndpointListenerConfiguration(
            database=db,
            port=0,
            disable_tls=True,
            network_interface="127.0.0.1",
            authenticator=ListenerPasswordAuthenticator(hashes),
        )
    )
    await listener.start()
    yield listener, hashes
    await listener.stop()
    db.close()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def attempt(listener: URLEndpointListener, password: str, source: str) -> tuple[int, str]:
    """(HTTP status, Retry-After) of one upgrade attempt from local address ``source``."""
    try:
        ws = await connect(
            f"ws://127.0.0.1:{listener.port}/db/_blipsync",
            subprotocols=[SUBPROTOCOL],
            additional_headers=basic("ranger", password),
            local_addr=(source, 0),
            open_timeout=60,
        )
    except InvalidStatus as refused:
        response = refused.response
        return response.status_code, response.headers.get("Retry-After", "")
    await ws.close()
    return 101, ""


async def test_wrong_password_flood_gets_429_and_a_phone_still_connects(guarded) -> None:
    listener, hashes = guarded
    flood = [asyncio.ensure_future(attempt(listener, f"wrong-{i}", "127.0.0.1")) for i in range(60)]
    await asyncio.sleep(0.05)
    # A phone at another address logs in while the flood is being answered:
    phone = await attempt(listener, "right", "127.0.0.2")
    results = await asyncio.gather(*flood)
    assert phone == (101, "")
    statuses = [status for status, _ in results]
    assert set(statuses) <= {401, 429, 503}
    assert statuses.count(429) >= 40, statuses
    assert all(int(after) >= 1 for status, after in results if status in (429, 503))
    # Hashing is bounded: a handful of free failures (plus what was queued at once), not 60.
    assert hashes.calls <= 5 + 1 + 1, hashes.calls
    assert hashes.most_at_once <= 2
    # One by one, wrong passwords soon lock the address out; then even the right password
    # is refused without any hashing until its Retry-After has passed.
    for _ in range(8):
        status, after = await attempt(listener, "wrong", "127.0.0.1")
        if status == 429:
            break
    assert status == 429 and int(after) >= 1
    before = hashes.calls
    assert (await attempt(listener, "right", "127.0.0.1"))[0] == 429
    assert hashes.calls == before


def test_backoff_doubles_and_a_success_clears() -> None:
    from fieldsync.listener.authguard import FailureBackoff

    now = [100.0]
    backoff = FailureBackoff(free_failures=2, base_delay=1, max_delay=8, clock=lambda: now[0])
    for _ in range(2):
        backoff.failed("a")
        assert backoff.retry_after("a") is None
    waits = []
    for _ in range(5):
        backoff.failed("a")
        waits.append(backoff.retry_after("a"))
    assert waits == [1, 2, 4, 8, 8]
    assert backoff.retry_after("b") is None
    now[0] += 8.5
    assert backoff.retry_after("a") is None
    backoff.succeeded("a")
    assert backoff.failures("a") == 0


def test_backoff_remembers_a_bounded_number_of_addresses() -> None:
    from fieldsync.listener.authguard import FailureBackoff

    backoff = FailureBackoff(free_failures=0, max_tracked=100)
    for i in range(1000):
        backoff.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(backoff._records) == 100
    assert backoff.retry_after("10.0.3.231") is not None  # the most recent are kept
