"""Batching incoming revisions into durable transactions.

Revisions arriving close together are inserted in one SQLite transaction (LiteCore batches
the same way: up to 100 revisions or 20 ms). Each caller gets its own result only once the
transaction holding its revision has durably committed.

Threading rule (issue 13): the transactions run on ONE store-writer thread per process
(:data:`~fieldsync.replication.writer.WRITER`), in submission order, never on the event
loop: a commit's fsync, or a wait of seconds for another process's write lock, leaves every
session's loop free (ACKs, pings, reads through the engine's reader connection). While a
batch commits, the next one grows (up to :data:`MAX_BATCH`), so a busy peer gets fewer,
larger transactions; and the batches of all sessions queued while the thread was busy commit
together, in ONE transaction per database (one fsync for five phones). Results are handed
back to each batch's loop only after that commit; nothing else crosses the seam.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

from fieldsync.replication.messages import INSERTION_BATCH_SIZE, INSERTION_DELAY
from fieldsync.replication.ports import ReplicatedCollection, Transactional
from fieldsync.replication.writer import WRITER
from fieldsync.store import IncomingRevision, InsertResult
from fieldsync.store.errors import storage_error
from fieldsync.store.models import IncomingVersioned

log = logging.getLogger(__name__)


#: What the inserter takes: a rev-tree revision, or (CBMobile_4) a revision named by a version.
Incoming = IncomingRevision | IncomingVersioned

#: Most revisions in one transaction (a batch that grew while the previous one committed).
MAX_BATCH = 500

_Group = tuple[
    ReplicatedCollection,
    list[tuple[Incoming, "asyncio.Future[InsertResult]"]],
    Callable[[Sequence[Incoming]], list[InsertResult]],
]
_Outcome = tuple[list[InsertResult] | None, BaseException | None]


@dataclass(frozen=True, slots=True)
class _Entry:
    """One session's batch waiting for the writer thread."""

    groups: list[_Group]
    database: Transactional | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[_Outcome]]


_queue: list[_Entry] = []
_queue_lock = threading.Lock()
_drain_scheduled = False


class Inserter:
    """Collects revisions per collection and commits them in batches."""

    def __init__(
        self,
        database: Transactional | None = None,
        *,
        batch_size: int = INSERTION_BATCH_SIZE,
        delay: float = INSERTION_DELAY,
    ) -> None:
        """``database``: where the collections live; batches of several sessions on the same
        database then share one transaction (None: each batch commits on its own)."""
        self._database = database
        self._batch_size = batch_size
        self._delay = delay
        self._pending: list[
            tuple[ReplicatedCollection, Incoming, asyncio.Future[InsertResult]]
        ] = []
        self._timer: asyncio.TimerHandle | None = None
        self._committing: asyncio.Future[list[_Outcome]] | None = None
        # Its session's loop, once known: in Python 3.11 every get_running_loop() is a
        # getpid() system call, and insert() runs once per document (perf, issue 13).
        self._loop: asyncio.AbstractEventLoop | None = None

    def insert(
        self, collection: ReplicatedCollection, revision: Incoming
    ) -> asyncio.Future[InsertResult]:
        """Queue a revision; the future resolves after its batch commits."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[InsertResult] = loop.create_future()
        self._pending.append((collection, revision, future))
        if self._committing is not None:
            pass  # flushed when the batch being committed is done
        elif len(self._pending) >= self._batch_size:
            self.flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._delay, self.flush)
        return future

    def flush(self) -> None:
        """Start committing what is queued (one transaction per collection and kind of
        revision) on the writer thread, unless a batch is being committed: then it follows."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._committing is not None or not self._pending:
            return
        pending = self._pending[:MAX_BATCH]
        del self._pending[:MAX_BATCH]
        groups: dict[tuple[int, bool], _Group] = {}
        for collection, revision, future in pending:
            versioned = isinstance(revision, IncomingVersioned)
            group = groups.get((id(collection), versioned))
            if group is None:
                insert: Callable[[Sequence[Incoming]], list[InsertResult]] = (
                    collection.insert_versioned  # type: ignore[assignment]
                    if versioned
                    else collection.insert_revisions
                )
                group = groups[(id(collection), versioned)] = (collection, [], insert)
            group[1].append((revision, future))
        batch = list(groups.values())
        committing = _submit(batch, self._database)
        self._committing = committing
        committing.add_done_callback(lambda done: self._committed(batch, done))

    def _committed(self, batch: list[_Group], done: asyncio.Future[list[_Outcome]]) -> None:
        self._committing = None
        try:
            outcomes = done.result()
        except BaseException as exc:  # the executor itself failed (shut down at exit)
            outcomes = [(None, exc)] * len(batch)
        for (collection, items, _insert), (results, error) in zip(batch, outcomes, strict=True):
            if error is not None or results is None:
                if error is None or storage_error(error) is None:
                    # A storage failure (full disk, lock) is logged once per episode by the
                    # session that answers the peer; anything else is logged here.
                    log.error(
                        "inserting %d revisions into %s failed: %s",
                        len(items),
                        collection.full_name,
                        error,
                    )
                for _, future in items:
                    if not future.done():
                        future.set_exception(error or RuntimeError("no result"))
                continue
            for (_, future), result in zip(items, results, strict=True):
                if not future.done():
                    future.set_result(result)
        if self._pending:
            self.flush()

    def close(self) -> None:
        """Commit what is queued (revisions already received stay durable)."""
        self.flush()

    async def aclose(self) -> None:
        """Commit what is queued and wait until every batch is durable."""
        self.flush()
        while self._committing is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._committing)
            await asyncio.sleep(0)  # let _committed run and flush what followed
            self.flush()


