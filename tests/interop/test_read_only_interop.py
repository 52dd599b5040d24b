"""A read-only listener (``read_only=True``) with LiteCore 3.2 (the phone): pushes are refused,
pulls work. Skipped without ``FIELDSYNC_LITECORE_LIB``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.interop.fieldsync_side import (
    TIMEOUT,
    device_docs,
    log_size,
    logged_messages,
    phone_docs,
    run,
    url,
    wait_for,
)
from tests.interop.litecore import WEBSOCKET_DOMAIN, LiteDatabase, pulled_doc_ids

listener_mod = pytest.importorskip("fieldsync.listener", reason="fieldsync.listener not importable")
store_mod = pytest.importorskip("fieldsync.store", reason="fieldsync.store not importable")


@pytest.fixture
def device_db(tmp_path: Path) -> Iterator[Any]:
    db = store_mod.Database.open(tmp_path / "device", create=True)
    with db.transaction():
        for i in range(20):
            db.default_collection.save_document(f"reading-{i:02}", {"t": 20 + i / 10})
    yield db
    db.close()


@pytest.fixture
async def listener(device_db: Any) -> AsyncIterator[Any]:
    config = listener_mod.URLEndpointListenerConfiguration(
        database=device_db, port=0, disable_tls=True, read_only=True
    )
    server = listener_mod.URLEndpointListener(config)
    await server.start()
    yield server
    await server.stop()


async def test_push_refused_pull_works(
    listener: Any, device_db: Any, phone: LiteDatabase, litecore_log: Path | None
) -> None:
    device = device_db.default_collection
    before = device_docs(device)
    phone.put("from-phone", {"v": 1})
    start = log_size(litecore_log)
    with phone.replicator(url(listener), pull=False) as repl:
        status = await run(repl)
        pushed = [d for d in repl.documents_ended if d.pushing and not d.error]
    # LiteCore stops on the 403 answer to proposeChanges (and closes with 4002).
    assert (status.error.domain, status.error.code) == (WEBSOCKET_DOMAIN, 403), status
    assert "pull-only" in status.error.message, status
    assert pushed == []
    assert device.get_document("from-phone") is None
    assert device_docs(device) == before
    if litecore_log is not None:
        errors = [
            m.properties
            for m in logged_messages(litecore_log, start)
            if m.kind == "ERR" and m.direction == "RECEIVED"
        ]
        assert {"Error-Domain": "HTTP", "Error-Code": "403"} in errors, errors

    with phone.replicator(url(listener), push=False) as repl:
        status = await run(repl)
        assert not status.error, status
        assert pulled_doc_ids(repl.documents_ended) == set(before)
    assert {k: v for k, v in phone_docs(phone).items() if k != "from-phone"} == before


async def test_continuous_pull_from_read_only_listener(
    listener: Any, device_db: Any, phone: LiteDatabase
) -> None:
    device = device_db.default_collection
    with phone.replicator(url(listener), push=False, continuous=True) as repl:
        repl.start()
        await repl.wait_async("idle", timeout=TIMEOUT)
        await wait_for(lambda: len(phone_docs(phone)) == 20, what="initial pull")
        device.save_document("reading-new", {"t": 99.5})
        device.save_document("reading-00", {"t": -1.0})
        await wait_for(
            lambda: (
                phone.get("reading-new") is not None
                and phone.get("reading-00")["body"] == {"t": -1.0}
            ),
            what="live changes pulled",
        )
        repl.stop()
        status = await repl.wait_async("stopped", timeout=TIMEOUT)
        assert not status.error, status
    assert phone_docs(phone) == device_docs(device)
