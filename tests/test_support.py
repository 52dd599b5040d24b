"""The shared test helpers do what they say (tests/support)."""

from __future__ import annotations

import time

import pytest
from tests.support.databases import DatabaseFactory
from tests.support.pki import TestPKI, issue
from tests.support.waiting import async_wait_for, wait_for

from fieldsync.tls.client_auth import ListenerCertificateAuthenticator


def test_wait_for_returns_the_first_truthy_value_and_times_out() -> None:
    start = time.monotonic()
    values = iter([0, None, "", 7])
    assert wait_for(lambda: next(values), interval=0.001) == 7
    with pytest.raises(AssertionError, match=r"timed out after 0\.05s waiting for nothing"):
        wait_for(lambda: False, timeout=0.05, interval=0.01, what="nothing")
    assert time.monotonic() - start < 5


async def test_async_wait_for_takes_coroutines() -> None:
    calls = []

    async def probe() -> int:
        calls.append(1)
        return len(calls) if len(calls) >= 3 else 0

    assert await async_wait_for(probe, interval=0.001) == 3
    with pytest.raises(AssertionError):
        await async_wait_for(lambda: 0, timeout=0.02)


def test_pki_chains_verify_and_strangers_do_not(test_pki: TestPKI) -> None:
    auth = ListenerCertificateAuthenticator([test_pki.root.cert])
    good = issue(test_pki.intermediate, "phone")
    assert len(good.certs) == 2  # leaf + intermediate
    assert auth.authenticate(good.certs).ok
    assert not auth.authenticate(issue(test_pki.other_root, "stranger").certs).ok
    assert not auth.authenticate(issue(test_pki.intermediate, "old", expired=True).certs).ok


def test_databases_are_real_and_closed(databases: DatabaseFactory) -> None:
    device = databases("device", doc={"n": 1})
    assert device.default_collection.get_document("doc").body == {"n": 1}  # type: ignore[union-attr]
    databases.close()
    assert device.is_closed
