"""Replication checkpoints, both sides.

Passive: the peer stores its checkpoints here (``getCheckpoint``/``setCheckpoint``, and the
checkpoints ``getCollections`` returns). Active: the replicator keeps, per collection, where
it got to each way, in the peer (``setCheckpoint``) and in the local database, and resumes only
when both copies agree.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

from fieldsync import safejson
from fieldsync.blip import BLIPSession, IncomingRequest
from fieldsync.replication.messages import SET_CHECKPOINT, encode_json, with_collection
from fieldsync.replication.ports import ReplicatedCollection, ReplicatedDatabase
from fieldsync.replication.sequences import SequenceTracker
from fieldsync.replication.writer import WRITER
from fieldsync.store import CheckpointConflict, StoreError

log = logging.getLogger(__name__)

#: How often the active replicator saves its checkpoints while running.
CHECKPOINT_SAVE_INTERVAL = 1.0
#: Local value holding the random ID that makes this database's checkpoint IDs its own.
LOCAL_ID_KEY = "replicator/local-uuid"

# -- passive side: the peer's checkpoints ----------------------------------------------------


def get_checkpoint(database: ReplicatedDatabase, request: IncomingRequest) -> None:
    client = request.properties.get("client")
    if not client:
        request.respond_error("BLIP", 400, "missing 'client' property")
        return
    found = database.get_checkpoint(client)
    if found is None:
        request.respond_error("HTTP", 404, "no such checkpoint")
        return
    body, rev = found
    request.respond({"rev": rev}, body)


async def set_checkpoint(database: ReplicatedDatabase, request: IncomingRequest) -> None:
    """Store a peer's checkpoint. The write runs on the store-writer thread (after the
    revisions queued before it), so the event loop never waits for a write lock."""
    client = request.properties.get("client")
    if not client:
        request.respond_error("BLIP", 400, "missing 'client' property")
        return
    try:
        safejson.loads(request.body or b"null")
    except ValueError:
        request.respond_error("BLIP", 400, "checkpoint body is not JSON")
        return
    try:
        rev = await asyncio.get_running_loop().run_in_executor(
            WRITER,
            database.set_checkpoint,
            client,
            request.body,
            request.properties.get("rev") or None,
        )
    except CheckpointConflict:
        request.respond_error("HTTP", 409, "revision ID mismatch")
        return
    except StoreError as exc:
        request.respond_error("HTTP", 500, f"cannot save checkpoint: {exc}")
        return
    request.respond({"rev": rev})


def collection_checkpoints(
    database: ReplicatedDatabase,
    checkpoint_ids: Sequence[object],
    resolved: Sequence[ReplicatedCollection | None],
) -> list[dict[str, Any] | None]:
    """The ``getCollections`` answer: per collection its stored checkpoint with ``rev``
    (``{}`` when there is none yet), or ``None`` for a collection not served here."""
    answers: list[dict[str, Any] | None] = []
    for checkpoint_id, collection in zip(checkpoint_ids, resolved, strict=True):
        if collection is None:
            answers.append(None)
            continue
        found = database.get_checkpoint(str(checkpoint_id))
        entry: dict[str, Any] = {}
        if found is not None:
            body, rev = found
            with contextlib.suppress(ValueError):
                loaded = safejson.loads(body)
                if isinstance(loaded, dict):
                    entry = loaded
            entry["rev"] = rev
        answers.append(entry)
    return answers


# -- active side: our own checkpoints --------------------------------------------------------


def local_id(database: ReplicatedDatabase) -> str:
    """This database's replicator ID (created on first use)."""
    stored = database.get_local(LOCAL_ID_KEY)
    if stored:
        return stored.decode()
    new_id = uuid.uuid4().hex
    database.set_local(LOCAL_ID_KEY, new_id.encode())
    return new_id


def checkpoint_id(local: str, endpoint: str, collection: ReplicatedCollection) -> str:
    seed = f"{local}\0{endpoint}\0{collection.full_name}"
    return "cp-" + base64.b64encode(hashlib.sha1(seed.encode()).digest()).decode()


class CollectionCheckpoint:
    """Where the active replicator got to in one collection, each way."""

    def __init__(self, checkpoint_id: str) -> None:
        self.id = checkpoint_id
        self.rev: str | None = None  # the peer's revision of the stored checkpoint
        self.push_tracker = SequenceTracker(0)
        self.pull_tracker = SequenceTracker(None)
        self.saved: tuple[Any, Any] | None = None
        #: The revision the remote is known to have of each document (the serverRevID to
        #: propose against), kept in the local database between runs.
        self.remote_revs: dict[str, str] = {}

    @property
    def remote_revs_key(self) -> str:
        return "remote-revs/" + self.id

    @property
    def local_key(self) -> str:
        return "checkpoint/" + self.id

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"time": int(time.time())}
        if self.push_tracker.checkpoint:
            body["local"] = self.push_tracker.checkpoint
        if self.pull_tracker.checkpoint is not None:
            body["remote"] = self.pull_tracker.checkpoint
        return body

    def adopt(self, database: ReplicatedDatabase, remote: dict[str, Any] | None) -> None:
        """Resume from the remote checkpoint only if it matches the one saved locally."""
        self.remote_revs.update(json_object(database.get_local(self.remote_revs_key)) or {})
        local = json_object(database.get_local(self.local_key))
        if (
            remote
            and local
            and remote.get("local") == local.get("local")
            and remote.get("remote") == local.get("remote")
        ):
            self.push_tracker = SequenceTracker(remote.get("local") or 0)
            self.pull_tracker = SequenceTracker(remote.get("remote"))
            self.saved = (remote.get("local"), remote.get("remote"))

    async def save(
        self, session: BLIPSession, database: ReplicatedDatabase, index: int | None
    ) -> None:
        """Store the checkpoint in the peer and then locally, if it moved."""
        current = (self.push_tracker.checkpoint or None, self.pull_tracker.checkpoint)
        if current == self.saved or current == (None, None):
            return
        # The peer's revisions must be on disk before a checkpoint that relies on them. Local
        # writes go through the writer thread: a foreign write lock must not hold the loop.
        loop = asyncio.get_running_loop()
        remote_revs = encode_json(self.remote_revs)
        await loop.run_in_executor(WRITER, database.set_local, self.remote_revs_key, remote_revs)
        body = self.body()
        properties = {"client": self.id}
        if self.rev:
            properties["rev"] = self.rev
        reply = await session.request(
            SET_CHECKPOINT, with_collection(properties, index), encode_json(body)
        )
        assert reply is not None
        if reply.is_error:
            log.warning(
                "%s: setCheckpoint failed: %s %s",
                session.name,
                reply.error_code,
                reply.error_message,
            )
            return
        self.rev = reply.properties.get("rev")
        self.saved = current
        await loop.run_in_executor(WRITER, database.set_local, self.local_key, encode_json(body))


def json_object(raw: bytes | None) -> dict[str, Any] | None:
    """The JSON object in ``raw``; ``None`` if it is empty, not JSON or not an object."""
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
