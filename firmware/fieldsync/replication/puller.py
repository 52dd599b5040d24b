"""Receiving revisions from the peer: answering ``changes``/``proposeChanges``, inserting ``rev``.

The passive side uses a Puller when the phone pushes; the active replicator uses one to pull.
A ``rev`` is answered only after the revision and every blob it references are durably stored:
missing blobs are fetched with ``getAttachment`` first, then the revision joins a batched
transaction (see ``Inserter``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from typing import Any

from fieldsync import safejson
from fieldsync.blip import BLIPError, BLIPSession, IncomingRequest, IncomingResponse
from fieldsync.replication import decisions
from fieldsync.replication.blobs import blob_proof
from fieldsync.replication.deltas import (
    DELTA_BASE_UNKNOWN,
    DELTA_ERROR_DOMAIN,
    DELTA_ERROR_STATUS,
    apply_received_delta,
)
from fieldsync.replication.errors import BlobFetchError, BlobProofError, DeltaApplyError
from fieldsync.replication.inserter import Inserter
from fieldsync.replication.messages import (
    DEFAULT_MAX_HISTORY,
    GET_ATTACHMENT,
    PROVE_ATTACHMENT,
    encode_json,
    is_true,
    trim_trailing,
    with_collection,
)
from fieldsync.replication.ports import ReplicatedCollection, ReplicatedDatabase
from fieldsync.replication.stats import ReplicationStats
from fieldsync.replication.versioning import (
    PeerKey,
    VersionedRevision,
    WireFormat,
    answer_version_changes,
    parse_proposed_versions,
    read_rev,
)
from fieldsync.store import IncomingRevision, InvalidInput, StoreError, find_blobs
from fieldsync.store.models import IncomingVersioned, InsertResult
from fieldsync.store.versions import BadVersion, Version, legacy_matches

log = logging.getLogger(__name__)


def _may_name_blobs(body: bytes) -> bool:
    """A blob reference has a "digest" key (or hides it behind a JSON \\u escape): only such
    a body is parsed on the loop, to fetch its blobs before it is stored. The store parses and
    checks every body anyway (400 for one that is not a JSON object)."""
    return b"digest" in body or b"\\u" in body


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
        wire: WireFormat = WireFormat.REV_TREES,
        peer: PeerKey | None = None,
        served_blobs: AbstractSet[str] | None = None,
    ) -> None:
        """``wire``: the session's revision spelling; ``peer``: the phone's key for the
        per-phone legacy bookkeeping of CBMobile_4 sessions (``None`` when not known).
        ``served_blobs``: digests of blobs sent to this peer on this connection; when given,
        a pushed revision naming any other blob we already hold is accepted only once the peer
        proves it has the bytes (``proveAttachment``, as Sync Gateway does)."""
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
        self._served_blobs = served_blobs
        self._proven_blobs: set[str] = set()
        self._wire = wire
        self._peer = peer or PeerKey()

    def _reply_properties(self) -> dict[str, str]:
        properties = self._wire.reply_properties(self._max_history)
        if self._accept_deltas and not self._announced_deltas:
            properties["deltas"] = "true"
            self._announced_deltas = True
        return properties

    # -- change lists -------------------------------------------------------------------------

    def handle_proposed_changes(
        self, request: IncomingRequest, collection: ReplicatedCollection
    ) -> None:
        if self._wire.uses_versions:
            self._handle_proposed_versions(request, collection)
            return
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

    def _handle_proposed_versions(
        self, request: IncomingRequest, collection: ReplicatedCollection
    ) -> None:
        """CBMobile_4 ``proposeChanges``: versions (or legacy revIDs) checked against the
        document's vector with Sync Gateway's rules (``store.versions.decide_proposed``)."""
        try:
            rows = parse_proposed_versions(request.json())
        except ValueError as exc:  # BadVersion names the column and the document
            request.respond_error("HTTP", 400, str(exc))
            self._stats.record_error(f"bad proposeChanges: {exc}")
            return
        if not rows:
            self._caught_up(request, None)
            return
        include_rev = is_true(request.properties.get("conflictIncludesRev"))
        answers: list[object] = []
        for row in rows:
            status, current = collection.check_proposed_version(
                row.doc_id, row.rev, row.parent, row.proposed
            )
            if status == 409 and include_rev and current:
                # Spelled as a changes row would be (RTE for a doc without a vector), so the
                # phone can tell whether it descends from it and retry at once.
                spelled = self._wire.current_name(current, None) if "@" not in current else current
                answers.append({"status": 409, "rev": spelled})
            else:
                answers.append(status)
        self._stats.pushing = True
        request.respond(
            self._reply_properties(), encode_json(trim_trailing(answers, 0)), compressed=True
        )

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
            if self._wire.uses_versions:
                answers, wanted = answer_version_changes(collection, changes)
            else:
                answers, wanted = decisions.answer_changes(
                    collection, changes, require_bodies=self._accept_deltas
                )
        except InvalidInput as exc:
            request.respond_error(
                "BLIP" if not isinstance(exc, BadVersion) else "HTTP", 400, str(exc)
            )
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
            sequence = safejson.loads(raw_sequence)
        except ValueError:
            sequence = raw_sequence
        self._on_sequence_done(index, sequence)

    def handle_rev(
        self, request: IncomingRequest, collection: ReplicatedCollection, index: int | None
    ) -> Awaitable[None] | None:
        """Store a pushed revision and answer once it is durable. The common case (a whole
        body naming no blob) returns the future of its commit, answered by a callback: no
        coroutine chain and task per revision (perf, issue 13); a delta or a body with blobs
        returns a coroutine, which fetches what it needs first."""
        properties = request.properties
        body = request.body or b"{}"
        try:
            named = read_rev(self._wire, properties, body)
        except BadVersion as exc:  # names the property at fault; nothing is stored
            request.respond_error("HTTP", 400, str(exc))
            self._stats.record_error(
                f"invalid rev {properties.get('id')!r} {properties.get('rev')!r}: {exc}"
            )
            return None
        if properties.get("deltaSrc") or _may_name_blobs(body):
            return self._insert_rev(request, collection, index, named, body)
        self._stats.in_flight += 1
        try:
            stored = self._inserter.insert(collection, self._incoming(named, body))
        except BaseException:
            self._rev_finished(request, index)
            raise
        answered: asyncio.Future[None] = stored.get_loop().create_future()
        stored.add_done_callback(
            functools.partial(self._rev_stored, request, index, named, answered)
        )
        return answered

    def _rev_stored(
        self,
        request: IncomingRequest,
        index: int | None,
        named: VersionedRevision | IncomingRevision,
        answered: asyncio.Future[None],
        stored: asyncio.Future[InsertResult],
    ) -> None:
        """Answer a stored revision; ``answered`` resolves then, or carries the failure
        (other than a store error, answered here) for the session to answer, as if raised."""
        try:
            if stored.cancelled():
                answered.cancel()  # shutting down: no answer
                return
            error = stored.exception()
            if error is None:
                self._answer_stored(request, index, named.doc_id, stored.result())
            elif isinstance(error, StoreError):
                self._store_failed(request, named.doc_id, error)
            else:
                answered.set_exception(error)
                return
            answered.set_result(None)
        finally:
            self._rev_finished(request, index)

    def _rev_finished(self, request: IncomingRequest, index: int | None) -> None:
        self._stats.in_flight -= 1
        self._sequence_done(index, request.properties.get("sequence"))

    def _delta_base(
        self, collection: ReplicatedCollection, doc_id: str, delta_source: str
    ) -> str | None:
        """The local revID a ``deltaSrc`` names: a revID, or in a CBMobile_4 session a
        version (the cv of a revision we hold)."""
        if not (self._wire.uses_versions and "@" in delta_source):
            return delta_source
        try:
            version = Version.parse(delta_source, "deltaSrc")
        except BadVersion:
            return None
        if version.is_legacy:  # a revision of ours the phone got as RTE
            current = collection.get_revision(doc_id, with_body=False)
            chain = collection.rev_history(doc_id, current.rev_id) if current else []
            return next((r for r in chain if legacy_matches(r, version)), None)
        found = collection.get_revision_by_version(doc_id, version, with_body=False)
        return found.rev_id if found is not None else None

    async def _insert_rev(
        self,
        request: IncomingRequest,
        collection: ReplicatedCollection,
        index: int | None,
        named: VersionedRevision | IncomingRevision,
        body: bytes,
    ) -> None:
        """A delta applied to its base, or a body whose blobs are fetched first; then stored."""
        self._stats.in_flight += 1
        try:
            complete = await self._complete_body(request, collection, index, named.doc_id, body)
            if complete is None:
                return  # answered with an error
            try:
                result = await self._inserter.insert(collection, self._incoming(named, complete))
            except StoreError as exc:
                self._store_failed(request, named.doc_id, exc)
                return
            self._answer_stored(request, index, named.doc_id, result)
        finally:
            self._rev_finished(request, index)

    async def _complete_body(
        self,
        request: IncomingRequest,
        collection: ReplicatedCollection,
        index: int | None,
        doc_id: str,
        body: bytes,
    ) -> bytes | None:
        """The body to store: a delta applied to its base, the blobs it names fetched first;
        ``None`` once the request is answered with an error."""
        delta_source = request.properties.get("deltaSrc")
        if delta_source:
            if not self._accept_deltas:
                request.respond_error("HTTP", 400, "delta sync is not enabled on this peer")
                return None
            try:
                base = self._delta_base(collection, doc_id, delta_source)
                if base is None:
                    raise DeltaApplyError(
                        DELTA_BASE_UNKNOWN,
                        f"base revision {delta_source} of '{doc_id}' is not available",
                    )
                body = apply_received_delta(collection, doc_id, base, body)
            except DeltaApplyError as exc:
                log.info("%s: %s; asking for the full body", self._session.name, exc.message)
                request.respond_error(DELTA_ERROR_DOMAIN, DELTA_ERROR_STATUS, exc.message)
                return None
        if _may_name_blobs(body):
            try:
                document = safejson.loads(body)
            except ValueError:  # JSONTooDeep included: the store answers 400 with the reason
                document = None
            if isinstance(document, dict):
                try:
                    await self._fetch_missing_blobs(document, doc_id, index)
                except BlobFetchError as exc:
                    self._stats.record_error(str(exc))
                    status = 403 if isinstance(exc, BlobProofError) else 502
                    request.respond_error("HTTP", status, str(exc))
                    return None
        return body

    def _incoming(
        self, named: VersionedRevision | IncomingRevision, body: bytes
    ) -> IncomingRevision | IncomingVersioned:
        if isinstance(named, VersionedRevision):
            return IncomingVersioned(
                doc_id=named.doc_id,
                version=named.version,
                deleted=named.deleted,
                body=body,
                peer=self._peer.value,
                no_conflicts=named.no_conflicts,
            )
        # The common case: read_rev already made it with this body (one object per pushed
        # revision, perf issue 13); a delta or a body with blobs gets its whole body here.
        return named if named.body is body else replace(named, body=body)

    def _store_failed(self, request: IncomingRequest, doc_id: str, exc: StoreError) -> None:
        self._stats.record_error(f"storing '{doc_id}' failed: {exc}")
        request.respond_error("HTTP", 500, f"storing '{doc_id}' failed: {exc}")

    def _answer_stored(
        self, request: IncomingRequest, index: int | None, doc_id: str, result: InsertResult
    ) -> None:
        rev_id = request.properties.get("rev", "")
        if result.status in (200, 201):
            self._stats.docs_in += result.status == 201
            if self._on_stored is not None:
                self._on_stored(index, doc_id, rev_id)
            if not request.no_reply:
                request.respond(self._wire.rev_reply_properties(result.status))
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
            if not isinstance(digest, str):
                continue
            if blobs.claim(digest):  # see store.maintenance
                served = self._served_blobs
                if served is not None and digest not in served:
                    await self._prove_blob(digest, doc_id, index)
                continue
            fetch = self._blob_fetches.get(digest)
            if fetch is None:
                fetch = asyncio.ensure_future(self._fetch_blob(digest, doc_id, index))
                self._blob_fetches[digest] = fetch
                fetch.add_done_callback(functools.partial(self._fetch_finished, digest))
            await asyncio.shield(fetch)

    def _fetch_finished(self, digest: str, _fetch: asyncio.Future[None]) -> None:
        self._blob_fetches.pop(digest, None)

    async def _prove_blob(self, digest: str, doc_id: str, index: int | None) -> None:
        """Ask the peer to prove it holds a blob we already have and did not send it: without
        this, naming a digest in a pushed revision and pulling it back would read any blob."""
        if digest in self._proven_blobs:
            return
        try:
            data = self._database.blobs.read(digest)
        except (KeyError, StoreError) as exc:
            raise BlobFetchError(f"blob {digest} of '{doc_id}' cannot be read: {exc}") from exc
        nonce = secrets.token_bytes(20)
        reply = await self._session.request(
            PROVE_ATTACHMENT, with_collection({"digest": digest, "docID": doc_id}, index), nonce
        )
        assert reply is not None
        if reply.is_error and reply.error_code == 404:
            # No proveAttachment handler, or the peer lacks the blob: sending it proves it (SG).
            await self._fetch_blob(digest, doc_id, index)
        elif reply.is_error or _body_or_nothing(reply) != blob_proof(nonce, data).encode():
            raise BlobProofError(
                f"peer did not prove it has blob {digest} named by '{doc_id}'"
                + (f": {reply.error_domain} {reply.error_code}" if reply.is_error else "")
            )
        self._proven_blobs.add(digest)

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
        spool = reply.spooled
        try:
            with self._database.blobs.writer(expected_digest=digest) as writer:
                if spool is None:
                    writer.write(reply.body)
                else:  # a large blob: copied from its spool file, never whole in memory
                    await asyncio.to_thread(spool.copy_to, writer.write)
                writer.finish()
        except StoreError as exc:
            raise BlobFetchError(f"blob {digest} of '{doc_id}' was not stored: {exc}") from exc
        finally:
            if spool is not None:
                spool.close()
        self._stats.blobs_in += 1


def _body_or_nothing(reply: IncomingResponse) -> bytes:
    """A reply's body, or ``b""`` if it is too large to be what was asked for."""
    try:
        return reply.body
    except BLIPError:
        return b""
