"""The passive side of replication: what a phone's replicator talks to.

``PassiveReplicator`` registers the protocol's handlers on a BLIP session for one database:
checkpoints, collections, the phone's pushes (through a Puller) and its pulls (one Pusher per
``subChanges``). It knows nothing of HTTP, TLS or sockets: the listener hands it a session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from typing import Any

from fieldsync.blip import BLIPSession, IncomingRequest
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
    encode_json,
    is_true,
    parse_sequence,
)
from fieldsync.replication.notifier import ChangeNotifier
from fieldsync.replication.ports import ReplicatedCollection, ReplicatedDatabase
from fieldsync.replication.puller import Puller
from fieldsync.replication.pusher import Pusher, PushOptions
from fieldsync.replication.routing import CollectionRouter, RoutingError
from fieldsync.replication.stats import ReplicationStats
from fieldsync.store import CheckpointConflict, StoreError

log = logging.getLogger(__name__)


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
    ) -> None:
        """``collections`` maps ``scope.name`` to the store collections this peer may use."""
        self._session = session
        self._database = database
        self._notifier = notifier
        self._read_only = read_only
        self._delta_sync = enable_delta_sync
        self.stats = stats or ReplicationStats()
        self.stats.byte_counter = session.protocol
        self._router: CollectionRouter[ReplicatedCollection] = CollectionRouter(
            collections.get("_default._default"), collections
        )
        self._inserter = Inserter()
        self._puller = Puller(
            session,
            database,
            stats=self.stats,
            inserter=self._inserter,
            accept_deltas=enable_delta_sync,
        )
        self._pushers: list[Pusher] = []
        self._pusher_tasks: set[asyncio.Task[None]] = set()
        self._blobs = BlobServer(database, self.stats)
        handlers = {
            GET_CHECKPOINT: self._get_checkpoint,
            SET_CHECKPOINT: self._set_checkpoint,
            GET_COLLECTIONS: self._get_collections,
            SUB_CHANGES: self._sub_changes,
            CHANGES: self._changes,
            PROPOSE_CHANGES: self._propose_changes,
            REV: self._rev,
            NOREV: self._norev,
            GET_ATTACHMENT: self._get_attachment,
            PROVE_ATTACHMENT: self._prove_attachment,
        }
        for profile, handler in handlers.items():
            session.register(profile, self._routed(profile, handler))

    def _routed(self, profile: str, handler: Any) -> Any:
        async def handle(request: IncomingRequest) -> None:
            try:
                collection, index = self._router.route(profile, request.properties)
            except RoutingError as exc:
                log.info("%s: %s refused: %s", self._session.name, profile, exc.message)
                request.respond_error("HTTP", exc.status, exc.message)
                return
            result = handler(request, collection, index)
            if asyncio.iscoroutine(result):
                await result

        return handle

    async def run(self) -> None:
        """Serve until the connection closes; then stop feeds and commit what arrived."""
        self._notifier.acquire()
        try:
            await self._session.run()
        finally:
            for task in list(self._pusher_tasks):
                task.cancel()
            for pusher in self._pushers:
                await pusher.close()
            self._inserter.close()
            self._notifier.release()

    # -- checkpoints --------------------------------------------------------------------------

    def _get_checkpoint(
        self, request: IncomingRequest, _collection: ReplicatedCollection, _index: Any
    ) -> None:
        client = request.properties.get("client")
        if not client:
            request.respond_error("BLIP", 400, "missing 'client' property")
            return
        found = self._database.get_checkpoint(client)
        if found is None:
            request.respond_error("HTTP", 404, "no such checkpoint")
            return
        body, rev = found
        request.respond({"rev": rev}, body)

    def _set_checkpoint(
        self, request: IncomingRequest, _collection: ReplicatedCollection, _index: Any
    ) -> None:
        client = request.properties.get("client")
        if not client:
            request.respond_error("BLIP", 400, "missing 'client' property")
            return
        try:
            json.loads(request.body or b"null")
        except ValueError:
            request.respond_error("BLIP", 400, "checkpoint body is not JSON")
            return
        try:
            rev = self._database.set_checkpoint(
                client, request.body, request.properties.get("rev") or None
            )
        except CheckpointConflict:
            request.respond_error("HTTP", 409, "revision ID mismatch")
            return
        except StoreError as exc:
            request.respond_error("HTTP", 500, f"cannot save checkpoint: {exc}")
            return
        request.respond({"rev": rev})

    def _get_collections(
        self, request: IncomingRequest, _collection: ReplicatedCollection, _index: Any
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
            resolved = self._router.resolve_collections(names)
        except RoutingError as exc:
            request.respond_error("BLIP", exc.status, exc.message)
            return
        answers: list[Any] = []
        for checkpoint_id, collection in zip(ids, resolved, strict=True):
            if collection is None:
                answers.append(None)
                continue
            found = self._database.get_checkpoint(str(checkpoint_id))
            entry: dict[str, Any] = {}
            if found is not None:
                body, rev = found
                with contextlib.suppress(ValueError):
                    loaded = json.loads(body)
                    if isinstance(loaded, dict):
                        entry = loaded
                entry["rev"] = rev
            answers.append(entry)
        log.info(
            "%s: collections %s",
            self._session.name,
            ", ".join(
                f"{n}{'' if c is not None else ' (missing)'}"
                for n, c in zip(names, resolved, strict=True)
            ),
        )
        request.respond({}, encode_json(answers))

    # -- the phone pulls ----------------------------------------------------------------------

    def _sub_changes(
        self, request: IncomingRequest, collection: ReplicatedCollection, index: int | None
    ) -> None:
        properties = request.properties
        versioning = properties.get("versioning")
        if versioning and versioning != "rev-trees":
            request.respond_error("LiteCore", 501, "Incompatible document versioning.")
            return
        if properties.get("filter"):
            request.respond_error("LiteCore", 19, "Filtering not supported")
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
        pusher = Pusher(
            self._session,
            collection,
            index,
            options=push_options,
            stats=self.stats,
            notifier=self._notifier,
            served_blobs=self._blobs.served,
        )
        self._pushers.append(pusher)
        self.stats.pulling = True
        log.info(
            "%s: peer pulls %s%s since #%d",
            self._session.name,
            collection.full_name,
            " continuously" if push_options.continuous else "",
            push_options.since,
        )
        task = asyncio.get_running_loop().create_task(self._run_pusher(pusher))
        self._pusher_tasks.add(task)
        task.add_done_callback(self._pusher_tasks.discard)

    async def _run_pusher(self, pusher: Pusher) -> None:
        try:
            await pusher.run()
            await pusher.wait_idle()
            log.info(
                "%s: %s caught up (%d docs sent)",
                self._session.name,
                pusher.name,
                self.stats.docs_out,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one collection's feed failing must not kill the server
            self.stats.record_error(str(exc))
            log.warning("%s: feed of %s stopped: %s", self._session.name, pusher.name, exc)

    def _get_attachment(
        self, request: IncomingRequest, _collection: ReplicatedCollection, _index: Any
    ) -> None:
        self._blobs.get_attachment(request)

    def _prove_attachment(
        self, request: IncomingRequest, _collection: ReplicatedCollection, _index: Any
    ) -> None:
        self._blobs.prove_attachment(request)

    # -- the phone pushes ---------------------------------------------------------------------

    def _refuse_push(self, request: IncomingRequest) -> bool:
        if self._read_only:
            request.respond_error("HTTP", 403, "Attempting to push to a pull-only replicator")
            return True
        return False

    def _propose_changes(
        self, request: IncomingRequest, collection: ReplicatedCollection, _index: Any
    ) -> None:
        if not self._refuse_push(request):
            self._puller.handle_proposed_changes(request, collection)

    def _changes(
        self, request: IncomingRequest, collection: ReplicatedCollection, index: int | None
    ) -> None:
        if not self._refuse_push(request):
            self._puller.handle_changes(request, collection, index)

    async def _rev(
        self, request: IncomingRequest, collection: ReplicatedCollection, index: int | None
    ) -> None:
        if not self._refuse_push(request):
            await self._puller.handle_rev(request, collection, index)

    def _norev(
        self, request: IncomingRequest, _collection: ReplicatedCollection, index: int | None
    ) -> None:
        self._puller.handle_norev(request, index)
