"""Batching incoming revisions into durable transactions.

Revisions arriving close together are inserted in one SQLite transaction (LiteCore batches
the same way: up to 100 revisions or 20 ms). Each caller gets its own result only once the
transaction holding its revision has durably committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from fieldsync.replication.messages import INSERTION_BATCH_SIZE, INSERTION_DELAY
from fieldsync.replication.ports import ReplicatedCollection
from fieldsync.store import IncomingRevision, InsertResult
from fieldsync.store.models import IncomingVersioned

log = logging.getLogger(__name__)


R = TypeVar("R", IncomingRevision, IncomingVersioned)
_Batch = tuple[ReplicatedCollection, list[tuple[R, asyncio.Future[InsertResult]]]]

#: What the inserter takes: a rev-tree revision, or (CBMobile_4) a revision named by a version.
Incoming = IncomingRevision | IncomingVersioned


class Inserter:
    """Collects revisions per collection and commits them in batches."""

    def __init__(
        self, *, batch_size: int = INSERTION_BATCH_SIZE, delay: float = INSERTION_DELAY
    ) -> None:
        self._batch_size = batch_size
        self._delay = delay
        self._pending: list[
            tuple[ReplicatedCollection, Incoming, asyncio.Future[InsertResult]]
        ] = []
        self._timer: asyncio.TimerHandle | None = None

    def insert(
        self, collection: ReplicatedCollection, revision: Incoming
    ) -> asyncio.Future[InsertResult]:
        """Queue a revision; the future resolves after its batch commits."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[InsertResult] = loop.create_future()
        self._pending.append((collection, revision, future))
        if len(self._pending) >= self._batch_size:
            self.flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._delay, self.flush)
        return future

    def flush(self) -> None:
        """Commit everything queued, one transaction per collection and kind of revision."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        trees: dict[int, _Batch[IncomingRevision]] = {}
        vectors: dict[int, _Batch[IncomingVersioned]] = {}
        for collection, revision, future in pending:
            if isinstance(revision, IncomingVersioned):
                vectors.setdefault(id(collection), (collection, []))[1].append((revision, future))
            else:
                trees.setdefault(id(collection), (collection, []))[1].append((revision, future))
        for collection, tree_items in trees.values():
            self._commit(collection, tree_items, collection.insert_revisions)
        for collection, vector_items in vectors.values():
            self._commit(collection, vector_items, collection.insert_versioned)

    @staticmethod
    def _commit(
        collection: ReplicatedCollection,
        items: list[tuple[R, asyncio.Future[InsertResult]]],
        insert: Callable[[Sequence[R]], list[InsertResult]],
    ) -> None:
        try:
            results = insert([rev for rev, _ in items])
        except Exception as exc:  # a failed transaction fails every revision in it
            log.error(
                "inserting %d revisions into %s failed: %s",
                len(items),
                collection.full_name,
                exc,
            )
            for _, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(items, results, strict=True):
            if not future.done():
                future.set_result(result)

    def close(self) -> None:
        """Commit what is queued (revisions already received stay durable)."""
        self.flush()
