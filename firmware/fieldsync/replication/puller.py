"""Receiving revisions from the peer: answering ``changes``/``proposeChanges``, inserting ``rev``.

The passive side uses a Puller when the phone pushes; the active replicator uses one to pull.
A ``rev`` is answered only after the revision and every blob it references are durably stored:
missing blobs are fetched with ``getAttachment`` first, then the revision joins a batched
transaction (see ``Inserter``).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fieldsync.blip import BLIPSession, IncomingRequest
from fieldsync.replication import decisions
from fieldsync.replication.deltas import (
    DELTA_ERROR_DOMAIN,
    DELTA_ERROR_STATUS,
    apply_received_delta,
)
from fieldsync.replication.errors import BlobFetchError, DeltaApplyError
from fieldsync.replication.inserter import Inserter
from fieldsync.replication.messages import (
    DEFAULT_MAX_HISTORY,
    GET_ATTACHMENT,
    encode_json,
    is_true,
    parse_history,
    with_collection,
)
from fieldsync.replication.ports import ReplicatedCollection, ReplicatedDatabase
from fieldsync.replication.stats import ReplicationStats
from fieldsync.store import IncomingRevision, InvalidInput, StoreError, find_blobs
from fieldsync.store.revid import is_valid as is_valid_rev_id

log = logging.getLogger(__name__)

#: Called when an announced revision is finished: (collection index, sequence). Sequences
#: are opaque JSON values (a Sync Gateway's may be strings).
SequenceDone = Callable[[int | None, Any], None]
#: Called after a received revision is stored: (collection index, docID, revID).
RevisionStored = Callable[[int | None, str, str], None]


@dataclass(frozen=True)
class PullerHooks:
    """What the active replicator wants to hear about (the passive side needs none)."""

    sequence_done: SequenceDone | None = None
    caught_up: Callable[[int | None], None] | None = None
    stored: RevisionStored | None = None


class Puller:
    """Handles the incoming half of replication for one connection."""

    def __init__(
        self,
        session: BLIPSession,
        database: ReplicatedDatabase,
        *,
        stats: ReplicationStats,
        inserter: Inserter,
        accept_deltas: bool = False,
        max_history: int = DEFAULT_MAX_HISTORY,
        hooks: PullerHooks | None = None,
    ) -> None:
        hooks = hooks or PullerHooks()
        self._session = session
        self._database = database
        self._stats = stats
        self._inserter = inserter
        self._accept_deltas = accept_deltas
        self._max_history = max_history
        self._on_sequence_done = hooks.sequence_done
        self._on_caught_up = hooks.caught_up
        self._on_stored = hooks.stored
        self._announced_deltas = False
        self._blob_fetches: dict[str, asyncio.Future[None]] = {}

    def _reply_properties(self) -> dict[str, str]:
        properties = {"maxHistory": str(self._max_history), "blobs": "true"}
        if self._accept_deltas and not self._announced_deltas:
            properties["deltas"] = "true"
            self._announced_deltas = True
        return properties

    # -- change lists -------------------------------------------------------------------------

    def handle_proposed_changes(
        self, request: IncomingRequest, collection: ReplicatedCollection
    ) -> None:
        try:
            changes = decisions.parse_proposed_changes(request.json())
        except ValueError as exc:
            request.respond_error("BLIP", 400, str(exc))
            return
        if not changes:
            self._caught_up(request, None)
            return
        try:
            answers = decisions.answer_proposed_changes(
                collection,
                changes,
                conflict_includes_rev=is_true(request.properties.get("conflictIncludesRev")),
            )
        except InvalidInput as exc:
            request.respond_error("BLIP", 400, str(exc))
            return
        self._stats.pushing = True
        request.respond(self._reply_properties(), encode_json(answers), compressed=True)

    def handle_changes(
        self, request: IncomingRequest, collection: ReplicatedCollection, index: int | None
    ) -> list[decisions.AnnouncedChange]:
        """Answer a ``changes`` list; returns the changes asked for."""
        try:
            changes = decisions.parse_changes(request.json())
        except ValueError as exc:
            request.respond_error("BLIP", 400, str(exc))
            return []
        if not changes:
            self._caught_up(request, index)
            return []
        if request.no_reply:
            log.warning("ignoring a pointless NoReply 'changes' list from %s", self._session.name)
            return []
        try:
            answers, wanted = decisions.answer_changes(
                collection, changes, require_bodies=self._accept_deltas
            )
        except InvalidInput as exc:
            request.respond_error("BLIP", 400, str(exc))
            return []
        wanted_changes = [changes[i] for i in wanted]
        if self._on_sequence_done is not None:
            for position, change in enumerate(changes):
                if position not in wanted:
                    self._on_sequence_done(index, change.sequence)
        request.respond(self._reply_properties(), encode_json(answers), compressed=True)
        return wanted_changes

    def _caught_up(self, request: IncomingRequest, index: int | None) -> None:
        if not request.no_reply:
            request.respond()
        if self._on_caught_up is not None:
            self._on_caught_up(index)

    # -- revisions ----------------------------------------------------------------------------

    def handle_norev(self, request: IncomingRequest, index: int | None) -> None:
        properties = request.properties
        log.info(
            "%s: peer cannot send '%s' %s: %s %s",
            self._session.name,
            properties.get("id"),
            properties.get("rev"),
            properties.get("error"),
            properties.get("reason", ""),
        )
        self._sequence_done(index, properties.get("sequence"))
        if not request.no_reply:
            request.respond()

    def _sequence_done(self, index: int | None, raw_sequence: str | None) -> None:
        if self._on_sequence_done is None or raw_sequence is None:
            return
        try:
            sequence = json.loads(raw_sequence)
        except ValueError:
            sequence = raw_sequence
        self._on_sequence_done(index, sequence)

    async def handle_rev(
        self, request: IncomingRequest, collection: ReplicatedCollection, index: int | None
    ) -> None:
        properties = request.properties
        doc_id = properties.get("id", "")
        rev_id = properties.get("rev", "")
        if not doc_id or not is_valid_rev_id(rev_id):
            request.respond_error("HTTP", 400, f"invalid docID/revID {doc_id!r} {rev_id!r}")
            self._stats.record_error(f"invalid rev {doc_id!r} {rev_id!r}")
            return
        self._stats.in_flight += 1
        try:
            await self._insert_rev(request, collection, index, doc_id, rev_id)
        finally:
            self._stats.in_flight -= 1
            self._sequence_done(index, properties.get("sequence"))

    async def _insert_rev(
        self,
        request: IncomingRequest,
        collection: ReplicatedCollection,
        index: int | None,
        doc_id: str,
        rev_id: str,
    ) -> None:
        properties = request.properties
        body = request.body or b"{}"
        delta_source = properties.get("deltaSrc")
        if delta_source:
            if not self._accept_deltas:
                request.respond_error("HTTP", 400, "delta sync is not enabled on this peer")
                return
            try:
                body = apply_received_delta(collection, doc_id, delta_source, body)
            except DeltaApplyError as exc:
                log.info("%s: %s; asking for the full body", self._session.name, exc.message)
                request.respond_error(DELTA_ERROR_DOMAIN, DELTA_ERROR_STATUS, exc.message)
                return
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            request.respond_error("HTTP", 400, f"body of '{doc_id}' {rev_id} is not a JSON object")
            self._stats.record_error(f"bad body for {doc_id}")
            return
        try:
            await self._fetch_missing_blobs(document, doc_id, index)
        except BlobFetchError as exc:
            self._stats.record_error(str(exc))
            request.respond_error("HTTP", 502, str(exc))
            return
        revision = IncomingRevision(
            doc_id=doc_id,
            rev_id=rev_id,
            history=parse_history(properties.get("history")),
            deleted=is_true(properties.get("deleted")),
            body=body,
            no_conflicts=is_true(properties.get("noconflicts")),
        )
        try:
            result = await self._inserter.insert(collection, revision)
        except StoreError as exc:
            self._stats.record_error(f"storing '{doc_id}' failed: {exc}")
            request.respond_error("HTTP", 500, f"storing '{doc_id}' failed: {exc}")
            return
        if result.status in (200, 201):
            self._stats.docs_in += result.status == 201
            if self._on_stored is not None:
                self._on_stored(index, doc_id, rev_id)
            if not request.no_reply:
                request.respond()
            return
        message = result.message or f"cannot store '{doc_id}' {rev_id}"
        self._stats.record_error(message)
        request.respond_error("HTTP", result.status, message)

    async def _fetch_missing_blobs(
        self, document: dict[str, Any], doc_id: str, index: int | None
    ) -> None:
        blobs = self._database.blobs
        for blob in find_blobs(document):
            digest = blob.get("digest")
            if not isinstance(digest, str) or blobs.has(digest):
                continue
            fetch = self._blob_fetches.get(digest)
            if fetch is None:
                fetch = asyncio.ensure_future(self._fetch_blob(digest, doc_id, index))
                self._blob_fetches[digest] = fetch
                fetch.add_done_callback(functools.partial(self._fetch_finished, digest))
            await asyncio.shield(fetch)

    def _fetch_finished(self, digest: str, _fetch: asyncio.Future[None]) -> None:
        self._blob_fetches.pop(digest, None)

    async def _fetch_blob(self, digest: str, doc_id: str, index: int | None) -> None:
        reply = await self._session.request(
            GET_ATTACHMENT,
            with_collection({"digest": digest, "docID": doc_id, "compress": "true"}, index),
        )
        assert reply is not None
        if reply.is_error:
            raise BlobFetchError(
                f"peer could not send blob {digest} of '{doc_id}': "
                f"{reply.error_domain} {reply.error_code} {reply.error_message}"
            )
        try:
            with self._database.blobs.writer(expected_digest=digest) as writer:
                writer.write(reply.body)
                writer.finish()
        except StoreError as exc:
            raise BlobFetchError(f"blob {digest} of '{doc_id}' was not stored: {exc}") from exc
        self._stats.blobs_in += 1
