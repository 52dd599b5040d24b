"""The harness with LiteCore 4.1: version-vector databases, the tools, two LiteCores at once.

Needs ``FIELDSYNC_LITECORE41_LIB`` (and, for the tool tests, ``cblpeer``/``cblpassive`` built
next to it). Most of these involve no fieldsync code, so a failure here is a harness or library
problem. The last tests put a 4.1 phone in front of fieldsync's listener: a rev-tree 4.1 phone
syncs today; a version-vector 4.1 phone is refused (HTTP 406) until fieldsync's listener offers
``BLIP_3+CBMobile_4`` and then must sync: that expectation follows the listener's own
subprotocol list, so it flips by itself when version-vector support lands.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.interop.litecore import (
    WEBSOCKET_DOMAIN,
    CblTools,
    LiteCore,
    LiteDatabase,
    pulled_doc_ids,
    pushed_doc_ids,
)

CBMOBILE_4 = "BLIP_3+CBMobile_4"
CBMOBILE_3 = "BLIP_3+CBMobile_3"
TIMEOUT = 60.0


def _is_version(rev: str) -> bool:
    """A version-vector version, ``<hex time>@<source>`` (LiteCore's local form uses ``*``)."""
    time_part, at, source = rev.partition("@")
    return bool(at and source) and all(c in "0123456789abcdef" for c in time_part)


def test_41_reports_its_version(litecore41: LiteCore) -> None:
    assert litecore41.version.startswith("4.1"), litecore41.version
    assert litecore41.major == 4
    assert litecore41.supports_version_vectors


def test_32_refuses_a_version_vector_database(litecore32: LiteCore, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"4\.x"):
        litecore32.open_db(tmp_path, "vv", version_vectors=True)


def test_vv_database_names_revisions_by_version(phone41_vv: LiteDatabase) -> None:
    assert phone41_vv.version_vectors
    rev1 = phone41_vv.put("doc1", {"n": 1})
    assert _is_version(rev1) and rev1.endswith("@*"), rev1
    doc = phone41_vv.get("doc1")
    assert doc is not None and doc["revID"] == rev1 and doc["body"] == {"n": 1}
    # The global form names this database's real source ID (what a peer sees).
    source = doc["globalRevID"].partition("@")[2]
    assert _is_version(doc["globalRevID"]) and source not in ("", "*"), doc
    rev2 = phone41_vv.put("doc1", {"n": 2})
    assert _is_version(rev2) and int(rev2.split("@")[0], 16) > int(rev1.split("@")[0], 16)
    tomb = phone41_vv.delete("doc1")
    assert _is_version(tomb)
    doc = phone41_vv.get("doc1")
    assert doc is not None and doc["deleted"]
    assert phone41_vv.all_docs() == {}


def test_41_revtree_database_keeps_tree_revids(phone41: LiteDatabase) -> None:
    assert not phone41.version_vectors
    assert phone41.put("doc1", {"n": 1}).startswith("1-")


def test_any_phone_kinds(any_phone: LiteDatabase) -> None:
    """The parametrised phone: 3.2 and 4.1 rev trees name revisions 1-…, a VV db by version."""
    rev = any_phone.put("d", {"k": 1})
    if any_phone.version_vectors:
        assert any_phone.lc.major == 4 and _is_version(rev), rev
    else:
        assert rev.startswith("1-"), rev
    assert any_phone.all_docs() == {"d": {"k": 1}}


def _seed(db: LiteDatabase, count: int, prefix: str = "doc-") -> dict[str, dict[str, Any]]:
    bodies = {f"{prefix}{i:03}": {"n": i, "text": "x" * 100} for i in range(count)}
    with db.transaction():
        for doc_id, body in bodies.items():
            db.put(doc_id, body)
    return bodies


def test_vv_phone_pushes_to_cblpassive_vv(
    litecore41: LiteCore, phone41_vv: LiteDatabase, cbl41: CblTools, tmp_path: Path
) -> None:
    bodies = _seed(phone41_vv, 20)
    blob = phone41_vv.put_blob(b"\x89PNG" + bytes(range(256)) * 8, "image/png")
    phone41_vv.put("with-blob", {"photo": blob})
    bodies["with-blob"] = {"photo": blob}
    with cbl41.passive(tmp_path / "passive", vv=True) as passive:
        with phone41_vv.replicator(passive.url, push=True, pull=False) as repl:
            repl.start()
            status = repl.wait("stopped", timeout=TIMEOUT)
            pushed = pushed_doc_ids(repl.documents_ended)
        assert not status.error, status
        assert pushed == set(bodies)
        (conn,) = passive.wait_connections(1)
    assert conn["protocol"] == CBMOBILE_4, conn
    assert conn["status"] == "ok" and conn["docs_received"] == len(bodies), conn
    # LiteCore's passive side stored them: same bodies, same versions, the blob too.
    received = litecore41.open_db(tmp_path / "passive", "db", version_vectors=True)
    try:
        assert received.all_docs() == bodies
        for doc_id in bodies:
            theirs, ours = received.get(doc_id), phone41_vv.get(doc_id)
            assert theirs is not None and ours is not None
            assert theirs["globalRevID"] == ours["globalRevID"], doc_id
        assert received.get_blob(blob) == phone41_vv.get_blob(blob)
    finally:
        received.close()


def test_vv_phone_pulls_from_cblpassive_vv(
    phone41_vv: LiteDatabase, cbl41: CblTools, tmp_path: Path
) -> None:
    seeded = cbl41.peer(tmp_path / "passive", "info", name="db", vv=True, options=["--gen", "15"])
    assert seeded.returncode == 0, seeded
    with cbl41.passive(tmp_path / "passive", vv=True) as passive:
        with phone41_vv.replicator(passive.url, push=False, pull=True) as repl:
            repl.start()
            status = repl.wait("stopped", timeout=TIMEOUT)
            pulled = pulled_doc_ids(repl.documents_ended)
        assert not status.error, status
    assert len(pulled) == 15 and phone41_vv.count() == 15
    dump = cbl41.peer(tmp_path / "passive", "dump", name="db", vv=True)
    revs = {line["id"]: line["rev"] for line in dump.lines if "id" in line}
    assert len(revs) == 15
    for doc_id in pulled:
        doc = phone41_vv.get(doc_id)
        assert doc is not None and _is_version(doc["revID"])
        # The pulled version is the passive side's (whose local form is "@*" there).
        assert doc["revID"].split("@")[0] == revs[doc_id].split("@")[0], (doc, revs[doc_id])


def _sync(db: LiteDatabase, url: str, *, push: bool = True, pull: bool = True) -> list[Any]:
    with db.replicator(url, push=push, pull=pull) as repl:
        repl.start()
        status = repl.wait("stopped", timeout=TIMEOUT)
        ended = repl.documents_ended
    assert not status.error, status
    return ended


def test_vv_conflict_shows_both_leaves_and_resolves(
    litecore41: LiteCore, phone41_vv: LiteDatabase, cbl41: CblTools, tmp_path: Path
) -> None:
    """A VV conflict through LiteCore's passive peer: leaf_revisions/resolve_conflict work."""
    other = litecore41.open_db(tmp_path / "other", "other", version_vectors=True)
    try:
        phone41_vv.put("c", {"v": 1})
        with cbl41.passive(tmp_path / "passive", vv=True) as passive:
            _sync(phone41_vv, passive.url, pull=False)
            _sync(other, passive.url, push=False)
            other.put("c", {"v": "other"})
            _sync(other, passive.url, pull=False)
            phone41_vv.put("c", {"v": "phone"})
            ended = _sync(phone41_vv, passive.url, push=False)
            # LiteCore reports the pulled revision as a (transient) conflict, and keeps both.
            assert [(d.doc_id, d.error.code) for d in ended] == [("c", 8)], ended
            doc = phone41_vv.get("c")
            assert doc is not None and doc["conflicted"] and doc["body"] == {"v": "phone"}
            mine, theirs = phone41_vv.leaf_revisions("c")
            assert mine["body"] == {"v": "phone"} and mine["revID"].endswith("@*")
            assert theirs["conflict"] and theirs["body"] == {"v": "other"}
            merged = phone41_vv.resolve_conflict("c", theirs["revID"], mine["revID"], {"v": "m"})
            doc = phone41_vv.get("c")
            assert doc is not None and not doc["conflicted"] and doc["revID"] == merged
            # The merge's vector names both parents (LiteCore's ";" ends the merge part).
            assert theirs["revID"] in doc["globalRevID"] and doc["history"][-1].endswith(";")
            _sync(phone41_vv, passive.url, pull=False)
            _sync(other, passive.url, push=False)
        assert other.get("c")["body"] == {"v": "m"}  # type: ignore[index]
    finally:
        other.close()


def test_vv_continuous_push_in_a_named_collection(
    phone41_vv: LiteDatabase, cbl41: CblTools, tmp_path: Path
) -> None:
    """Continuous mode and a named collection on a VV phone (4.x always uses getCollections)."""
    phone41_vv.create_collection("inventory.items")
    phone41_vv.put("i1", {"v": 1}, collection="inventory.items")
    with cbl41.passive(tmp_path / "passive", vv=True, collections=["inventory.items"]) as passive:
        repl = phone41_vv.replicator(
            passive.url, pull=False, continuous=True, collections=["inventory.items"]
        )
        with repl:
            repl.start()
            assert not repl.wait("idle", timeout=TIMEOUT).error
            phone41_vv.put("i2", {"v": 2}, collection="inventory.items")  # a live change
            deadline = time.monotonic() + TIMEOUT
            while len(pushed_doc_ids(repl.documents_ended)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            ended = repl.documents_ended
        assert pushed_doc_ids(ended) == {"i1", "i2"}
        assert {d.collection for d in ended} == {"inventory.items"}
        (conn,) = passive.wait_connections(1)
    assert conn["protocol"] == CBMOBILE_4 and conn["docs_received"] == 2, conn


def test_cblpeer_41_vv_pushes_to_cblpassive_vv(cbl41: CblTools, tmp_path: Path) -> None:
    """The tools alone (a 4.1 phone as a subprocess): what the bench and mixed-fleet tests use."""
    with cbl41.passive(tmp_path / "passive", vv=True) as passive:
        run = cbl41.peer(
            tmp_path / "phone", "push", url=passive.url, vv=True, options=["--gen", "30"]
        )
        assert run.returncode == 0, run
        assert run.result["status"] == "ok" and run.result["docs_pushed"] == 30, run.result
        (conn,) = passive.wait_connections(1)
        assert conn["protocol"] == CBMOBILE_4 and conn["docs_received"] == 30, conn
    assert passive.stop()["db_closed"] is True


def test_two_litecores_in_one_process(
    litecore32: LiteCore,
    litecore41: LiteCore,
    phone32: LiteDatabase,
    phone41_vv: LiteDatabase,
    cbl32: CblTools,
    cbl41: CblTools,
    tmp_path: Path,
) -> None:
    """3.2 and 4.1 loaded side by side (RTLD_LOCAL): each replicates with its own protocol."""
    assert litecore32.lib is not litecore41.lib
    assert litecore32.version.startswith("3.2") and litecore41.version.startswith("4.1")
    _seed(phone32, 10, "a-")
    _seed(phone41_vv, 10, "b-")
    with (
        cbl32.passive(tmp_path / "p32") as p32,
        cbl41.passive(tmp_path / "p41", vv=True) as p41,
        phone32.replicator(p32.url, push=True, pull=False) as r32,
        phone41_vv.replicator(p41.url, push=True, pull=False) as r41,
    ):
        r32.start()
        r41.start()  # both run at once, on their own LiteCore threads
        s32, s41 = r32.wait("stopped", TIMEOUT), r41.wait("stopped", TIMEOUT)
        assert not s32.error and not s41.error, (s32, s41)
        assert len(pushed_doc_ids(r32.documents_ended)) == 10
        assert len(pushed_doc_ids(r41.documents_ended)) == 10
        (c32,) = p32.wait_connections(1)
        (c41,) = p41.wait_connections(1)
    assert c32["protocol"] == CBMOBILE_3 and c32["docs_received"] == 10, c32
    assert c41["protocol"] == CBMOBILE_4 and c41["docs_received"] == 10, c41
    assert c32["user_agent"].startswith("couchbase-lite-core/3.2"), c32
    assert c41["user_agent"].startswith("couchbase-lite-core/4.1"), c41


# -- a 4.1 phone in front of fieldsync's listener ------------------------------------------------


def _listener_speaks_v4() -> bool:
    """Whether fieldsync's listener offers CBMobile_4 (i.e. version-vector support landed)."""
    messages = pytest.importorskip("fieldsync.replication.messages")
    offered = getattr(messages, "LISTENER_SUBPROTOCOLS", messages.SUPPORTED_SUBPROTOCOLS)
    return CBMOBILE_4 in offered


@pytest.fixture
def device_db(tmp_path: Path) -> Iterator[Any]:
    store = pytest.importorskip("fieldsync.store", reason="fieldsync.store not importable")
    db = store.Database.open(tmp_path / "device", create=True)
    yield db
    db.close()


@pytest.fixture
async def listener(device_db: Any) -> AsyncIterator[Any]:
    mod = pytest.importorskip("fieldsync.listener", reason="fieldsync.listener not importable")
    config = mod.URLEndpointListenerConfiguration(database=device_db, port=0, disable_tls=True)
    server = mod.URLEndpointListener(config)
    await server.start()
    yield server
    await server.stop()


def _device_ids(device_db: Any) -> set[str]:
    coll = device_db.default_collection
    return {c.doc_id for c in coll.changes_since(0) if coll.get_document(c.doc_id) is not None}


async def test_41_revtree_phone_syncs_with_fieldsync(
    phone41: LiteDatabase, listener: Any, device_db: Any
) -> None:
    """A 4.1 app on a rev-tree database offers CBMobile_3 for push+pull: fieldsync serves it."""
    _seed(phone41, 5)
    with phone41.replicator(f"ws://127.0.0.1:{listener.port}/device") as repl:
        repl.start()
        status = await repl.wait_async("stopped", timeout=TIMEOUT)
        pushed = pushed_doc_ids(repl.documents_ended)
    assert not status.error, status
    assert pushed == {f"doc-{i:03}" for i in range(5)}
    assert _device_ids(device_db) == pushed


async def test_41_vv_phone_against_fieldsync(
    phone41_vv: LiteDatabase, listener: Any, device_db: Any
) -> None:
    """A Couchbase Lite 4.x phone (VV database, offers only CBMobile_4).

    Until fieldsync's listener lists CBMobile_4 it must refuse the upgrade with HTTP 406 and
    store nothing; once it does, the same push must succeed and land every document. The
    expectation is read from the listener's subprotocol list, not hard-coded.
    """
    speaks_v4 = _listener_speaks_v4()
    bodies = _seed(phone41_vv, 5)
    with phone41_vv.replicator(f"ws://127.0.0.1:{listener.port}/device", pull=False) as repl:
        repl.start()
        status = await repl.wait_async("stopped", timeout=TIMEOUT)
        pushed = pushed_doc_ids(repl.documents_ended)
    await asyncio.sleep(0)
    if speaks_v4:
        assert not status.error, status
        assert pushed == set(bodies)
        assert _device_ids(device_db) == set(bodies)
        for doc_id, body in bodies.items():
            assert device_db.default_collection.get_document(doc_id).body == body
    else:
        assert (status.error.domain, status.error.code) == (WEBSOCKET_DOMAIN, 406), (
            "fieldsync does not list CBMobile_4, so a VV-only phone must get HTTP 406: "
            f"{json.dumps(status.error.__dict__)}"
        )
        assert pushed == set()
        assert _device_ids(device_db) == set()
