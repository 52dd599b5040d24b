"""The passive side of replication: what a phone's replicator talks to.

``PassiveReplicator`` registers the protocol's handlers on a ``ReplicationSession`` for one
database: checkpoints, collections, the phone's pushes (the session's puller) and its pulls
(one pusher per ``subChanges``). It knows nothing of HTTP, TLS or sockets: the listener hands
it a BLIP session.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from fieldsync.blip import BLIPSession, IncomingRequest
from fieldsync.replication import checkpoints
from fieldsync.replication.deltas import make_delta_encoder
from fieldsync.replication.errors import RoutingError
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
    encode_json,
    is_true,
    parse_sequence,
)
from fieldsync.replication.notifier import ChangeNotifier
from fieldsync.replication.ports import ReplicatedCollection, ReplicatedDatabase
from fieldsync.replication.pusher import PushOptions
from fieldsync.replication.routing import CollectionRouter
from fieldsync.replication.session import ReplicationSession, storage_trouble
from fieldsync.replication.stats import ReplicationStats
from fieldsync.replication.versioning import WireFormat, peer_source
from fieldsync.store.errors import StorageError
from fieldsync.store.versions import BadVersion

log = logging.getLogger(__name__)

#: Free space below which pushes are refused (507): room left for checkpoints and logs.
DEFAULT_MIN_FREE_BYTES = 64 * 1024 * 1024


def _free_space_of(database: object) -> Callable[[], int]:
    path = Path(getattr(database, "path", "."))
    return lambda: shutil.disk_usage(path).free


Target = ReplicatedCollection | None


class PassiveReplicator:
    """Serves one connection's replication requests against one database."""

    def __init__(
        self,
        session: BLIPSession,
        database: ReplicatedDatabase,
        collections: Mapping[str, ReplicatedCollection],
        *,
        notifier: ChangeNotifier,
        read_only: bool = False,
        enable_delta_sync: bool = False,
        stats: ReplicationStats | None = None,
        wire: WireFormat = WireFormat.REV_TREES,
        min_free_bytes: int | None = None,
        free_space: Callable[[], int] | None = None,
    ) -> None:
        """``collections`` maps ``scope.name`` to the store collections this peer may use;
        ``wire`` is the spelling the negotiated subprotocol chose
        (``WireFormat.for_subprotocol``). Pushes are refused (507) while the database's file
        system has less than ``min_free_bytes`` free (default :data:`DEFAULT_MIN_FREE_BYTES`;
        ``free_space()``, default: measured at the database's folder), so checkpoints and logs
        still fit on a full card."""
        self._read_only = read_only
        self._min_free_bytes = DEFAULT_MIN_FREE_BYTES if min_free_bytes is None else min_free_bytes
        self._free_space = free_space or _free_space_of(database)
        self._free_checked = (0.0, 0)
        self._delta_sync = enable_delta_sync
        self.session = ReplicationSession(
            session,
            database,
            notifier=notifier,
            router=CollectionRouter(collections.get("_default._default"), collections),
            stats=stats,
            accept_deltas=enable_delta_sync,
            wire=wire,
            prove_known_blobs=True,
        )
        self.stats = self.session.stats
        # Collections with a subChanges feed running on this connection.
        self._feeding: set[str] = set()
        register = self.session.register
        register(GET_CHECKPOINT, self._get_checkpoint)
        register(SET_CHECKPOINT, self._set_checkpoint)
        register(GET_COLLECTIONS, self._get_collections)
        register(SUB_CHANGES, self._sub_changes)
        register(CHANGES, self._changes)
        register(PROPOSE_CHANGES, self._propose_changes)
        register(REV, self._rev)
        register(NOREV, self._norev)
        register(GET_ATTACHMENT, self._get_attachment)
        register(PROVE_ATTACHMENT, self._prove_attachment)

    async def run(self) -> None:
        """Serve until the connection closes; then stop feeds and commit what arrived."""
        notifier = self.session.notifier
        notifier.acquire()
        try:
            await self.session.blip.run()
        finally:
            await self.session.close()
            notifier.release()

    # -- checkpoints --------------------------------------------------------------------------

    def _get_checkpoint(
        self, request: IncomingRequest, _target: Target, _index: int | None
    ) -> None:
        if self.session.peer.value is None and request.properties.get("client"):
            self.session.peer.value = f"cp:{request.properties['client']}"
        checkpoints.get_checkpoint(self.session.database, request)

    async def _set_checkpoint(
        self, request: IncomingRequest, _target: Target, _index: int | None
    ) -> None:
        await checkpoints.set_checkpoint(self.session.database, request)

    def _get_collections(
        self, request: IncomingRequest, _target: Target, _index: int | None
    ) -> None:
        try:
            root = request.json()
        except ValueError:
            root = None
        if not isinstance(root, dict):
            request.respond_error("BLIP", 400, "Invalid getCollections message: no root")
            return
        ids, names = root.get("checkpoint_ids"), root.get("collections")
        if not isinstance(ids, list) or not ids or not isinstance(names, list) or not names:
            request.respond_error(
                "BLIP", 400, "Invalid getCollections message: no checkpoint_ids or collections"
            )
            return
        if len(ids) != len(names) or not all(isinstance(n, str) and n for n in names):
            request.respond_error("BLIP", 400, "Invalid getCollections message: bad entries")
            return
        try:
            source = peer_source(request.properties.get("uuid"))
        except BadVersion as exc:
            request.respond_error("HTTP", 400, f"Invalid getCollections message: {exc}")
            return
        # The phone's key for its per-document lastLegacyRevID (VV-NOTES §7): its source ID
        # (LiteCore 4.0.3+ sends its database UUID), else its first checkpoint ID.
        self.session.peer.value = str(source) if source is not None else f"cp:{ids[0]}"
        try:
            resolved = self.session.router.resolve_collections(names)
        except RoutingError as exc:
            request.respond_error("BLIP", exc.status, exc.message)
            return
        answers = checkpoints.collection_checkpoints(self.session.database, ids, resolved)
        log.info(
            "%s: collections %s",
            self.session.name,
            ", ".join(
                f"{n}{'' if c is not None else ' (missing)'}"
                for n, c in zip(names, resolved, strict=True)
            ),
        )
        request.respond({}, encode_json(answers))

    # -- the phone pulls ----------------------------------------------------------------------

    def _sub_changes(self, request: IncomingRequest, target: Target, index: int | None) -> None:
        if target is None:  # the router gives every collection message a collection
            return
        properties = request.properties
        mismatch = self.session.wire.versioning_mismatch(properties.get("versioning"))
        if mismatch is not None:
            request.respond_error("LiteCore", 501, mismatch)
            return
        if properties.get("filter"):
            request.respond_error("LiteCore", 19, "Filtering not supported")
            return
        if target.full_name in self._feeding:  # one feed per collection, as Sync Gateway
            request.respond_error(
                "HTTP",
                409,
                f"a subChanges feed of {target.full_name} is already running on this connection",
            )
            return
        doc_ids = None
        if request.body:
            try:
                options = request.json()
            except ValueError:
                request.respond_error("BLIP", 400, "subChanges body is not JSON")
                return
            raw_ids = options.get("docIDs") if isinstance(options, dict) else None
            if isinstance(raw_ids, list):
                doc_ids = frozenset(d for d in raw_ids if isinstance(d, str))
        batch = properties.get("batch")
        push_options = PushOptions(
            continuous=is_true(properties.get("continuous")),
            since=parse_sequence(properties.get("since")),
            batch_size=int(batch)
            if batch and batch.isdigit() and int(batch) > 0
            else CHANGES_BATCH_SIZE,
            active_only=is_true(properties.get("activeOnly")),
            doc_ids=doc_ids,
            send_replacement_revs=is_true(properties.get("sendReplacementRevs")),
            delta_encoder=make_delta_encoder() if self._delta_sync else None,
        )
        request.respond()
        pusher = self.session.add_pusher(
            target, index, options=push_options, mode=self.session.changes_mode(target)
        )
        self.stats.pulling = True
        log.info(
            "%s: peer pulls %s%s since #%d",
            self.session.name,
            target.full_name,
            " continuously" if push_options.continuous else "",
            push_options.since,
        )
        name = target.full_name
        self._feeding.add(name)
        feed = self.session.start_feed(pusher)
        feed.add_done_callback(lambda _task: self._feeding.discard(name))

    def _get_attachment(
        self, request: IncomingRequest, _target: Target, _index: int | None
    ) -> None:
        self.session.blobs.get_attachment(request)

    def _prove_attachment(
        self, request: IncomingRequest, _target: Target, _index: int | None
    ) -> None:
        self.session.blobs.prove_attachment(request)

    # -- the phone pushes ---------------------------------------------------------------------

    def _refuse_push(self, request: IncomingRequest) -> bool:
        if self._read_only:
            request.respond_error("HTTP", 403, "Attempting to push to a pull-only replicator")
            return True
        if self._min_free_bytes > 0 and self._free() < self._min_free_bytes:
            trouble = StorageError(
                507,
                f"insufficient storage: less than {self._min_free_bytes // (1024 * 1024)} MiB "
                "free on the device; pushes are refused until space is freed",
            )
            storage_trouble.report(self.session.name, trouble)
            request.respond_error("HTTP", 507, str(trouble))
            return True
        return False

    def _free(self) -> int:
        """Free bytes for the database, measured at most once a second."""
        checked_at, free = self._free_checked
        now = time.monotonic()
        if now - checked_at >= 1.0:
            try:
                free = self._free_space()
            except OSError:
                free = self._min_free_bytes  # cannot tell: do not refuse on a guess
            self._free_checked = (now, free)
        return free

    def _propose_changes(
        self, request: IncomingRequest, target: Target, _index: int | None
    ) -> None:
        if target is not None and not self._refuse_push(request):
            self.session.puller.handle_proposed_changes(request, target)

    def _changes(self, request: IncomingRequest, target: Target, index: int | None) -> None:
        if target is not None and not self._refuse_push(request):
            self.session.puller.handle_changes(request, target, index)

    def _rev(
        self, request: IncomingRequest, target: Target, index: int | None
    ) -> Awaitable[None] | None:
        if target is not None and not self._refuse_push(request):
            return self.session.puller.handle_rev(request, target, index)
        return None

    def _norev(self, request: IncomingRequest, _target: Target, index: int | None) -> None:
        self.session.puller.handle_norev(request, index)
