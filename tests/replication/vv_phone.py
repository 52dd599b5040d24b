"""A scripted Couchbase Lite 4.x phone (version-vector database) for CI tests.

It speaks ``BLIP_3+CBMobile_4`` through the shared raw BLIP client (tests/listener/raw_blip.py)
and keeps its documents the way LiteCore 4.1 does (VV-NOTES §3.3, §5): a vector, or a legacy
revID for a document not saved since the upgrade, plus ``lastLegacyRevID``; a pulled revision is
judged with ``store.versions.compare_with_legacy`` (the LiteCore table, verified on the wire in
VV-NOTES §8 test B), so a wrong ``history`` from the device shows up here as a conflict.

It is a test double for the protocol, not a replicator: one-shot push and pull, the default
collection through ``getCollections`` (as every 4.x phone does), no blobs, no deltas.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid as uuid_module
from dataclasses import dataclass, field
from typing import Any

from tests.listener.raw_blip import CBMOBILE_4, RawClient

from fieldsync.blip import IncomingRequest
from fieldsync.store.versions import (
    HLV,
    Order,
    SourceID,
    Version,
    VersionWithLegacy,
    compare_with_legacy,
    extract_current,
    format_history,
    merge,
    parse_rev_history,
    trivial_merge,
)


@dataclass
class PhoneDoc:
    """One document on the phone. ``legacy``: its legacy revID while ``vector`` is None, else
    its ``lastLegacyRevID`` (or None). ``remote``: how the device named the revision last
    synced. ``conflict``: the device's revision that conflicts with ours, with its body."""

    vector: HLV | None
    legacy: str | None
    body: dict[str, Any]
    deleted: bool = False
    remote: str | None = None
    dirty: bool = False
    conflict: tuple[VersionWithLegacy, dict[str, Any], bool] | None = None

    @property
    def revision(self) -> VersionWithLegacy:
        return VersionWithLegacy(self.vector, (self.legacy,) if self.legacy else ())

    @property
    def name(self) -> str:
        return str(self.vector.cv) if self.vector is not None else str(self.legacy)


@dataclass
class PushReport:
    statuses: dict[str, Any] = field(default_factory=dict)  # doc -> 0 / 304 / {"status":409..}
    rev_errors: dict[str, tuple[str | None, int | None, str]] = field(default_factory=dict)
    noops: set[str] = field(default_factory=set)


@dataclass
class PullReport:
    received: set[str] = field(default_factory=set)  # docs replaced by a newer revision
    conflicts: set[str] = field(default_factory=set)
    ignored: set[str] = field(default_factory=set)  # same or older
    rows: list[list[Any]] = field(default_factory=list)  # every changes row seen
    revs: list[dict[str, str]] = field(default_factory=list)  # every rev's properties


