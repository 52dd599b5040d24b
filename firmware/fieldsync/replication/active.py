"""The active replicator: fieldsync connecting out to another peer, as Couchbase Lite does.

It opens ``<url>/_blipsync``, agrees on checkpoints, pushes with ``proposeChanges`` and pulls
with ``subChanges``, one-shot or continuously, over the same Pusher and Puller the passive side
uses. A device can sync with another fieldsync device or with a Sync Gateway this way.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import ssl
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from fieldsync.blip import BLIPSession, IncomingRequest
from fieldsync.replication import decisions
from fieldsync.replication.blobs import BlobServer
from fieldsync.replication.deltas import make_delta_encoder
from fieldsync.replication.inserter import Inserter
from fieldsync.replication.messages import (
    CHANGES,
    CHANGES_BATCH_SIZE,
    GET_ATTACHMENT,
    GET_CHECKPOINT,
    GET_COLLECTIONS,
    NOREV,
    PROPOSE_CHANGES,
    PROVE_ATTACHMENT,
    REV,
    SET_CHECKPOINT,
    SUB_CHANGES,
    SUPPORTED_SUBPROTOCOLS,
    encode_json,
    with_collection,
)
from fieldsync.replication.notifier import ChangeNotifier
from fieldsync.replication.ports import ReplicatedCollection, ReplicatedDatabase
from fieldsync.replication.puller import Puller
from fieldsync.replication.pusher import Pusher, PushOptions, ReplicationError
from fieldsync.replication.sequences import SequenceTracker
from fieldsync.replication.stats import ReplicationStats

log = logging.getLogger(__name__)

CHECKPOINT_SAVE_INTERVAL = 1.0
LOCAL_ID_KEY = "replicator/local-uuid"


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
    """Per collection: its checkpoint and the sequences in progress each way."""

    def __init__(
        self, collection: ReplicatedCollection, index: int | None, checkpoint_id: str
    ) -> None:
        self.collection = collection
        self.index = index
        self.checkpoint_id = checkpoint_id
        self.checkpoint_rev: str | None = None
        self.push_tracker = SequenceTracker(0)
        self.pull_tracker = SequenceTracker(None)
        self.pull_caught_up = asyncio.Event()
        self.last_pull_announced: Any = None
        self.saved: tuple[Any, Any] | None = None
        self.pusher: Pusher | None = None
        #: The revision the remote is known to have of each document (the serverRevID to
        #: propose against), kept in the local database between runs.
        self.remote_revs: dict[str, str] = {}

    @property
    def remote_revs_key(self) -> str:
        return "remote-revs/" + self.checkpoint_id

    def checkpoint_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"time": int(time.time())}
        if self.push_tracker.checkpoint:
            body["local"] = self.push_tracker.checkpoint
        if self.pull_tracker.checkpoint is not None:
            body["remote"] = self.pull_tracker.checkpoint
        return body


class Replicator:
    """Replicates a local database with a remote peer (``fieldsync.replicator.Replicator``)."""

    def __init__(self, config: ReplicatorConfiguration) -> None:
        self.config = config
        self.stats = ReplicationStats()
        self._stop = asyncio.Event()
        self._session: BLIPSession | None = None
        self._states: list[_CollectionState] = []
        self._by_index: dict[int | None, _CollectionState] = {}
        self._conflicts: list[tuple[str, str]] = []
        self._inserter = Inserter()

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

    async def run(self) -> ReplicatorResult:
        """Replicate until done (one-shot) or until ``stop()`` (continuous)."""
        endpoint = self._endpoint()
        ssl_context = self.config.ssl_context
        if endpoint.startswith("wss://") and ssl_context is None:
            ssl_context = ssl.create_default_context()
        try:
            websocket = await connect(
                endpoint,
                subprotocols=list(SUPPORTED_SUBPROTOCOLS),
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
        session = BLIPSession(websocket, name=self.config.url)
        self._session = session
        self.stats.byte_counter = session.protocol
        reader = asyncio.get_running_loop().create_task(session.run())
        notifier = ChangeNotifier(self.config.database)
        notifier.acquire()
        try:
            await self._replicate(session, notifier, reader)
        finally:
            notifier.release()
            for state in self._states:
                if state.pusher is not None:
                    await state.pusher.close()
            self._inserter.close()
            with contextlib.suppress(Exception):
                await self._save_checkpoints(session)
            await session.close(1000, "")
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

    async def _replicate(
        self, session: BLIPSession, notifier: ChangeNotifier, reader: asyncio.Task[None]
    ) -> None:
        database = self.config.database
        puller = Puller(
            session,
            database,
            stats=self.stats,
            inserter=self._inserter,
            accept_deltas=self.config.enable_delta_sync,
            on_sequence_done=self._pull_sequence_done,
            on_caught_up=self._pull_caught_up,
            on_stored=self._pulled,
        )
        blobs = BlobServer(database, self.stats)
        self._register(session, puller, blobs)
        await self._open_checkpoints(session)

        jobs: list[asyncio.Future[Any]] = []
        if self.config.pull:
            for state in self._states:
                await self._subscribe(session, state)
                jobs.append(asyncio.ensure_future(self._pull_done(state)))
        if self.config.push:
            for state in self._states:
                state.pusher = Pusher(
                    session,
                    state.collection,
                    state.index,
                    options=PushOptions(
                        continuous=self.config.continuous,
                        since=state.push_tracker.checkpoint or 0,
                        propose=True,
                        remote_revs=state.remote_revs,
                        delta_encoder=make_delta_encoder()
                        if self.config.enable_delta_sync
                        else None,
                    ),
                    stats=self.stats,
                    notifier=notifier,
                    served_blobs=blobs.served,
                    tracker=state.push_tracker,
                )
                jobs.append(asyncio.ensure_future(self._push(state.pusher)))
        saver = asyncio.ensure_future(self._checkpoint_loop(session))
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            waiting = [*jobs, reader]
            if self.config.continuous:
                done, _ = await asyncio.wait([*waiting, stop], return_when=asyncio.FIRST_COMPLETED)
            else:
                all_jobs = asyncio.gather(*jobs)
                done, _ = await asyncio.wait(
                    [all_jobs, reader, stop], return_when=asyncio.FIRST_COMPLETED
                )
                if all_jobs in done:
                    all_jobs.result()
            for job in done:
                if job is not stop and job.done() and not job.cancelled() and job.exception():
                    raise job.exception()  # type: ignore[misc]
            if reader in done and not self._stop.is_set() and not all(j.done() for j in jobs):
                raise ReplicationError(
                    f"connection closed by peer: {session.close_code} {session.close_reason}"
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

    def _register(self, session: BLIPSession, puller: Puller, blobs: BlobServer) -> None:
        def route(request: IncomingRequest) -> _CollectionState | None:
            raw = request.properties.get("collection")
            index = int(raw) if raw is not None and raw.isdigit() else None
            state = self._by_index.get(index)
            if state is None:
                request.respond_error("HTTP", 400, f"unknown collection {raw!r}")
            return state

        def changes(request: IncomingRequest) -> None:
            state = route(request)
            if state is None:
                return
            try:
                announced = decisions.parse_changes(request.json())
            except ValueError:
                announced = []
            for change in announced:
                state.pull_tracker.add(change.sequence)
                state.last_pull_announced = change.sequence
            puller.handle_changes(request, state.collection, state.index)

        async def rev(request: IncomingRequest) -> None:
            state = route(request)
            if state is not None:
                await puller.handle_rev(request, state.collection, state.index)

        def norev(request: IncomingRequest) -> None:
            if route(request) is not None:
                puller.handle_norev(request, self._index_of(request))

        def refuse(request: IncomingRequest) -> None:
            request.respond_error(
                "HTTP", 403, "this is an active replicator; it does not accept pushes"
            )

        session.register(CHANGES, changes)
        session.register(REV, rev)
        session.register(NOREV, norev)
        session.register(PROPOSE_CHANGES, refuse)
        session.register(GET_ATTACHMENT, blobs.get_attachment)
        session.register(PROVE_ATTACHMENT, blobs.prove_attachment)

    @staticmethod
    def _index_of(request: IncomingRequest) -> int | None:
        raw = request.properties.get("collection")
        return int(raw) if raw is not None and raw.isdigit() else None

    def _pull_sequence_done(self, index: int | None, sequence: Any) -> None:
        state = self._by_index.get(index)
        if state is not None:
            state.pull_tracker.complete(sequence)

    def _pulled(self, index: int | None, doc_id: str, rev_id: str) -> None:
        state = self._by_index.get(index)
        if state is not None:
            state.remote_revs[doc_id] = rev_id

    def _pull_caught_up(self, index: int | None) -> None:
        state = self._by_index.get(index)
        if state is not None:
            if state.last_pull_announced is not None:
                state.pull_tracker.caught_up(state.last_pull_announced)
            state.pull_caught_up.set()

    async def _pull_done(self, state: _CollectionState) -> None:
        if self.config.continuous:
            await asyncio.Event().wait()
        await state.pull_caught_up.wait()
        while state.pull_tracker.pending_count:
            await asyncio.sleep(0.01)

    # -- checkpoints --------------------------------------------------------------------------

    def _local_id(self) -> str:
        database = self.config.database
        stored = database.get_local(LOCAL_ID_KEY)
        if stored:
            return stored.decode()
        local_id = uuid.uuid4().hex
        database.set_local(LOCAL_ID_KEY, local_id.encode())
        return local_id

    def _checkpoint_id(self, collection: ReplicatedCollection) -> str:
        seed = f"{self._local_id()}\0{self._endpoint()}\0{collection.full_name}"
        return "cp-" + base64.b64encode(hashlib.sha1(seed.encode()).digest()).decode()

    async def _open_checkpoints(self, session: BLIPSession) -> None:
        database = self.config.database
        collections = list(self.config.collections or [database.default_collection])
        legacy = len(collections) == 1 and collections[0].full_name == "_default._default"
        if legacy:
            state = _CollectionState(collections[0], None, self._checkpoint_id(collections[0]))
            reply = await session.request(GET_CHECKPOINT, {"client": state.checkpoint_id})
            assert reply is not None
            remote = None
            if not reply.is_error:
                remote = _json_dict(reply.body)
                state.checkpoint_rev = reply.properties.get("rev")
            elif reply.error_code != 404:
                raise ReplicationError(
                    f"getCheckpoint failed: {reply.error_domain} {reply.error_code} "
                    f"{reply.error_message}"
                )
            self._adopt_checkpoint(state, remote)
            self._states = [state]
        else:
            states = [
                _CollectionState(c, i, self._checkpoint_id(c)) for i, c in enumerate(collections)
            ]
            body = {
                "checkpoint_ids": [s.checkpoint_id for s in states],
                "collections": [s.collection.full_name for s in states],
            }
            reply = await session.request(GET_COLLECTIONS, {}, encode_json(body))
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
                state.checkpoint_rev = remote.pop("rev", None)
                self._adopt_checkpoint(state, remote or None)
            self._states = states
        self._by_index = {s.index: s for s in self._states}

    def _adopt_checkpoint(self, state: _CollectionState, remote: dict[str, Any] | None) -> None:
        """Resume from the remote checkpoint only if it matches the one saved locally."""
        database = self.config.database
        state.remote_revs.update(_json_dict(database.get_local(state.remote_revs_key)) or {})
        local = _json_dict(database.get_local("checkpoint/" + state.checkpoint_id))
        if (
            remote
            and local
            and remote.get("local") == local.get("local")
            and remote.get("remote") == local.get("remote")
        ):
            state.push_tracker = SequenceTracker(remote.get("local") or 0)
            state.pull_tracker = SequenceTracker(remote.get("remote"))
            state.saved = (remote.get("local"), remote.get("remote"))
        log.info(
            "%s: %s resumes at local #%s, remote %s",
            self.config.url,
            state.collection.full_name,
            state.push_tracker.checkpoint,
            state.pull_tracker.checkpoint,
        )

    async def _subscribe(self, session: BLIPSession, state: _CollectionState) -> None:
        properties = {
            "batch": str(CHANGES_BATCH_SIZE),
            "versioning": "rev-trees",
            "sendReplacementRevs": "1",
        }
        since = state.pull_tracker.checkpoint
        if since is not None:
            properties["since"] = json.dumps(since)
        else:
            properties["activeOnly"] = "true"
        if self.config.continuous:
            properties["continuous"] = "true"
        reply = await session.request(SUB_CHANGES, with_collection(properties, state.index))
        assert reply is not None
        if reply.is_error:
            raise ReplicationError(
                f"subChanges for {state.collection.full_name} failed: {reply.error_domain} "
                f"{reply.error_code} {reply.error_message}"
            )
        self.stats.pulling = True

    async def _checkpoint_loop(self, session: BLIPSession) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_SAVE_INTERVAL)
            await self._save_checkpoints(session)

    async def _save_checkpoints(self, session: BLIPSession) -> None:
        for state in self._states:
            current = (state.push_tracker.checkpoint or None, state.pull_tracker.checkpoint)
            if current == state.saved or current == (None, None):
                continue
            # The peer's revisions must be on disk before a checkpoint that relies on them.
            self.config.database.set_local(state.remote_revs_key, encode_json(state.remote_revs))
            body = state.checkpoint_body()
            properties = {"client": state.checkpoint_id}
            if state.checkpoint_rev:
                properties["rev"] = state.checkpoint_rev
            reply = await session.request(
                SET_CHECKPOINT, with_collection(properties, state.index), encode_json(body)
            )
            assert reply is not None
            if reply.is_error:
                log.warning(
                    "%s: setCheckpoint failed: %s %s",
                    self.config.url,
                    reply.error_code,
                    reply.error_message,
                )
                continue
            state.checkpoint_rev = reply.properties.get("rev")
            state.saved = current
            self.config.database.set_local("checkpoint/" + state.checkpoint_id, encode_json(body))


def _json_dict(raw: bytes | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