def _submit(batch: list[_Group], database: Transactional | None) -> asyncio.Future[list[_Outcome]]:
    """Queue a batch for the writer thread; the future resolves (on this loop) after the
    transaction holding it committed."""
    global _drain_scheduled
    loop = asyncio.get_running_loop()
    future: asyncio.Future[list[_Outcome]] = loop.create_future()
    with _queue_lock:
        _queue.append(_Entry(batch, database, loop, future))
        schedule = not _drain_scheduled
        _drain_scheduled = True
    if schedule:
        WRITER.submit(_drain)
    return future


def _drain() -> None:
    """On the writer thread: commit every queued batch, one transaction per database."""
    global _drain_scheduled
    with _queue_lock:
        work = list(_queue)
        _queue.clear()
        _drain_scheduled = False
    by_database: dict[int, list[_Entry]] = {}
    for entry in work:
        key = id(entry.database) if entry.database is not None else id(entry)
        by_database.setdefault(key, []).append(entry)
    for entries in by_database.values():
        database = entries[0].database
        shared: AbstractContextManager[object] = (
            database.transaction()
            if database is not None and len(entries) > 1
            else contextlib.nullcontext()  # one session's batch commits on its own, as ever
        )
        results: list[list[_Outcome]] = []
        try:
            with shared:
                for entry in entries:
                    outcomes = _commit_all(entry.groups)
                    failed = next((error for _r, error in outcomes if error is not None), None)
                    if failed is not None and len(entries) > 1:
                        raise failed  # a storage error: none of the shared commit is durable
                    results.append(outcomes)
        except Exception as exc:
            results = [[(None, exc)] * len(entry.groups) for entry in entries]
        for entry, outcomes in zip(entries, results, strict=True):
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                entry.loop.call_soon_threadsafe(_resolve, entry.future, outcomes)


def _resolve(future: asyncio.Future[list[_Outcome]], outcomes: list[_Outcome]) -> None:
    if not future.done():
        future.set_result(outcomes)


def _commit_all(batch: list[_Group]) -> list[_Outcome]:
    """On the writer thread: one transaction per group; a failed one fails its revisions."""
    outcomes: list[_Outcome] = []
    for _collection, items, insert in batch:
        try:
            outcomes.append((insert([revision for revision, _ in items]), None))
        except Exception as exc:
            outcomes.append((None, exc))
    return outcomes