class VVPhone:
    """A 4.x phone with its own source ID (from a UUID, as LiteCore derives it)."""

    def __init__(self, name: str = "phone4") -> None:
        self.name = name
        self.uuid = str(uuid_module.uuid4())
        self.source = SourceID.from_uuid(self.uuid)
        self.docs: dict[str, PhoneDoc] = {}
        self._last_time = 0

    # -- local edits ----------------------------------------------------------------------------

    def _tick(self) -> Version:
        now = time.time_ns() & ~0xFFFF
        self._last_time = max(now, self._last_time + 1)
        return Version(self._last_time, self.source)

    def put(self, doc_id: str, body: dict[str, Any], *, deleted: bool = False) -> Version:
        """Save a new revision (LiteCore: new cv by this phone; a legacy doc keeps its revID as
        lastLegacyRevID)."""
        version = self._tick()
        doc = self.docs.get(doc_id)
        if doc is None:
            self.docs[doc_id] = PhoneDoc(HLV(version), None, body, deleted, dirty=True)
            return version
        if doc.conflict is not None:
            raise AssertionError(f"{doc_id} is in conflict: resolve first")
        doc.vector = doc.vector.with_new_cv(version) if doc.vector else HLV(version)
        doc.body, doc.deleted, doc.dirty = body, deleted, True
        return version

    def adopt_legacy(self, doc_id: str, rev_id: str, body: dict[str, Any]) -> None:
        """Hold ``doc_id`` as a legacy revision, as a phone whose rev-tree database synced
        ``rev_id`` over CBMobile_3 and was then upgraded to version vectors."""
        self.docs[doc_id] = PhoneDoc(None, rev_id, body, remote=rev_id)

    def resolve(self, doc_id: str, *, keep: str, body: dict[str, Any] | None = None) -> None:
        """Resolve a pulled conflict: ``keep='remote'`` takes the device's revision, ``'local'``
        keeps ours (trivial merge), ``'merge'`` saves ``body`` as a merge (CBL-C's rules)."""
        doc = self.docs[doc_id]
        assert doc.conflict is not None, f"{doc_id} has no conflict"
        remote, remote_body, remote_deleted = doc.conflict
        doc.conflict = None
        if keep == "remote":
            if doc.vector is not None and remote.vector is None:
                doc.legacy = remote.legacy[0]
            doc.vector = remote.vector
            if remote.vector is None:
                doc.legacy = remote.legacy[0]
            doc.body, doc.deleted, doc.dirty = remote_body, remote_deleted, False
            return
        assert doc.vector is not None and remote.vector is not None
        if keep == "local":
            doc.vector = trivial_merge(doc.vector, remote.vector)
        else:
            assert body is not None
            doc.vector = merge(doc.vector, remote.vector, self._tick())
            doc.body = body
        doc.dirty = True

    def revision_of(self, doc_id: str) -> str:
        return self.docs[doc_id].name

    # -- sessions -------------------------------------------------------------------------------

    async def _open(self, session: Any) -> None:
        body = {"checkpoint_ids": [f"cp-{self.name}"], "collections": ["_default"]}
        reply = await session.request(
            "getCollections", {"uuid": self.uuid}, json.dumps(body).encode()
        )
        assert not reply.is_error, (reply.error_code, reply.error_message)
        assert json.loads(reply.body) == [{}] or isinstance(json.loads(reply.body)[0], dict)

    async def push(self, listener: Any, database: str = "device") -> PushReport:
        """Push every changed document with proposeChanges + rev, as LiteCore 4.1 does."""
        report = PushReport()
        dirty = [d for d, doc in self.docs.items() if doc.dirty]
        async with RawClient(listener, CBMOBILE_4, database, name=self.name) as session:
            await self._open(session)
            if not dirty:
                return report
            rows = []
            for doc_id in dirty:
                doc = self.docs[doc_id]
                rows.append([doc_id, doc.name, doc.remote or "", len(json.dumps(doc.body))])
            reply = await session.request(
                "proposeChanges",
                {"collection": "0", "conflictIncludesRev": "true"},
                json.dumps(rows).encode(),
            )
            assert not reply.is_error, (reply.error_code, reply.error_message)
            assert "maxHistory" not in reply.properties
            answers = json.loads(reply.body) if reply.body else []
            sends = []
            for position, doc_id in enumerate(dirty):
                answer = answers[position] if position < len(answers) else 0
                report.statuses[doc_id] = answer
                if answer == 0:
                    sends.append(self._send_rev(session, doc_id, position + 1, report))
                elif answer == 304:
                    self.docs[doc_id].dirty = False
            await asyncio.gather(*sends)
        return report

    async def _send_rev(self, session: Any, doc_id: str, seq: int, report: PushReport) -> None:
        doc = self.docs[doc_id]
        properties = {"collection": "0", "id": doc_id, "sequence": str(seq), "noconflicts": "1"}
        if doc.vector is not None:
            properties["rev"] = str(doc.vector.cv)
            history = format_history(doc.vector, (doc.legacy,) if doc.legacy else ())
        else:
            properties["rev"] = str(doc.legacy)
            history = None
        if history:
            properties["history"] = history
        if doc.deleted:
            properties["deleted"] = "1"
        reply = await session.request("rev", properties, json.dumps(doc.body).encode())
        if reply.is_error:
            report.rev_errors[doc_id] = (reply.error_domain, reply.error_code, reply.error_message)
            return
        if reply.properties.get("noop") == "true":
            report.noops.add(doc_id)
        doc.dirty = False
        doc.remote = doc.name

    async def pull(self, listener: Any, database: str = "device") -> PullReport:
        """One-shot pull: subChanges with version-vectors, answer changes, judge each rev."""
        report = PullReport()
        caught_up = asyncio.Event()
        pending: set[str] = set()
        all_in = asyncio.Event()
        all_in.set()

        def on_changes(request: IncomingRequest) -> None:
            rows = request.json()
            if not rows:
                caught_up.set()
                if not request.no_reply:
                    request.respond()
                return
            answers: list[Any] = []
            for row in rows:
                report.rows.append(row)
                doc_id, rev = row[1], row[2]
                doc = self.docs.get(doc_id)
                if doc is None:
                    answers.append([])
                elif _already_have(doc, rev):
                    answers.append(0)
                else:
                    known = [doc.name]
                    if doc.remote and doc.remote != doc.name:
                        known.append(doc.remote)
                    answers.append(known)
                if answers[-1] != 0:
                    pending.add(doc_id)
                    all_in.clear()
            request.respond(
                {"blobs": "true", "sendReplacementRevs": "1"}, json.dumps(answers).encode()
            )

        def on_rev(request: IncomingRequest) -> None:
            properties = dict(request.properties)
            report.revs.append(properties)
            doc_id = properties["id"]
            body = request.json() if request.body else {}
            deleted = properties.get("deleted") in ("1", "true")
            rev, history = properties["rev"], properties.get("history")
            if "@" in rev:
                incoming = parse_rev_history(rev, history)
            else:
                chain = [rev, *(h.strip() for h in (history or "").split(",") if h.strip())]
                incoming = VersionWithLegacy(None, tuple(chain))
            self._receive(doc_id, incoming, body, deleted, report)
            request.respond()
            pending.discard(doc_id)
            if not pending:
                all_in.set()

        async with RawClient(listener, CBMOBILE_4, database, name=self.name) as session:
            session.register("changes", on_changes)
            session.register("rev", on_rev)
            await self._open(session)
            reply = await session.request(
                "subChanges",
                {"collection": "0", "versioning": "version-vectors", "batch": "200"},
            )
            assert not reply.is_error, (reply.error_code, reply.error_message)
            await asyncio.wait_for(caught_up.wait(), 20)
            await asyncio.wait_for(all_in.wait(), 20)
        return report

    def _receive(
        self,
        doc_id: str,
        incoming: VersionWithLegacy,
        body: dict[str, Any],
        deleted: bool,
        report: PullReport,
    ) -> None:
        doc = self.docs.get(doc_id)
        name = str(incoming.current)
        if doc is None:
            vector = incoming.vector
            legacy = incoming.legacy[0] if vector is None else None
            self.docs[doc_id] = PhoneDoc(vector, legacy, body, deleted, remote=name)
            report.received.add(doc_id)
            return
        order = compare_with_legacy(incoming, doc.revision)
        if order is Order.NEWER:
            if incoming.vector is not None and doc.vector is None:
                doc.legacy = doc.legacy  # the legacy revID becomes lastLegacyRevID
            elif incoming.vector is None:
                doc.legacy = incoming.legacy[0]
            doc.vector = incoming.vector
            doc.body, doc.deleted, doc.remote, doc.dirty = body, deleted, name, False
            report.received.add(doc_id)
        elif order is Order.CONFLICT:
            doc.conflict = (incoming, body, deleted)
            doc.remote = name
            report.conflicts.add(doc_id)
        else:
            report.ignored.add(doc_id)


def _already_have(doc: PhoneDoc, rev: str) -> bool:
    """LiteCore's changes check: the announced revision is ours or older than ours."""
    current = extract_current(rev, "rev")
    if isinstance(current, Version):
        return doc.vector is not None and doc.vector.contains(current)
    return doc.vector is None and doc.legacy == current
