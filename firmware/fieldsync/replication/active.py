"""The active replicator: fieldsync connecting out to another peer, as Couchbase Lite does.

It opens ``<url>/_blipsync``, agrees on checkpoints, pushes with ``proposeChanges`` and pulls
with ``subChanges``, one-shot or continuously, over the same Pusher and Puller the passive side
uses. A device can sync with another fieldsync device or with a Sync Gateway this way.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, cast

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from fieldsync import safejson
from fieldsync.blip import BLIPSession, IncomingRequest
from fieldsync.replication import checkpoints, conflicts, decisions, messages
from fieldsync.replication.checkpoints import CHECKPOINT_SAVE_INTERVAL, CollectionCheckpoint
from fieldsync.replication.deltas import make_delta_encoder
from fieldsync.replication.errors import ReplicationError
from fieldsync.replication.messages import encode_json, with_collection
from fieldsync.replication.notifier import ChangeNotifier
from fieldsync.replication.ports import ReplicatedCollection, ReplicatedDatabase
from fieldsync.replication.puller import PullerHooks
from fieldsync.replication.pusher import Pusher, PushOptions
from fieldsync.replication.pushmodes import ProposeMode
from fieldsync.replication.routing import CollectionRouter
from fieldsync.replication.session import ReplicationSession
from fieldsync.replication.stats import ReplicationStats
from fieldsync.replication.writer import WRITER

log = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_SAVE_INTERVAL",
    "ReplicationError",
    "Replicator",
    "ReplicatorConfiguration",
    "ReplicatorResult",
    "ReplicatorType",
]


class ReplicatorType(Enum):
    PUSH = "push"
    PULL = "pull"
    PUSH_AND_PULL = "push-and-pull"


@dataclass
class ReplicatorConfiguration:
    """Where to replicate, which way, and how to authenticate."""

    database: ReplicatedDatabase
    url: str
    replicator_type: ReplicatorType = ReplicatorType.PUSH_AND_PULL
    continuous: bool = False
    collections: Sequence[ReplicatedCollection] | None = None  # None: the default collection
    username: str | None = None
    password: str | None = None
    ssl_context: ssl.SSLContext | None = None  # for wss:// (pinning, self-signed, client cert)
    enable_delta_sync: bool = True
    headers: dict[str, str] = field(default_factory=dict)
    #: Resolves pulled conflicts (Couchbase Lite's default rule when None).
    conflict_resolver: conflicts.ConflictResolver | None = None

    @property
    def push(self) -> bool:
        return self.replicator_type in (ReplicatorType.PUSH, ReplicatorType.PUSH_AND_PULL)

    @property
    def pull(self) -> bool:
        return self.replicator_type in (ReplicatorType.PULL, ReplicatorType.PUSH_AND_PULL)


@dataclass
class ReplicatorResult:
    docs_pushed: int
    docs_pulled: int
    conflicts: list[tuple[str, str]]
    errors: int
    last_error: str
    bytes_sent: int = 0
    bytes_received: int = 0


class _CollectionState:
    """Per collection: its index on the wire, its checkpoint and the pull's progress."""

    def __init__(
        self, collection: ReplicatedCollection, index: int | None, checkpoint_id: str
    ) -> None:
        self.collection = collection
        self.index = index
        self.checkpoint = CollectionCheckpoint(checkpoint_id)
        self.last_pull_announced: object = None
        self.pull_caught_up = False
        #: Set once the peer said it is caught up and every revision it announced is done.
        self.pull_done = asyncio.Event()
        self.pusher: Pusher | None = None

    def pull_progressed(self) -> None:
        if self.pull_caught_up and not self.checkpoint.pull_tracker.pending_count:
            self.pull_done.set()
        else:
            self.pull_done.clear()


