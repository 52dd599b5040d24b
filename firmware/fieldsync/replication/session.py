"""The wiring one replication connection shares, whichever side opened it.

A ``ReplicationSession`` owns, for one BLIP connection and one database, the collection
router, the inserter (batched durable writes), the blob server, the puller (revisions coming
in) and the pushers (revisions going out). ``PassiveReplicator`` (a phone connected to us) and
``Replicator`` (we connected out) are thin roles on top of it: they decide which messages to
register and when the replication is over.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fieldsync.blip import BLIPSession, IncomingRequest
from fieldsync.replication.blobs import BlobServer
from fieldsync.replication.errors import RoutingError
from fieldsync.replication.inserter import Inserter
from fieldsync.replication.messages import LARGE_BODY_PROFILES
from fieldsync.replication.notifier import ChangeNotifier
from fieldsync.replication.ports import ReplicatedCollection, ReplicatedDatabase
from fieldsync.replication.puller import Puller, PullerHooks
from fieldsync.replication.pusher import Pusher, PushOptions
from fieldsync.replication.pushmodes import ChangesMode, PushMode, VectorChangesMode
from fieldsync.replication.routing import CollectionRouter
from fieldsync.replication.sequences import SequenceTracker
from fieldsync.replication.stats import ReplicationStats
from fieldsync.replication.versioning import PeerKey, WireFormat
from fieldsync.store.errors import StorageError, storage_error

log = logging.getLogger(__name__)


class StorageTrouble:
    """One log line per episode of storage failures (a full disk fails every revision and
    checkpoint until space is freed): a line when it starts, none while it goes on."""

    def __init__(self, quiet_after: float = 60.0) -> None:
        self.quiet_after = quiet_after
        self._last: float | None = None
        self.suppressed = 0

    def report(self, peer: str, trouble: StorageError) -> None:
        now = time.monotonic()
        if self._last is None or now - self._last > self.quiet_after:
            extra = f" ({self.suppressed} more since the last report)" if self.suppressed else ""
            log.error("%s: %s%s", peer, trouble, extra)
            self.suppressed = 0
        else:
            self.suppressed += 1
        self._last = now


#: Shared by every connection of the process: the storage is the device's, not a peer's.
storage_trouble = StorageTrouble()

#: A handler for a message that may address a collection: (request, collection, index).
#: ``collection`` is ``None`` only for messages outside ``COLLECTION_PROFILES``.
RoutedHandler = Callable[
    [IncomingRequest, ReplicatedCollection | None, int | None], Awaitable[None] | None
]


class ReplicationSession:
    """Everything one replication connection uses, over one BLIP session and one database."""

    def __init__(
        self,
        blip: BLIPSession,
        database: ReplicatedDatabase,
        *,
        notifier: ChangeNotifier,
        router: CollectionRouter[ReplicatedCollection],
        stats: ReplicationStats | None = None,
        accept_deltas: bool = False,
        hooks: PullerHooks | None = None,
        wire: WireFormat = WireFormat.REV_TREES,
        prove_known_blobs: bool = False,
    ) -> None:
        """``wire``: how this connection spells revisions, from the negotiated subprotocol.
        ``prove_known_blobs``: a peer pushing a revision that names a blob we hold (and did not
        send it on this connection) must prove it has it (the passive side, as Sync Gateway)."""
        self.blip = blip
        self.wire = wire
        #: The peer's key for per-phone bookkeeping (CBMobile_4: its source ID from
        #: ``getCollections``' ``uuid``, else its checkpoint ID); ``None`` until known.
        self.peer = PeerKey()
        self.database = database
        self.notifier = notifier
        self.router = router
        self.stats = stats or ReplicationStats()
        self.stats.byte_counter = blip.protocol
        self.inserter = Inserter(database)
        self.blobs = BlobServer(database, self.stats)
        self.puller = Puller(
            blip,
            database,
            stats=self.stats,
            inserter=self.inserter,
            accept_deltas=accept_deltas,
            hooks=hooks,
            wire=wire,
            peer=self.peer,
            served_blobs=self.blobs.served if prove_known_blobs else None,
        )
        self.pushers: list[Pusher] = []
        self._feeds: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return self.blip.name

    def changes_mode(self, collection: ReplicatedCollection) -> PushMode:
        """How this connection feeds a peer that pulls ``collection`` (``changes`` lists in
        the negotiated spelling)."""
        if self.wire.uses_versions:
            return VectorChangesMode(collection, self.peer)
        return ChangesMode()

    # -- incoming messages --------------------------------------------------------------------

    def register(self, profile: str, handler: RoutedHandler) -> None:
        """Handle ``profile`` once the router has found the collection the message addresses
        (a message that breaks the connection's collection mode is refused here)."""

        def handle(request: IncomingRequest) -> Awaitable[None] | None:
            try:
                collection, index = self.router.route(profile, request.properties)
            except RoutingError as exc:
                log.info("%s: %s refused: %s", self.name, profile, exc.message)
                request.respond_error("HTTP", exc.status, exc.message)
                return None
            try:
                result = handler(request, collection, index)
            except Exception as exc:
                self._answer_storage_trouble(request, exc)
                return None
            if isinstance(result, asyncio.Future):
                # A revision waiting for its commit (the puller answers it when it resolves).
                result.add_done_callback(lambda done: self._after(request, done))
                return result
            if inspect.isawaitable(result):
                return self._awaited(request, result)
            return None

        self.blip.register(profile, handle, large_bodies=profile in LARGE_BODY_PROFILES)

    async def _awaited(self, request: IncomingRequest, awaitable: Awaitable[None]) -> None:
        try:
            await awaitable
        except Exception as exc:
            self._answer_storage_trouble(request, exc)

    def _after(self, request: IncomingRequest, done: asyncio.Future[Any]) -> None:
        """A storage failure a handler's future carries is answered here, as an exception
        ``_awaited`` catches; anything else is left to the BLIP session (logged, 500)."""
        if done.cancelled() or request.responded:
            return
        exc = done.exception()
        if isinstance(exc, Exception) and storage_error(exc) is not None:
            self._answer_storage_trouble(request, exc)

    def _answer_storage_trouble(self, request: IncomingRequest, exc: Exception) -> None:
        """Answer a handler's storage failure (full disk, lock, I/O) with its status; re-raise
        anything else (a bug: the BLIP session logs it and answers 500)."""
        trouble = storage_error(exc)
        if trouble is None:
            raise exc
        storage_trouble.report(self.name, trouble)
        self.stats.record_error(str(trouble))
        if not request.responded:
            request.respond_error("HTTP", trouble.status, str(trouble))

    # -- outgoing revisions -------------------------------------------------------------------

    def add_pusher(
        self,
        collection: ReplicatedCollection,
        index: int | None,
        *,
        options: PushOptions,
        mode: PushMode | None = None,
        tracker: SequenceTracker | None = None,
    ) -> Pusher:
        """A Pusher for ``collection`` on this connection (closed with the session)."""
        pusher = Pusher(
            self.blip,
            collection,
            index,
            options=options,
            mode=mode,
            stats=self.stats,
            notifier=self.notifier,
            served_blobs=self.blobs.served,
            tracker=tracker,
        )
        self.pushers.append(pusher)
        return pusher

    def start_feed(self, pusher: Pusher) -> asyncio.Task[None]:
        """Run a pusher in the background until caught up (or the connection ends); a failing
        feed is logged and counted, never fatal to the connection. Returns its task."""
        task = asyncio.get_running_loop().create_task(self._run_feed(pusher))
        self._feeds.add(task)
        task.add_done_callback(self._feeds.discard)
        return task

    async def _run_feed(self, pusher: Pusher) -> None:
        try:
            await pusher.run()
            await pusher.wait_idle()
            log.info("%s: %s caught up (%d docs sent)", self.name, pusher.name, self.stats.docs_out)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one collection's feed failing must not kill the server
            self.stats.record_error(str(exc))
            log.warning("%s: feed of %s stopped: %s", self.name, pusher.name, exc)

    # -- the end ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the feeds and commit what arrived (received revisions stay durable)."""
        for task in list(self._feeds):
            task.cancel()
        for pusher in self.pushers:
            await pusher.close()
        await self.inserter.aclose()
