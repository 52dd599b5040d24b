"""Sending one collection's changes and revisions to the peer.

The passive side runs a Pusher when the peer sends ``subChanges`` (the phone pulls); the active
replicator runs one to push. The Pusher announces changes in batches (``changes``, or
``proposeChanges`` when active), sends each revision the peer asks for as a ``rev`` message
with its history cut at what the peer knows, and remembers the blobs it sent so that the
peer's ``getAttachment`` requests can be authorised.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fieldsync import fastjson
from fieldsync.blip import BLIPSession, IncomingResponse
from fieldsync.replication.deltas import DeltaEncoder, is_delta_error
from fieldsync.replication.errors import ReplicationError
from fieldsync.replication.messages import (
    CHANGES_BATCH_SIZE,
    DEFAULT_MAX_HISTORY,
    MAX_CHANGE_LISTS_IN_FLIGHT,
    MAX_REV_BYTES_AWAITING_REPLY,
    NOREV,
    REV,
    encode_json,
    is_true,
    with_collection,
)
from fieldsync.replication.notifier import ChangeNotifier
from fieldsync.replication.ports import ReplicatedCollection
from fieldsync.replication.pushmodes import ChangesMode, PushMode
from fieldsync.replication.sequences import SequenceTracker
from fieldsync.replication.stats import ReplicationStats
from fieldsync.store import Change, Revision, find_blobs

log = logging.getLogger(__name__)

#: Revisions the peer asked for and not yet sent, per pusher: announcing more changes waits
#: while this many are queued (bounds memory; the byte window below bounds what is in flight).
MAX_REVS_QUEUED = 1000
#: Bytes of ``rev`` messages a BLIP message header and properties add, roughly.
_REV_OVERHEAD = 100
#: Revisions read from the store with one query, at most, and the body bytes they may hold
#: (the changes feed's sizes): a query per revision was the largest store cost of a pull.
READ_AHEAD_REVS = 32
READ_AHEAD_BYTES = 256 * 1024


@dataclass
class PushOptions:
    """How a Pusher behaves; the defaults are the passive side's."""

    continuous: bool = False
    since: int = 0
    batch_size: int = CHANGES_BATCH_SIZE
    active_only: bool = False
    doc_ids: frozenset[str] | None = None
    send_replacement_revs: bool = False
    delta_encoder: DeltaEncoder | None = None