class Replicator:
    """Replicates a local database with a remote peer (``fieldsync.replicator.Replicator``)."""

    def __init__(self, config: ReplicatorConfiguration) -> None:
        self.config = config
        self.stats = ReplicationStats()
        self._stop = asyncio.Event()
        self._states: list[_CollectionState] = []
        self._by_index: dict[int | None, _CollectionState] = {}
        self._conflicts: list[tuple[str, str]] = []
        self._resolver = config.conflict_resolver or conflicts.DefaultConflictResolver()
        #: Pulled conflicts resolved (document IDs).
        self.resolved_conflicts: list[str] = []

    def stop(self) -> None:
        """Ask a running replication (typically a continuous one) to finish."""
        self._stop.set()

    # -- connecting ---------------------------------------------------------------------------

    def _endpoint(self) -> str:
        url = self.config.url.rstrip("/")
        return url if url.endswith("/_blipsync") else url + "/_blipsync"

    def _headers(self) -> dict[str, str]:
        headers = dict(self.config.headers)
        if self.config.username is not None:
            token = f"{self.config.username}:{self.config.password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        return headers

    async def _connect(self) -> BLIPSession:
        endpoint = self._endpoint()
        ssl_context = self.config.ssl_context
        if endpoint.startswith("wss://") and ssl_context is None:
            ssl_context = ssl.create_default_context()
        try:
            websocket = await connect(
                endpoint,
                subprotocols=[Subprotocol(name) for name in messages.SUPPORTED_SUBPROTOCOLS],
                additional_headers=self._headers(),
                compression=None,
                max_size=None,
                ssl=ssl_context,
                user_agent_header="fieldsync-replicator",
                open_timeout=20,
            )
        except InvalidStatus as exc:
            body = exc.response.body.decode(errors="replace").strip()
            raise ReplicationError(
                f"{endpoint} refused the connection: HTTP {exc.response.status_code} {body}"
            ) from exc
        except (InvalidHandshake, OSError) as exc:
            raise ReplicationError(f"cannot connect to {endpoint}: {exc}") from exc
        return BLIPSession(
            websocket, name=self.config.url, shared_strings=messages.SHARED_PROPERTY_STRINGS
        )

    async def run(self) -> ReplicatorResult:
        """Replicate until done (one-shot) or until ``stop()`` (continuous)."""
        blip = await self._connect()
        session = ReplicationSession(
            blip,
            self.config.database,
            notifier=ChangeNotifier(self.config.database),
            router=CollectionRouter(None, {}),
            stats=self.stats,
            accept_deltas=self.config.enable_delta_sync,
            hooks=PullerHooks(
                sequence_done=self._pull_sequence_done,
                caught_up=self._pull_caught_up,
                stored=self._pulled,
            ),
        )
        reader = asyncio.get_running_loop().create_task(blip.run())
        session.notifier.acquire()
        try:
            await self._replicate(session, reader)
        finally:
            session.notifier.release()
            await session.close()
            with contextlib.suppress(Exception):
                await self._save_checkpoints(blip)
            await blip.close(1000, "")
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        return ReplicatorResult(
            self.stats.docs_out,
            self.stats.docs_in,
            self._conflicts,
            self.stats.errors,
            self.stats.last_error,
            self.stats.bytes_out,
            self.stats.bytes_in,
        )

    async def _replicate(self, session: ReplicationSession, reader: asyncio.Task[None]) -> None:
        self._register(session)
        await self._open_checkpoints(session)

        jobs: list[asyncio.Future[Any]] = []
        if self.config.pull:
            for state in self._states:
                await self._subscribe(session.blip, state)
                jobs.append(asyncio.ensure_future(self._pull_done(state)))
        if self.config.push:
            for state in self._states:
                checkpoint = state.checkpoint
                state.pusher = session.add_pusher(
                    state.collection,
                    state.index,
                    options=PushOptions(
                        continuous=self.config.continuous,
                        since=checkpoint.push_tracker.checkpoint or 0,
                        delta_encoder=make_delta_encoder()
                        if self.config.enable_delta_sync
                        else None,
                    ),
                    mode=ProposeMode(checkpoint.remote_revs),
                    tracker=checkpoint.push_tracker,
                )
                jobs.append(asyncio.ensure_future(self._push(state.pusher)))
        saver: asyncio.Future[Any] = asyncio.ensure_future(self._checkpoint_loop(session.blip))
        stop: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
        try:
            done: set[asyncio.Future[Any]]
            if self.config.continuous:
                done, _ = await asyncio.wait(
                    [*jobs, reader, stop], return_when=asyncio.FIRST_COMPLETED
                )
            else:
                all_jobs: asyncio.Future[Any] = asyncio.gather(*jobs)
                done, _ = await asyncio.wait(
                    [all_jobs, reader, stop], return_when=asyncio.FIRST_COMPLETED
                )
                if all_jobs in done:
                    all_jobs.result()
            for job in done:
                if job is stop or not job.done() or job.cancelled():
                    continue
                error = job.exception()
                if error is not None:
                    raise error
            if reader in done and not self._stop.is_set() and not all(j.done() for j in jobs):
                blip = session.blip
                raise ReplicationError(
                    f"connection closed by peer: {blip.close_code} {blip.close_reason}"
                )
        finally:
            for task in [*jobs, saver, stop]:
                task.cancel()
        for state in self._states:
            if state.pusher is not None:
                self._conflicts.extend(state.pusher.conflicts)

    async def _push(self, pusher: Pusher) -> None:
        await pusher.run()
        await pusher.wait_idle()

    def _register(self, session: ReplicationSession) -> None:
        puller = session.puller

        def state_of(request: IncomingRequest, index: int | None) -> _CollectionState | None:
            state = self._by_index.get(index)
            if state is None:
                raw = request.properties.get("collection")
                request.respond_error("HTTP", 400, f"unknown collection {raw!r}")
            return state

        def changes(request: IncomingRequest, _target: object, index: int | None) -> None:
            state = state_of(request, index)
            if state is None:
                return
            try:
                announced = decisions.parse_changes(request.json())
            except ValueError:
                announced = []
            for change in announced:
                state.checkpoint.pull_tracker.add(change.sequence)
                state.last_pull_announced = change.sequence
            state.pull_progressed()
            puller.handle_changes(request, state.collection, state.index)

        async def rev(request: IncomingRequest, _target: object, index: int | None) -> None:
            state = state_of(request, index)
            if state is None:
                return
            doc_id = request.properties.get("id", "")
            remote_rev = request.properties.get("rev", "")
            before = _current_revision(state.collection, doc_id)
            pending = puller.handle_rev(request, state.collection, state.index)
            if pending is not None:
                await pending
            if before is not None and before.rev_id != remote_rev:
                # On the writer thread, as Couchbase Lite runs resolvers off the main thread: the
                # resolution writes, and another process may hold the write lock.
                failure = await asyncio.get_running_loop().run_in_executor(
                    WRITER,
                    self._resolve_if_conflicted,
                    state.collection,
                    doc_id,
                    before,
                    remote_rev,
                )
                if failure is None:
                    return
                if failure:
                    self.stats.record_error(failure)
                    log.warning("%s", failure)
                else:
                    self.resolved_conflicts.append(doc_id)

        def norev(request: IncomingRequest, _target: object, index: int | None) -> None:
            if state_of(request, index) is not None:
                puller.handle_norev(request, index)

        def refuse(request: IncomingRequest, _target: object, _index: int | None) -> None:
            request.respond_error(
                "HTTP", 403, "this is an active replicator; it does not accept pushes"
            )

        def get_attachment(request: IncomingRequest, _target: object, _index: int | None) -> None:
            session.blobs.get_attachment(request)

        def prove_attachment(request: IncomingRequest, _target: object, _i: int | None) -> None:
            session.blobs.prove_attachment(request)

        session.register(messages.CHANGES, changes)
        session.register(messages.REV, rev)
        session.register(messages.NOREV, norev)
        session.register(messages.PROPOSE_CHANGES, refuse)
        session.register(messages.GET_ATTACHMENT, get_attachment)
        session.register(messages.PROVE_ATTACHMENT, prove_attachment)

    def _pull_sequence_done(self, index: int | None, sequence: object) -> None:
        state = self._by_index.get(index)
        if state is not None:
            state.checkpoint.pull_tracker.complete(sequence)
            state.pull_progressed()

    def _pulled(self, index: int | None, doc_id: str, rev_id: str) -> None:
        state = self._by_index.get(index)
        if state is not None:
            state.checkpoint.remote_revs[doc_id] = rev_id

    def _resolve_if_conflicted(
        self,
        collection: ReplicatedCollection,
        doc_id: str,
        before: conflicts.ConflictingRevision,
        remote_rev: str,
    ) -> str | None:
        """A pulled revision that does not descend from the local one is a conflict: resolve
        it now, as Couchbase Lite's replicator does. ``None``: there was no conflict; ``""``:
        resolved; otherwise what went wrong (a resolver's bug leaves the conflict, never the
        sync). Blocking: runs on the writer thread."""
        store = cast(conflicts.ResolvableCollection, collection)
        try:
            history = store.rev_history(doc_id, remote_rev)
            if not history or before.rev_id in history:
                return None  # not stored, or a plain update
            remote = _revision(collection, doc_id, remote_rev)
            if remote is None:
                return None
            conflict = conflicts.Conflict(doc_id, before, remote)
            outcome = conflicts.decide(conflict, self._resolver.resolve(conflict))
            conflicts.apply(store, conflict, outcome)
        except Exception as exc:
            return f"resolving the conflict on '{doc_id}' failed: {exc!r}"
        return ""

    def _pull_caught_up(self, index: int | None) -> None:
        state = self._by_index.get(index)
        if state is not None:
            if state.last_pull_announced is not None:
                state.checkpoint.pull_tracker.caught_up(state.last_pull_announced)
            state.pull_caught_up = True
            state.pull_progressed()

    async def _pull_done(self, state: _CollectionState) -> None:
        if self.config.continuous:
            await asyncio.Event().wait()
        await state.pull_done.wait()

    # -- checkpoints --------------------------------------------------------------------------

    async def _open_checkpoints(self, session: ReplicationSession) -> None:
        database = self.config.database
        collections = list(self.config.collections or [database.default_collection])
        local = checkpoints.local_id(database)
        endpoint = self._endpoint()
        blip = session.blip
        legacy = len(collections) == 1 and collections[0].full_name == "_default._default"
        if legacy:
            state = _CollectionState(
                collections[0], None, checkpoints.checkpoint_id(local, endpoint, collections[0])
            )
            reply = await blip.request(messages.GET_CHECKPOINT, {"client": state.checkpoint.id})
            assert reply is not None
            remote = None
            if not reply.is_error:
                remote = checkpoints.json_object(reply.body)
                state.checkpoint.rev = reply.properties.get("rev")
            elif reply.error_code != 404:
                raise ReplicationError(
                    f"getCheckpoint failed: {reply.error_domain} {reply.error_code} "
                    f"{reply.error_message}"
                )
            self._adopt_checkpoint(state, remote)
            self._states = [state]
        else:
            states = [
                _CollectionState(c, i, checkpoints.checkpoint_id(local, endpoint, c))
                for i, c in enumerate(collections)
            ]
            body = {
                "checkpoint_ids": [s.checkpoint.id for s in states],
                "collections": [s.collection.full_name for s in states],
            }
            reply = await blip.request(messages.GET_COLLECTIONS, {}, encode_json(body))
            assert reply is not None
            if reply.is_error:
                raise ReplicationError(
                    f"getCollections failed: {reply.error_domain} {reply.error_code} "
                    f"{reply.error_message}"
                )
            answers = json.loads(reply.body or b"[]")
            for state, answer in zip(states, answers, strict=False):
                if answer is None:
                    raise ReplicationError(
                        f"collection {state.collection.full_name} is not found on the remote"
                    )
                remote = dict(answer) if isinstance(answer, dict) else {}
                state.checkpoint.rev = remote.pop("rev", None)
                self._adopt_checkpoint(state, remote or None)
            self._states = states
        self._by_index = {s.index: s for s in self._states}
        session.router.assign([s.collection for s in self._states], legacy=legacy)

    def _adopt_checkpoint(self, state: _CollectionState, remote: dict[str, Any] | None) -> None:
        state.checkpoint.adopt(self.config.database, remote)
        log.info(
            "%s: %s resumes at local #%s, remote %s",
            self.config.url,
            state.collection.full_name,
            state.checkpoint.push_tracker.checkpoint,
            state.checkpoint.pull_tracker.checkpoint,
        )

    async def _subscribe(self, blip: BLIPSession, state: _CollectionState) -> None:
        properties = {
            "batch": str(messages.CHANGES_BATCH_SIZE),
            "versioning": "rev-trees",
            "sendReplacementRevs": "1",
        }
        since = state.checkpoint.pull_tracker.checkpoint
        if since is not None:
            properties["since"] = json.dumps(since)
        else:
            properties["activeOnly"] = "true"
        if self.config.continuous:
            properties["continuous"] = "true"
        reply = await blip.request(messages.SUB_CHANGES, with_collection(properties, state.index))
        assert reply is not None
        if reply.is_error:
            raise ReplicationError(
                f"subChanges for {state.collection.full_name} failed: {reply.error_domain} "
                f"{reply.error_code} {reply.error_message}"
            )
        self.stats.pulling = True

    async def _checkpoint_loop(self, blip: BLIPSession) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_SAVE_INTERVAL)
            await self._save_checkpoints(blip)

    async def _save_checkpoints(self, blip: BLIPSession) -> None:
        for state in self._states:
            await state.checkpoint.save(blip, self.config.database, state.index)


def _revision(
    collection: ReplicatedCollection, doc_id: str, rev_id: str | None
) -> conflicts.ConflictingRevision | None:
    """A revision (the current one for ``rev_id`` None) as one side of a conflict."""
    revision = collection.get_revision(doc_id, rev_id)
    if revision is None:
        return None
    decoded = safejson.loads(revision.body) if revision.body else {}
    body = decoded if isinstance(decoded, dict) else {}
    return conflicts.ConflictingRevision(doc_id, revision.rev_id, revision.deleted, body)


def _current_revision(
    collection: ReplicatedCollection, doc_id: str
) -> conflicts.ConflictingRevision | None:
    return _revision(collection, doc_id, None) if doc_id else None
