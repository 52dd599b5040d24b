"""The listener restarts in the middle of a continuous push+pull with LiteCore 3.2 (the phone).

What a phone sees: the stopping listener closes the WebSocket with 1001 (GoingAway). LiteCore
3.2.4 does not count 1001 as transient (``C4Error::mayBeTransient``: POSIX/network resets and
refusals, WebSocket 408/429/502/503/504/1006/4001), so the replicator *stops* with that error,
as it does against Couchbase Lite's own listener, and the app starts it again. While the device
is still down that start is refused (ECONNREFUSED, transient): LiteCore goes offline and
retries on its back-off timer (capped at 1 s here with ``maxRetryInterval``), and reconnects to
the new listener on the same port. Edits made on both sides during the outage must arrive.
Skipped without ``FIELDSYNC_LITECORE_LIB``.
"""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any

import pytest
from tests.interop.fieldsync_side import TIMEOUT, device_docs, phone_docs, url, wait_for
from tests.interop.litecore import POSIX_DOMAIN, WEBSOCKET_DOMAIN, LiteDatabase

listener_mod = pytest.importorskip("fieldsync.listener", reason="fieldsync.listener not importable")
store_mod = pytest.importorskip("fieldsync.store", reason="fieldsync.store not importable")

kC4WillRetry = 0x01
BATCH = 400


def _listener(device_db: Any, port: int) -> Any:
    config = listener_mod.URLEndpointListenerConfiguration(
        database=device_db, port=port, disable_tls=True
    )
    return listener_mod.URLEndpointListener(config)


def _in_sync(device: Any, phone: LiteDatabase) -> bool:
    return device_docs(device) == phone_docs(phone)


async def test_listener_restart_mid_continuous_sync(phone: LiteDatabase, tmp_path: Path) -> None:
    device_db = store_mod.Database.open(tmp_path / "device", create=True)
    device = device_db.default_collection
    first = _listener(device_db, 0)
    await first.start()
    port = first.port
    second = None
    repl = phone.replicator(
        url(first),
        continuous=True,
        max_retries=20,
        extra_options={"maxRetryInterval": 1},
    )
    try:
        repl.start()
        await repl.wait_async("idle", timeout=TIMEOUT)
        phone.put("before", {"v": 0, "side": "phone"})
        device.save_document("before-device", {"v": 0, "side": "device"})
        await wait_for(lambda: _in_sync(device, phone), what="initial sync")

        # A backlog on both sides; stop the listener while it is moving.
        with phone.transaction():
            for i in range(BATCH):
                phone.put(f"p-{i:03}", {"i": i, "pad": "p" * 300})
        with device_db.transaction():
            for i in range(BATCH):
                device.save_document(f"d-{i:03}", {"i": i, "pad": "d" * 300})
        await wait_for(
            lambda: device.get_document("p-010") is not None or phone.get("d-010") is not None,
            what="transfer under way",
        )
        total = 2 * BATCH + 2
        interrupted = len(device_docs(device)) < total or len(phone_docs(phone)) < total
        await first.stop()
        status = await repl.wait_async("stopped", timeout=TIMEOUT)
        assert (status.error.domain, status.error.code) == (WEBSOCKET_DOMAIN, 1001), status
        assert not status.flags & kC4WillRetry, status
        assert interrupted, "the transfer finished before the listener stopped"

        # Outage: edits on both sides, including to documents synced before.
        phone.put("before", {"v": 1, "side": "phone", "during": "outage"})
        phone.put("phone-outage", {"v": 1})
        device.save_document("before-device", {"v": 1, "side": "device", "during": "outage"})
        device.save_document("device-outage", {"v": 1})
        device.delete_document("d-000")
        phone.delete("p-000")

        # The app restarts the replicator; the device is still down, so LiteCore retries.
        repl.start()
        await wait_for(lambda: repl.status.level == "offline", what="LiteCore offline")
        offline = repl.status
        assert (offline.error.domain, offline.error.code) == (POSIX_DOMAIN, errno.ECONNREFUSED)
        assert offline.flags & kC4WillRetry, offline

        second = _listener(device_db, port)
        await second.start()
        assert second.port == port
        await wait_for(lambda: _in_sync(device, phone), what="sync after the restart")
        assert any(s.level == "offline" for s in repl.status_history)
        assert repl.status.level in ("idle", "busy"), repl.status

        expected_ids = (
            {"before", "before-device", "phone-outage", "device-outage"}
            | {f"p-{i:03}" for i in range(1, BATCH)}
            | {f"d-{i:03}" for i in range(1, BATCH)}
        )
        on_device = device_docs(device)
        assert set(on_device) == expected_ids
        assert on_device["before"][1] == {"v": 1, "side": "phone", "during": "outage"}
        assert on_device["before-device"][1] == {"v": 1, "side": "device", "during": "outage"}
        assert device.get_revision("p-000").deleted
        assert phone.get("d-000")["deleted"]
        assert not [d for d in expected_ids if phone.get(d)["conflicted"]]
        assert not [d for d in expected_ids if device.is_conflicted(d)]

        # Still live after the reconnect: a new edit each way.
        phone.put("after", {"v": 2})
        device.save_document("after-device", {"v": 2})
        await wait_for(lambda: _in_sync(device, phone), what="continuous sync after restart")
        repl.stop()
        status = await repl.wait_async("stopped", timeout=TIMEOUT)
        assert not status.error, status
    finally:
        repl.free()
        await first.stop()
        if second is not None:
            await second.stop()
        await asyncio.sleep(0)
        device_db.close()