class Pusher:
    """Feeds a collection's changes to the peer until caught up (or forever, if continuous)."""

    def __init__(
        self,
        session: BLIPSession,
        collection: ReplicatedCollection,
        collection_index: int | None,
        *,
        options: PushOptions,
        mode: PushMode | None = None,
        stats: ReplicationStats,
        notifier: ChangeNotifier | None,
        served_blobs: set[str],
        tracker: SequenceTracker | None = None,
        on_caught_up: Callable[[], None] | None = None,
    ) -> None:
        self._session = session
        self._collection = collection
        self._index = collection_index
        self._options = options
        self._mode: PushMode = mode if mode is not None else ChangesMode()
        self._stats = stats
        self._notifier = notifier
        self._served_blobs = served_blobs
        self.tracker = tracker or SequenceTracker(options.since)
        self._on_caught_up = on_caught_up
        self._lists = asyncio.Semaphore(MAX_CHANGE_LISTS_IN_FLIGHT)
        # Revisions proposed again after a conflict with an ancestor of theirs (at most once).
        self._retried: set[tuple[str, str]] = set()
        # Revisions wanted by the peer, sent by one loop (no task per revision); what is sent
        # and not yet answered is bounded by bytes, as LiteCore's Pusher does
        # (kMaxRevBytesAwaitingReply): with small documents the window holds ~2,000 revisions,
        # so the peer's inserter always has a full batch to commit.
        self._rev_queue: deque[tuple[Change, list[str], int, bool]] = deque()
        # Revisions read ahead for the head of the queue, by (docID, revID); None: unknown.
        self._read_ahead: dict[tuple[str, str], Revision | None] = {}
        self._rev_bytes_limit = MAX_REV_BYTES_AWAITING_REPLY
        self._rev_bytes = 0  # bytes sent and awaiting a reply
        self._revs_outstanding = 0  # queued or awaiting a reply
        self._rev_room = asyncio.Event()  # set when the byte window has room
        self._rev_room.set()
        self._queue_room = asyncio.Event()  # set when fewer than MAX_REVS_QUEUED are queued
        self._queue_room.set()
        self._revs_idle = asyncio.Event()  # set when no revision is queued or in flight
        self._revs_idle.set()
        self._sender: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._deltas_ok = False
        self.caught_up = asyncio.Event()
        self.failed: BaseException | None = None
        self.conflicts: list[tuple[str, str]] = []

    @property
    def name(self) -> str:
        return self._collection.full_name

    async def run(self) -> None:
        """Send changes until caught up; when continuous, keep sending as the database changes."""
        event = None
        if self._options.continuous and self._notifier is not None:
            event = self._notifier.subscribe(self._collection)
        try:
            last = self._options.since
            announced_caught_up = False
            while True:
                if event is not None:
                    event.clear()
                changes = self._collection.changes_since(
                    last,
                    limit=self._options.batch_size,
                    doc_ids=self._options.doc_ids,
                    # activeOnly skips tombstones in the initial backlog only; a deletion made
                    # while a continuous peer watches must reach it (as LiteCore does).
                    active_only=self._options.active_only and not announced_caught_up,
                )
                if changes:
                    last = changes[-1].sequence
                    while len(self._rev_queue) >= MAX_REVS_QUEUED:
                        self._queue_room.clear()
                        await self._queue_room.wait()
                    await self._lists.acquire()
                    self._spawn(self._await_reply(changes, self._announce(changes)))
                    continue
                if not announced_caught_up:
                    announced_caught_up = True
                    await self._finish_backlog(last)
                if not self._options.continuous or event is None:
                    return
                await event.wait()
        finally:
            if event is not None and self._notifier is not None:
                self._notifier.unsubscribe(self._collection, event)

    async def _finish_backlog(self, last: int) -> None:
        """The whole backlog is announced: say so (before or after its revisions are
        acknowledged, as the mode wants) and wait for the revisions."""
        notice = self._mode.caught_up_notice(continuous=self._options.continuous)
        early = notice and self._mode.caught_up_before_idle()
        if early:
            self._send_caught_up()
        self.tracker.caught_up(last)
        await self.wait_idle()
        if notice and not early:
            self._send_caught_up()
        self.caught_up.set()
        if self._on_caught_up is not None:
            self._on_caught_up()

    def _send_caught_up(self) -> None:
        self._session.send_nowait(
            self._mode.profile,
            with_collection({}, self._index),
            b"[]",
            urgent=True,
            no_reply=True,
        )

    async def wait_idle(self) -> None:
        """Wait until every announced change has been answered and its revision acknowledged."""
        while self._tasks or (self._revs_outstanding and self.failed is None):
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            else:
                await self._revs_idle.wait()
        if self.failed is not None:
            raise self.failed

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self.failed is None:
            self.failed = task.exception()

    async def close(self) -> None:
        self._read_ahead.clear()
        while self._rev_queue:
            change = self._rev_queue.popleft()[0]
            self._rev_finished(change)
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- announcing ---------------------------------------------------------------------------

    def _announce(self, changes: list[Change]) -> asyncio.Future[IncomingResponse]:
        """Send one change list now (so it goes out before any later message, such as the
        empty caught-up list) and return the future of its reply."""
        for change in changes:
            self.tracker.add(change.sequence)
        self._stats.in_flight += len(changes)
        properties, entries = self._mode.announcement(changes)
        future = self._session.send_nowait(
            self._mode.profile,
            with_collection(properties, self._index),
            encode_json(entries),
            urgent=True,
            compressed=True,
        )
        assert future is not None
        return future

    async def _await_reply(
        self, changes: list[Change], future: asyncio.Future[IncomingResponse]
    ) -> None:
        try:
            reply = await future
        except BaseException:
            self._stats.in_flight -= len(changes)
            raise
        finally:
            self._lists.release()
        self._handle_reply(changes, reply)

    def _handle_reply(self, changes: list[Change], reply: IncomingResponse) -> None:
        if reply.is_error:
            self._stats.in_flight -= len(changes)
            message = (
                f"peer refused '{self._mode.profile}' for "
                f"{self.name}: {reply.error_domain} {reply.error_code} {reply.error_message}"
            )
            self._stats.record_error(message)
            raise ReplicationError(message)
        max_history = _int(reply.properties.get("maxHistory"), DEFAULT_MAX_HISTORY)
        if is_true(reply.properties.get("deltas")):
            self._deltas_ok = True
        try:
            answers = fastjson.loads(reply.body) if reply.body else []
        except ValueError:
            answers = None
        if not isinstance(answers, list):
            self._stats.in_flight -= len(changes)
            raise ReplicationError(f"peer sent a malformed reply to changes for {self.name}")
        retry: list[Change] = []
        for position, change in enumerate(changes):
            answer = answers[position] if position < len(answers) else 0
            known, conflict = self._mode.wanted(change, answer)
            if conflict and self._builds_on(change, conflict):
                # LiteCore's shouldRetryConflictWithNewerAncestor: our revision already builds
                # on the peer's (we learned it some other way, e.g. the same tombstone made on
                # both sides): propose it again against that one.
                self._mode.peer_has(change.doc_id, conflict)
                self._retried.add((change.doc_id, change.rev_id))
                self._stats.in_flight -= 1  # counted again when it is announced again
                retry.append(change)
                continue
            if conflict is not None:
                self.conflicts.append((change.doc_id, conflict))
                log.info(
                    "%s: peer has a conflicting revision of '%s'",
                    self.name,
                    change.doc_id,
                )
            if known is None:
                self._stats.in_flight -= 1
                self.tracker.complete(change.sequence)
                continue
            self._queue_rev(change, known, max_history, True)
        if retry:
            self._spawn(self._announce_again(retry))

    async def _announce_again(self, changes: list[Change]) -> None:
        await self._lists.acquire()
        await self._await_reply(changes, self._announce(changes))

    def _builds_on(self, change: Change, peer_rev: str) -> bool:
        """Whether ``change``'s revision descends from ``peer_rev`` (retried once per revision)."""
        if (change.doc_id, change.rev_id) in self._retried:
            return False
        history = self._collection.rev_history(change.doc_id, change.rev_id)
        return peer_rev in history[1:]

    # -- revisions ----------------------------------------------------------------------------

    def _queue_rev(
        self,
        change: Change,
        known: list[str],
        max_history: int,
        deltas: bool,
        *,
        first: bool = False,
    ) -> None:
        item = (change, known, max_history, deltas)
        if first:
            self._rev_queue.appendleft(item)
        else:
            self._rev_queue.append(item)
        self._revs_outstanding += 1
        self._revs_idle.clear()
        # A sender that has left its loop but whose done-callback has not run yet is done:
        # start another, or this revision would wait forever.
        if self._sender is None or self._sender.done():
            self._start_sender()

    def _start_sender(self) -> None:
        self._sender = asyncio.get_running_loop().create_task(self._send_revs())
        self._tasks.add(self._sender)
        self._sender.add_done_callback(self._sender_done)

    def _sender_done(self, task: asyncio.Task[None]) -> None:
        if self._sender is task:
            self._sender = None
        self._task_done(task)
        if self.failed is not None:
            self._revs_idle.set()  # wait_idle raises the failure

    async def _send_revs(self) -> None:
        """Send queued revisions while the byte window has room; replies are handled by
        callbacks (``_rev_replied``)."""
        queue = self._rev_queue
        while queue:
            while self._rev_bytes >= self._rev_bytes_limit:
                self._rev_room.clear()
                await self._rev_room.wait()
            if not queue:
                break
            change, known, max_history, deltas = queue.popleft()
            if len(queue) < MAX_REVS_QUEUED:
                self._queue_room.set()
            try:
                self._send_rev_now(change, known, max_history, deltas)
            except BaseException:
                self._rev_finished(change)
                raise
            if self._rev_bytes < self._rev_bytes_limit and len(queue) % 50 == 0:
                await asyncio.sleep(0)  # let replies and other sessions in
        self._queue_room.set()

    def _rev_finished(self, change: Change) -> None:
        self._stats.in_flight -= 1
        self.tracker.complete(change.sequence)
        self._revs_outstanding -= 1
        if not self._revs_outstanding:
            self._revs_idle.set()

    def _send_rev_now(
        self, change: Change, known: list[str], max_history: int, deltas: bool
    ) -> None:
        """Send one revision (or a ``norev``); finished now, or when its reply arrives."""
        collection = self._collection
        revision = self._read(change)
        properties: dict[str, str] = {}
        if revision is None or revision.body is None:
            current = collection.get_revision(change.doc_id)
            if (
                self._options.send_replacement_revs
                and current is not None
                and current.body is not None
            ):
                properties["replacedRev"] = self._mode.name(change)
                revision = current
            else:
                self._session.send_nowait(
                    NOREV,
                    with_collection(
                        {
                            "id": change.doc_id,
                            "rev": self._mode.name(change),
                            "sequence": str(change.sequence),
                            "error": "404",
                            "reason": "revision is no longer available",
                        },
                        self._index,
                    ),
                    no_reply=True,
                )
                self._rev_finished(change)
                return
        spelled = self._mode.spell_rev(collection, revision, known, max_history)
        properties.update(
            {"id": change.doc_id, "rev": spelled.rev, "sequence": str(change.sequence)}
        )
        if revision.deleted:
            properties["deleted"] = "1"
        if spelled.history:
            properties["history"] = spelled.history
        properties.update(self._mode.rev_properties())
        body = revision.body
        if body is None:  # replaced above by a revision that has one, or answered with norev
            self._rev_finished(change)
            return
        if b'"digest"' in body:
            self._remember_blobs(body)
        encoder = self._options.delta_encoder if deltas and self._deltas_ok and known else None
        message_body = body
        if encoder is not None:
            base_names = {rev_id: name for name, rev_id in spelled.delta_bases}
            delta = encoder(collection, change.doc_id, body, list(base_names))
            if delta is not None:
                base_rev_id, message_body = delta
                properties["deltaSrc"] = base_names.get(base_rev_id, base_rev_id)
        sent = self._session.send_nowait(
            REV, with_collection(properties, self._index), message_body, compressed=True
        )
        assert sent is not None  # a request that wants a reply has a future
        size = len(message_body) + _REV_OVERHEAD
        self._rev_bytes += size
        # The callback keeps names only, not the revision or its body: ~2,000 revisions may be
        # awaiting replies (the byte window), and their bodies are not needed any more.
        sent.add_done_callback(
            functools.partial(
                self._rev_replied,
                change,
                known,
                max_history,
                (properties["rev"], "deltaSrc" in properties, revision.rev_id),
                size,
            )
        )

    def _read(self, change: Change) -> Revision | None:
        """The revision ``change`` names, read with those queued behind it (one query for up
        to READ_AHEAD_REVS revisions or READ_AHEAD_BYTES of bodies)."""
        key = (change.doc_id, change.rev_id)
        ahead = self._read_ahead
        if key not in ahead:
            wanted = [key]
            size = change.body_size
            for queued, *_ in itertools.islice(self._rev_queue, READ_AHEAD_REVS - 1):
                size += queued.body_size
                if size > READ_AHEAD_BYTES:
                    break
                wanted.append((queued.doc_id, queued.rev_id))
            ahead = self._read_ahead = self._collection.get_revisions(wanted)
        return ahead.pop(key)

    def _rev_replied(
        self,
        change: Change,
        known: list[str],
        max_history: int,
        sent: tuple[str, bool, str],
        size: int,
        future: asyncio.Future[IncomingResponse],
    ) -> None:
        spelled_rev, delta, rev_id = sent
        self._rev_bytes -= size
        if self._rev_bytes < self._rev_bytes_limit:
            self._rev_room.set()
        if future.cancelled() or future.exception() is not None:
            if self.failed is None:
                self.failed = (
                    future.exception() if not future.cancelled() else asyncio.CancelledError()
                )
            self._rev_finished(change)
            return
        reply = future.result()
        if reply.is_error and delta and _is_delta_error(reply):
            # CBL-986: the peer could not apply the delta; resend in full
            self._revs_outstanding -= 1  # _queue_rev counts it again
            self._queue_rev(change, known, max_history, False, first=True)
            return
        try:
            self._handle_rev_reply(change, spelled_rev, rev_id, reply)
        finally:
            self._rev_finished(change)

    def _handle_rev_reply(
        self,
        change: Change,
        spelled_rev: str,
        rev_id: str,
        reply: IncomingResponse,
    ) -> None:
        if reply.is_error:
            message = (
                f"peer refused '{change.doc_id}' {spelled_rev} in {self.name}: "
                f"{reply.error_domain} {reply.error_code} {reply.error_message}"
            )
            self._stats.record_error(message)
            log.warning("%s", message)
            if reply.error_code == 409:
                self.conflicts.append((change.doc_id, rev_id))
            return
        self._stats.docs_out += 1
        self._mode.revision_sent(change.doc_id, rev_id)

    def _remember_blobs(self, body: bytes) -> None:
        try:
            document = json.loads(body)
        except ValueError:
            return
        if isinstance(document, dict):
            for blob in find_blobs(document):
                digest = blob.get("digest")
                if isinstance(digest, str):
                    self._served_blobs.add(digest)


def _int(value: str | None, default: int) -> int:
    try:
        return max(int(value), 1) if value is not None else default
    except ValueError:
        return default


def _is_delta_error(reply: IncomingResponse) -> bool:
    return is_delta_error(reply.error_domain, reply.error_code)
