"""Issue 11 row 10 against a real LiteCore 3.2.4 phone: a pushed revision naming a blob the
device already holds (but did not send on that connection) is stored only after the phone
answers ``proveAttachment``; LiteCore answers it, so a legitimate push still lands. Skipped
without ``FIELDSYNC_LITECORE_LIB``."""

from __future__ import annotations

import random
from typing import Any

import pytest
from tests.interop.fieldsync_side import device_docs, phone_docs, run, url
from tests.interop.litecore import LiteDatabase, pushed_doc_ids

listener_mod = pytest.importorskip("fieldsync.listener", reason="fieldsync.listener not importable")
store_mod = pytest.importorskip("fieldsync.store", reason="fieldsync.store not importable")


async def test_phone_proves_a_blob_the_device_already_holds(
    listener: Any, device_db: Any, phone: LiteDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fieldsync.replication import puller

    proofs: list[str] = []
    real = puller.Puller._prove_blob

    async def counted(self: Any, digest: str, doc_id: str, index: int | None) -> None:
        await real(self, digest, doc_id, index)
        proofs.append(doc_id)

    monkeypatch.setattr(puller.Puller, "_prove_blob", counted)
    data = random.Random(3).randbytes(300_000)
    digest = device_db.blobs.put(data)
    blob = {"@type": "blob", "digest": digest, "length": len(data)}
    device_db.default_collection.save_document("x", {"photo": blob})
    with phone.replicator(url(listener), push=False) as repl:  # the phone gets x and its blob
        assert not (await run(repl)).error
    phone_blob = phone.put_blob(data, "application/octet-stream")
    assert phone_blob["digest"] == digest
    phone.put("y", {"copy": phone_blob})
    with phone.replicator(url(listener), pull=False) as repl:  # a new connection
        status = await run(repl)
        assert not status.error, status
        assert pushed_doc_ids(repl.documents_ended) == {"y"}
    assert proofs == ["y"]
    assert device_db.default_collection.get_document("y") is not None
    assert device_docs(device_db.default_collection) == phone_docs(phone)
