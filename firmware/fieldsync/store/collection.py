"""A collection of documents, each with its revision tree, and its changes feed."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from fieldsync.store import doc_versions, expiry, revid
from fieldsync.store.bodies import EMPTY_BODY, decode_incoming, decode_stored, encode_body
from fieldsync.store.engine import Engine
from fieldsync.store.errors import ConflictError, InvalidInput, NotFoundError
from fieldsync.store.models import (
    Change,
    Document,
    IncomingRevision,
    IncomingVersioned,
    InsertResult,
    Revision,
)
from fieldsync.store.names import check_doc_id
from fieldsync.store.revtree import NODE_COLUMNS, BadHistory, RevTree, node_from_row
from fieldsync.store.versions import (
    HLV,
    BadVersion,
    DocVersions,
    Order,
    SourceID,
    Version,
    decide_incoming,
    decide_proposed,
    legacy_matches,
    legacy_version,
    merge,
    parse_revision,
    parse_stored,
    single_version_vector,
    trivial_merge,
)

#: Above this many docIDs a changes-feed filter is applied through a JSON array parameter; the
#: most documents one lookup query names (bulk lookups go in chunks of this size).
_INLINE_FILTER_LIMIT = 200


class _DocRow(NamedTuple):
    id: int
    rev_id: str
    deleted: bool
    body_size: int
    hlv: str | None = None
    base_legacy: str | None = None


class CollectionOwner(Protocol):
    """What a collection needs from its database (``Database`` satisfies it)."""

    @property
    def name(self) -> str: ...
    @property
    def engine(self) -> Engine: ...
    @property
    def max_rev_tree_depth(self) -> int: ...
    @property
    def keep_body_generations(self) -> int: ...
    def transaction(self) -> AbstractContextManager[object]: ...


class Collection:
    """The documents of one ``scope.name``. Obtain it from a ``Database``."""

    def __init__(
        self, database: CollectionOwner, collection_id: int, scope: str, name: str
    ) -> None:
        self.database = database
        self._engine = database.engine
        self.id = collection_id
        self.scope = scope
        self.name = name
        self.full_name = f"{scope}.{name}"

    def __repr__(self) -> str:
        return f"<Collection {self.full_name} of {self.database.name!r}>"

    # -- reading -----------------------------------------------------------------------------

    @property
    def last_sequence(self) -> int:
        """The sequence of the latest change (including, inside a transaction, its own)."""
        return self._engine.last_sequence(self.id)

    def count(self, *, include_deleted: bool = False) -> int:
        """Number of documents (live ones only, unless ``include_deleted``)."""
        sql = "SELECT COUNT(*) FROM docs WHERE collection = ?"
        if not include_deleted:
            sql += " AND deleted = 0"
        count: int = self._engine.query(sql, (self.id,))[0][0]
        return count

    def get_document(self, doc_id: str) -> Document | None:
        """The current revision of a document; ``None`` if it is missing or deleted."""
        document = self._current(doc_id)
        return None if document is None or document.deleted else document

    def _current(self, doc_id: str) -> Document | None:
        """The current revision, a tombstone included; ``None`` if there is no document."""
        rows = self._engine.query(
            "SELECT d.rev_id, d.sequence, d.deleted, r.body, d.hlv FROM docs d "
            "JOIN revs r ON r.doc = d.id AND r.rev_id = d.rev_id "
            "WHERE d.collection = ? AND d.doc_id = ?",
            (self.id, doc_id),
        )
        if not rows:
            return None
        rev_id, sequence, deleted, body, hlv = rows[0]
        return Document(
            doc_id,
            rev_id,
            sequence,
            bool(deleted),
            decode_stored(body),
            parse_stored(hlv),
        )

    def get_revision(
        self, doc_id: str, rev_id: str | None = None, *, with_body: bool = True
    ) -> Revision | None:
        """A revision (the current one when ``rev_id`` is ``None``, even if it is a deletion);
        ``None`` if unknown. Its ``body`` is ``None`` when not asked for or no longer stored."""
        body_column = "r.body" if with_body else "NULL"
        match = "r.rev_id = d.rev_id" if rev_id is None else "r.rev_id = ?"
        params: tuple[object, ...] = (self.id, doc_id)
        if rev_id is not None:
            params = (rev_id, *params)
        rows = self._engine.query(
            f"SELECT r.rev_id, r.sequence, r.deleted, {body_column}, r.hlv FROM docs d "
            f"JOIN revs r ON r.doc = d.id AND {match} "
            "WHERE d.collection = ? AND d.doc_id = ?",
            params,
        )
        return _revision(doc_id, rows[0]) if rows else None

    def get_revisions(
        self, wanted: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], Revision | None]:
        """Several revisions, each named ``(doc_id, rev_id)``, in ONE query; an unknown one
        maps to ``None``. A pusher reads what it sends this way: a query per document was the
        largest store cost of a pull (perf, issue 13)."""
        found: dict[tuple[str, str], Revision | None] = dict.fromkeys(wanted)
        keys = list(found)
        for start in range(0, len(keys), _INLINE_FILTER_LIMIT):
            chunk = keys[start : start + _INLINE_FILTER_LIMIT]
            rows = self._engine.query(
                "WITH wanted (doc_id, rev_id) AS (VALUES "
                + ",".join(["(?, ?)"] * len(chunk))
                + ") SELECT w.doc_id, r.rev_id, r.sequence, r.deleted, r.body, r.hlv "
                "FROM wanted w JOIN docs d ON d.collection = ? AND d.doc_id = w.doc_id "
                "JOIN revs r ON r.doc = d.id AND r.rev_id = w.rev_id",
                (*(part for key in chunk for part in key), self.id),
            )
            for row in rows:
                found[(row[0], row[1])] = _revision(row[0], row[1:])
        return found

    def rev_history(self, doc_id: str, rev_id: str) -> list[str]:
        """``rev_id`` followed by its known ancestors, newest first; empty if unknown."""
        tree = self._read_tree(doc_id)
        return tree.ancestry(rev_id) if tree is not None else []

    def leaf_revisions(self, doc_id: str) -> list[str]:
        """The revIDs of all leaves, winner first; empty if the document is unknown."""
        tree = self._read_tree(doc_id)
        return [node.rev_id for node in tree.leaves()] if tree is not None else []

    def is_conflicted(self, doc_id: str) -> bool:
        """Whether the document has more than one live leaf."""
        tree = self._read_tree(doc_id)
        return tree is not None and sum(not n.deleted for n in tree.leaves()) > 1

    def changes_since(
        self,
        since: int,
        *,
        limit: int | None = None,
        doc_ids: Iterable[str] | None = None,
        active_only: bool = False,
    ) -> list[Change]:
        """Documents changed after sequence ``since``, in sequence order, each once with its
        current revision. ``doc_ids`` restricts to those documents; ``active_only`` skips
        deleted ones."""
        sql = (
            "SELECT sequence, doc_id, rev_id, deleted, body_size, hlv FROM docs "
            "WHERE collection = ? AND sequence > ?"
        )
        params: list[object] = [self.id, since]
        if active_only:
            sql += " AND deleted = 0"
        if doc_ids is not None:
            wanted = list(dict.fromkeys(doc_ids))
            if not wanted:
                return []
            if len(wanted) <= _INLINE_FILTER_LIMIT:
                sql += f" AND doc_id IN ({','.join('?' * len(wanted))})"
                params.extend(wanted)
            else:
                sql += " AND doc_id IN (SELECT value FROM json_each(?))"
                params.append(_json_array(wanted))
        sql += " ORDER BY sequence"
        if limit is not None:
            if limit <= 0:
                return []
            sql += " LIMIT ?"
            params.append(limit)
        return [
            Change(seq, doc_id, rev_id, bool(deleted), size, hlv)
            for seq, doc_id, rev_id, deleted, size, hlv in self._engine.query(sql, params)
        ]

    def check_proposed(
        self, doc_id: str, rev_id: str, parent_rev_id: str | None
    ) -> tuple[int, str | None]:
        """Answer a peer proposing ``rev_id`` (child of ``parent_rev_id``), as LiteCore does:
        ``(0, None)`` send it; ``(304, None)`` it is already the current revision;
        ``(409, current)`` conflict — the parent is not the current revision (``current`` is
        ``None`` when the document does not exist). A document whose current revision is a
        deletion accepts a new document (no parent)."""
        row = self._doc_row(doc_id)
        return _proposed_status(
            row.rev_id if row else None, bool(row and row.deleted), rev_id, parent_rev_id
        )

    def check_proposed_many(
        self, proposals: Sequence[tuple[str, str, str | None]]
    ) -> list[tuple[int, str | None]]:
        """:meth:`check_proposed` for a whole ``proposeChanges`` list of
        ``(doc_id, rev_id, parent_rev_id)``, with one query instead of one per document."""
        wanted = list(dict.fromkeys(doc_id for doc_id, _, _ in proposals))
        current: dict[str, tuple[str, bool]] = {}
        sql = "SELECT doc_id, rev_id, deleted FROM docs WHERE collection = ? AND doc_id "
        for start in range(0, len(wanted), _INLINE_FILTER_LIMIT):
            chunk = wanted[start : start + _INLINE_FILTER_LIMIT]
            rows = self._engine.query(sql + f"IN ({','.join('?' * len(chunk))})", (self.id, *chunk))
            current.update((doc_id, (rev_id, bool(deleted))) for doc_id, rev_id, deleted in rows)
        results = []
        for doc_id, rev_id, parent_rev_id in proposals:
            found = current.get(doc_id)
            results.append(
                _proposed_status(
                    found[0] if found else None, bool(found and found[1]), rev_id, parent_rev_id
                )
            )
        return results

    def find_known_revisions(
        self, doc_id: str, rev_id: str, *, max_ancestors: int = 20, require_bodies: bool = False
    ) -> tuple[bool, list[str]]:
        """For a peer announcing ``rev_id``: ``(True, [])`` if it is already in the tree;
        otherwise ``(False, ancestors)``, the revisions of the document with a lower generation
        (possible ancestors, leaves first, newest first; at most ``max_ancestors``; with
        ``require_bodies`` only those whose body is still stored)."""
        tree = self._read_tree(doc_id)
        if tree is None:
            return False, []
        if rev_id in tree:
            return True, []
        try:
            gen = revid.generation(rev_id)
        except revid.BadRevisionID as exc:
            raise InvalidInput(str(exc)) from None
        ancestors: list[str] = []
        for node in tree.in_priority_order():
            if len(ancestors) >= max_ancestors:
                break
            if revid.generation(node.rev_id) < gen and (node.has_body or not require_bodies):
                ancestors.append(node.rev_id)
        return False, ancestors

    # -- local writes ------------------------------------------------------------------------

    def save_document(
        self, doc_id: str | None, body: dict[str, Any], *, expected_rev: str | None = None
    ) -> Document:
        """Save a new revision of a document on top of its current revision (a new document
        with a random ID when ``doc_id`` is ``None``). With ``expected_rev``, raise
        ``ConflictError`` unless that is the current revision."""
        doc_id = uuid.uuid4().hex if doc_id is None else check_doc_id(doc_id)
        data = encode_body(body)
        return self._put_local(doc_id, data, deleted=False, expected_rev=expected_rev)

    def delete_document(self, doc_id: str, *, expected_rev: str | None = None) -> Document:
        """Delete a document by adding a tombstone revision (body ``{}``); ``NotFoundError`` if
        it is missing or already deleted."""
        check_doc_id(doc_id)
        return self._put_local(doc_id, EMPTY_BODY, deleted=True, expected_rev=expected_rev)

    def resolve_conflict(
        self, doc_id: str, *, winning_rev: str, losing_rev: str, body: dict[str, Any] | None = None
    ) -> Document:
        """Resolve a conflict as Couchbase Lite does: close the losing branch with a tombstone
        and, with ``body``, save a merged revision on top of ``winning_rev`` (otherwise the
        winning leaf stays as it is). One durable transaction."""
        check_doc_id(doc_id)
        with self._engine.write() as conn:
            row = self._doc_row(doc_id, conn)
            if row is None:
                raise NotFoundError(f"no document {doc_id!r} in {self.full_name}")
            tree = self._load_tree(conn, row.id)
            leaves = {node.rev_id for node in tree.leaves()}
            for rev_id in (winning_rev, losing_rev):
                if rev_id not in leaves:
                    raise ConflictError(
                        f"{rev_id} is not a leaf revision of {doc_id!r}", row.rev_id
                    )
            if winning_rev == losing_rev:
                raise InvalidInput("winning_rev and losing_rev must differ")
            tombstone = revid.make(losing_rev, True, EMPTY_BODY)
            sequence = self._next_sequence(conn)
            tree.add(tombstone, losing_rev, True, sequence, EMPTY_BODY, closed=True)
            win_hlv = doc_versions.revision_vector(conn, row.id, winning_rev)
            lose_hlv = doc_versions.revision_vector(conn, row.id, losing_rev)
            vectors = {tombstone: self._next_vector(conn, lose_hlv)}
            new_rev, data = winning_rev, None
            if body is not None:
                data = encode_body(body)
                new_rev = revid.make(winning_rev, False, data)
                sequence = self._next_sequence(conn)
                tree.add(new_rev, winning_rev, False, sequence, data)
                if win_hlv is not None and lose_hlv is not None:
                    stamp = self._device.stamp(conn, after=_own_time(win_hlv, lose_hlv, self._me))
                    vectors[new_rev] = merge(win_hlv, lose_hlv, stamp)
                else:
                    vectors[new_rev] = self._next_vector(conn, win_hlv or lose_hlv)
            elif win_hlv is not None and lose_hlv is not None:
                # The winner keeps its body and cv, and now covers the loser's versions.
                vectors[winning_rev] = trivial_merge(win_hlv, lose_hlv)
            self._save_tree(conn, doc_id, row, tree, new_rev, sequence, vectors)
        document = self._current(doc_id)  # a tombstone when a deletion won
        assert document is not None
        return document

    def purge_document(self, doc_id: str) -> bool:
        """Erase a document, all its revisions and its expiration, leaving no tombstone (a
        purge is local: it does not replicate). ``True`` if it existed."""
        return expiry.purge(self._engine, self.id, doc_id)

    def purge(self, doc_id: str) -> bool:
        """Couchbase Lite's ``Collection.purge``: same as ``purge_document``."""
        return self.purge_document(doc_id)

    def set_document_expiration(self, doc_id: str, expiration: float | datetime | None) -> None:
        """Purge the document automatically at ``expiration`` (epoch seconds or an aware
        ``datetime``); ``None`` clears it. ``NotFoundError`` if the document does not exist.
        Expired documents are purged by a running ``Housekeeper`` and by COMPACT."""
        if isinstance(expiration, datetime):
            if expiration.tzinfo is None:
                raise InvalidInput("expiration datetime must carry a time zone")
            expiration = expiration.timestamp()
        expiry.set_expiration(self._engine, self.id, check_doc_id(doc_id), expiration)

    def get_document_expiration(self, doc_id: str) -> float | None:
        """The document's expiration (epoch seconds), or ``None`` if it has none."""
        return expiry.get_expiration(self._engine, self.id, doc_id)

    def _put_local(
        self, doc_id: str, data: bytes, *, deleted: bool, expected_rev: str | None
    ) -> Document:
        with self._engine.write() as conn:
            row = self._doc_row(doc_id, conn)
            current = row.rev_id if row else None
            if expected_rev is not None and expected_rev != current:
                raise ConflictError(
                    f"document {doc_id!r} is at revision {current or 'none'}, not {expected_rev}",
                    current,
                )
            if deleted and (row is None or row.deleted):
                raise NotFoundError(f"no document {doc_id!r} in {self.full_name}")
            tree = self._load_tree(conn, row.id) if row else RevTree()
            new_rev = revid.make(current, deleted, data)
            sequence = self._next_sequence(conn)
            tree.add(new_rev, current, deleted, sequence, data)
            hlv = self._next_vector(conn, parse_stored(row.hlv) if row else None)
            self._save_tree(conn, doc_id, row, tree, new_rev, sequence, {new_rev: hlv})
        return Document(doc_id, new_rev, sequence, deleted, decode_stored(data), hlv)

    # -- revisions from peers ----------------------------------------------------------------

    def insert_revisions(self, revs: Sequence[IncomingRevision]) -> list[InsertResult]:
        """Insert revisions received from a peer, with their history, in ONE transaction that
        is durable when this returns. Per revision: 201 inserted, 200 already present,
        409 conflict (``no_conflicts`` set and its parent is not the current revision),
        400 malformed. Unknown ancestors in a history become body-less revisions."""
        results: list[InsertResult | None] = [None] * len(revs)
        with self._engine.write() as conn:
            self._insert_new_documents(conn, revs, results)
            for i, rev in enumerate(revs):
                if results[i] is not None:
                    continue
                # Each revision in its own savepoint: one that fails leaves nothing behind and
                # never fails the others of its batch. Storage errors (sqlite3.Error) are the
                # batch's: they propagate and the transaction is not committed.
                try:
                    with self._engine.savepoint() as conn:
                        results[i] = self._insert_one(conn, rev)
                except (InvalidInput, revid.BadRevisionID, BadHistory) as exc:
                    results[i] = InsertResult(400, str(exc))
                except sqlite3.Error:
                    raise
                except (RecursionError, ValueError) as exc:
                    results[i] = InsertResult(400, f"cannot store this revision: {exc!r}")
        return [result for result in results if result is not None]

    def _insert_new_documents(
        self,
        conn: sqlite3.Connection,
        revs: Sequence[IncomingRevision],
        results: list[InsertResult | None],
    ) -> None:
        """The common case of a push, in bulk: revisions without history of documents this
        collection does not have yet. Each becomes a one-revision document, with two
        ``executemany`` for the whole batch instead of a savepoint and five statements per
        revision (perf, issue 13). What ``_insert_one`` would do for them, exactly; anything
        else (an invalid revision, a deletion, a document twice in the batch) is left to it."""
        seen: dict[str, int] = {}
        for rev in revs:
            seen[rev.doc_id] = seen.get(rev.doc_id, 0) + 1
        fresh: list[tuple[int, IncomingRevision, bytes]] = []
        for i, rev in enumerate(revs):
            if rev.history or rev.deleted or seen[rev.doc_id] > 1:
                continue
            try:
                check_doc_id(rev.doc_id)
                revid.parse(rev.rev_id)
                data = decode_incoming(rev.body, deleted=False)
            except (InvalidInput, revid.BadRevisionID, RecursionError, ValueError):
                continue  # _insert_one gives it its 400
            fresh.append((i, rev, data))
        if len(fresh) < 2:
            return
        ids = [rev.doc_id for _, rev, _ in fresh]
        marks = ",".join("?" * len(ids))
        known = {
            doc_id
            for (doc_id,) in conn.execute(
                f"SELECT doc_id FROM docs WHERE collection = ? AND doc_id IN ({marks})",
                (self.id, *ids),
            )
        }
        fresh = [entry for entry in fresh if entry[1].doc_id not in known]
        if not fresh:
            return
        (last_key,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM docs").fetchone()
        doc_rows = []
        rev_rows = []
        device = self._device
        for key, (_, rev, data) in enumerate(fresh, start=last_key + 1):
            version = legacy_version(rev.rev_id) if rev.from_vv_peer else device.stamp(conn)
            # A first revision's vector is its one version: no HLV object per document (perf).
            text = single_version_vector(version)
            sequence = self._next_sequence(conn)
            doc_rows.append((key, self.id, rev.doc_id, sequence, rev.rev_id, len(data), text))
            rev_rows.append((key, rev.rev_id, sequence, data, text, text))
        with self._engine.savepoint() as conn:
            _insert_rows(
                conn,
                "INSERT INTO docs (id, collection, doc_id, sequence, rev_id, deleted, body_size, "
                "hlv) VALUES ",
                "(?, ?, ?, ?, ?, 0, ?, ?)",
                doc_rows,
            )
            _insert_rows(
                conn,
                "INSERT INTO revs (doc, rev_id, parent, deleted, sequence, body, hlv, cv) VALUES ",
                "(?, ?, NULL, 0, ?, ?, ?, ?)",
                rev_rows,
            )
        for i, rev, _ in fresh:
            results[i] = InsertResult(201, "", rev.rev_id)

    def _insert_one(self, conn: sqlite3.Connection, rev: IncomingRevision) -> InsertResult:
        check_doc_id(rev.doc_id)
        history = rev.history or ()
        if isinstance(history, str | bytes):
            raise InvalidInput("history must be a sequence of revIDs, not a string")
        chain = [rev.rev_id, *history]
        for rev_id in chain:
            revid.parse(rev_id)
        data = decode_incoming(rev.body, deleted=rev.deleted)
        row = self._doc_row(rev.doc_id, conn)
        tree = self._load_tree(conn, row.id) if row else RevTree()
        index = tree.find_common_ancestor(chain, self.database.max_rev_tree_depth)
        current = row.rev_id if row else None
        if index == 0:
            return InsertResult(200, "already present", current)
        if rev.no_conflicts:
            parent = chain[index] if index < len(chain) else None
            if parent != current and not (parent is None and (row is None or row.deleted)):
                return InsertResult(
                    409, f"{rev.rev_id} does not descend from current revision {current}", current
                )
        parent = chain[index] if index < len(chain) else None
        if row is not None and parent == row.rev_id:
            parent_hlv = parse_stored(row.hlv)
        else:
            parent_hlv = doc_versions.revision_vector(conn, row.id, parent) if row else None
        linear = row is None or parent == row.rev_id or (parent is None and row.deleted)
        if rev.from_vv_peer or (not linear and revid.generation(rev.rev_id) < 1 << 23):
            # A 4.x phone's legacy revision is named by its RTE version, so that phone sees it
            # as the revision it already has (Sync Gateway's rule, VV-NOTES §6). A branch
            # beside the current revision is named the same way: a device version would
            # make it look newer than the other branch to 4.x phones, hiding the conflict.
            rte = legacy_version(rev.rev_id)
            hlv = parent_hlv.with_new_cv(rte) if parent_hlv is not None else HLV(rte)
        else:
            hlv = self._next_vector(conn, parent_hlv)
        sequence = self._next_sequence(conn)
        tree.graft(chain, index, rev.deleted, sequence, data)
        winner = self._save_tree(
            conn, rev.doc_id, row, tree, rev.rev_id, sequence, {rev.rev_id: hlv}
        )
        return InsertResult(201, "", winner)

    # -- versions (CBMobile_4 peers) ---------------------------------------------------------

    @property
    def _device(self) -> doc_versions.DeviceVersions:
        return doc_versions.device_versions(self._engine)

    @property
    def _me(self) -> SourceID:
        return self._device.source_id

    def _next_vector(self, conn: sqlite3.Connection, parent: HLV | None) -> HLV:
        """The vector of a new revision this device writes on top of ``parent``'s."""
        if parent is None:
            return HLV(self._device.stamp(conn))
        stamp = self._device.stamp(conn, after=parent.time_of(self._me) or 0)
        return parent.with_new_cv(stamp)

    def get_versions(self, doc_id: str) -> DocVersions | None:
        """The document's current state in both spellings; ``None`` if unknown."""
        row = self._doc_row(doc_id)
        return self._doc_versions(doc_id, row) if row is not None else None

    def _doc_versions(self, doc_id: str, row: _DocRow) -> DocVersions:
        sequence = self._engine.query("SELECT sequence FROM docs WHERE id = ?", (row.id,))[0][0]
        return DocVersions(
            doc_id,
            row.rev_id,
            row.deleted,
            sequence,
            parse_stored(row.hlv),
            row.base_legacy,
        )

    def check_proposed_version(
        self,
        doc_id: str,
        rev: Version | str,
        parent: Version | str | None,
        proposed: HLV | None = None,
    ) -> tuple[int, str | None]:
        """Answer a CBMobile_4 ``proposeChanges`` row (``versions.decide_proposed``): 0 send
        it, 304 already known, 409 conflict with the current revision spelled for the peer."""
        return decide_proposed(self.get_versions(doc_id), rev, parent, proposed)

    def has_version(self, doc_id: str, version: Version | str) -> bool:
        """Whether this document already has ``version`` (a version its current vector covers,
        or a revision named by it) or the legacy revID ``version``."""
        current = self.get_versions(doc_id)
        if current is None:
            return False
        hlv = current.hlv
        if isinstance(version, str):
            if hlv is not None and legacy_matches(version, hlv.cv):
                return True
            return self.get_revision(doc_id, version, with_body=False) is not None
        if hlv is not None and hlv.contains(version):
            return True
        if version.is_legacy:
            tree = self._read_tree(doc_id)
            return tree is not None and any(legacy_matches(r, version) for r in tree.nodes)
        return self.get_revision_by_version(doc_id, version, with_body=False) is not None

    def get_revision_by_version(
        self, doc_id: str, version: Version, *, with_body: bool = True
    ) -> Revision | None:
        """The revision whose vector has ``version`` as its cv (a delta source, a replacement
        revision); ``None`` if none does. Its ``body`` is ``None`` once no longer stored."""
        body_column = "r.body" if with_body else "NULL"
        rows = self._engine.query(
            f"SELECT r.rev_id, r.sequence, r.deleted, {body_column}, r.hlv FROM docs d "
            "JOIN revs r ON r.doc = d.id AND r.cv = ? WHERE d.collection = ? AND d.doc_id = ?",
            (str(version), self.id, doc_id),
        )
        return _revision(doc_id, rows[0]) if rows else None

    def get_peer_legacy(self, doc_id: str, peer: str) -> str | None:
        """The ``lastLegacyRevID`` a 4.x phone last showed for this document: a revID, ``''``
        (it has none), or ``None`` (not known)."""
        return doc_versions.get_peer_legacy(self._engine, self.id, doc_id, peer)

    def set_peer_legacy(self, doc_id: str, peer: str, legacy_rev: str) -> None:
        """Record a phone's ``lastLegacyRevID`` for this document (``''`` = it has none)."""
        if not isinstance(peer, str) or not peer:
            raise InvalidInput("peer must be a non-empty string")
        if legacy_rev and not isinstance(parse_revision(legacy_rev, "legacy_rev"), str):
            raise BadVersion("legacy_rev", f"not a legacy revID: {legacy_rev!r}")
        with self._engine.write() as conn:
            doc_versions.set_peer_legacy(conn, self.id, doc_id, peer, legacy_rev)

    def insert_versioned(self, revs: Sequence[IncomingVersioned]) -> list[InsertResult]:
        """Insert revisions a 4.x phone pushed as versions, in ONE transaction that is durable
        when this returns. Per revision (compared with §3.1/§3.3, ``versions.decide_incoming``):
        201 stored (vector adopted, a new rev-tree revision ``generation+1`` made on top of the
        current one, the phone's ``lastLegacyRevID`` recorded), 200 same or older (nothing
        stored), 409 conflict (``current_rev`` = the current revision as a 4.x peer names it),
        400 malformed. A failing revision leaves nothing behind and does not affect the
        others."""
        results: list[InsertResult] = []
        with self._engine.write():
            for rev in revs:
                try:
                    with self._engine.savepoint() as conn:
                        results.append(self._insert_versioned_one(conn, rev))
                except (InvalidInput, revid.BadRevisionID, BadHistory) as exc:
                    results.append(InsertResult(400, str(exc)))
        return results

    def _insert_versioned_one(
        self, conn: sqlite3.Connection, rev: IncomingVersioned
    ) -> InsertResult:
        check_doc_id(rev.doc_id)
        incoming = rev.version
        vector = incoming.vector
        if vector is None:
            raise BadVersion("rev", "a versioned revision needs a version (use insert_revisions)")
        data = decode_incoming(rev.body, deleted=rev.deleted)
        row = self._doc_row(rev.doc_id, conn)
        current = self._doc_versions(rev.doc_id, row) if row is not None else None
        order = decide_incoming(current, incoming)
        if order is Order.SAME or order is Order.OLDER:
            return InsertResult(200, "already present", current.current_text if current else None)
        if order is Order.CONFLICT:
            assert current is not None and row is not None
            if not rev.no_conflicts:
                return self._insert_versioned_branch(conn, rev, row, data)
            return InsertResult(
                409,
                f"{vector.cv} conflicts with current revision {current.current_text}",
                current.current_text,
            )
        tree = self._load_tree(conn, row.id) if row else RevTree()
        chain: list[str] = []
        base_legacy: str | None = None
        if row is not None:
            chain = [row.rev_id]
            legacy = list(incoming.legacy)
            if row.rev_id in legacy[1:]:
                # The phone had newer legacy revisions than ours: they become body-less
                # ancestors of the new revision (Sync Gateway aligns its tree the same way).
                newer = legacy[: legacy.index(row.rev_id)]
                chain = [*newer, row.rev_id]
                base_legacy = newer[0]
        parent = chain[0] if chain else None
        new_rev = revid.make(parent, rev.deleted, data)
        chain.insert(0, new_rev)
        index = tree.find_common_ancestor(chain, self.database.max_rev_tree_depth)
        if index == 0:
            return InsertResult(200, "already present", current.current_text if current else None)
        hlv = doc_versions.adopt_incoming(vector, current.hlv if current else None)
        self._device.observe(conn, vector)
        sequence = self._next_sequence(conn)
        tree.graft(chain, index, rev.deleted, sequence, data)
        self._save_tree(conn, rev.doc_id, row, tree, new_rev, sequence, {new_rev: hlv}, base_legacy)
        if rev.peer:
            doc_versions.set_peer_legacy(
                conn, self.id, rev.doc_id, rev.peer, incoming.legacy[0] if incoming.legacy else ""
            )
        return InsertResult(201, "", str(hlv.cv))

    def _insert_versioned_branch(
        self, conn: sqlite3.Connection, rev: IncomingVersioned, row: _DocRow, data: bytes
    ) -> InsertResult:
        """Keep a conflicting versioned revision as a rev-tree branch (``no_conflicts`` off):
        a child of the newest revision it descends from (by vector, else by its legacy tail),
        carrying its own vector. 3.x phones see a rev-tree conflict; the winner's vector stays
        the document's, so 4.x phones see whichever side wins and the other as a conflict."""
        vector = rev.version.vector
        assert vector is not None
        tree = self._load_tree(conn, row.id)
        vectors = dict(
            conn.execute(
                "SELECT rev_id, hlv FROM revs WHERE doc = ? AND hlv IS NOT NULL", (row.id,)
            ).fetchall()
        )
        parent: str | None = None
        for node in tree.in_priority_order():
            text = vectors.get(node.rev_id)
            stored = parse_stored(text)
            if (
                stored is not None
                and vector.contains(stored.cv)
                and (parent is None or revid.sort_key(node.rev_id) > revid.sort_key(parent))
            ):
                parent = node.rev_id
        if parent is None:
            parent = next((r for r in rev.version.legacy if r in tree), None)
        new_rev = revid.make(parent, rev.deleted, data)
        if new_rev in tree:
            return InsertResult(200, "already present", row.rev_id)
        self._device.observe(conn, vector)
        sequence = self._next_sequence(conn)
        tree.add(new_rev, parent, rev.deleted, sequence, data)
        winner = self._save_tree(conn, rev.doc_id, row, tree, new_rev, sequence, {new_rev: vector})
        return InsertResult(201, "stored as a conflicting branch", winner)

    # -- storage -----------------------------------------------------------------------------

    def _doc_row(self, doc_id: str, conn: sqlite3.Connection | None = None) -> _DocRow | None:
        sql = (
            "SELECT id, rev_id, deleted, body_size, hlv, base_legacy FROM docs "
            "WHERE collection = ? AND doc_id = ?"
        )
        if conn is None:
            rows = self._engine.query(sql, (self.id, doc_id))
        else:
            rows = conn.execute(sql, (self.id, doc_id)).fetchall()
        if not rows:
            return None
        doc_key, rev_id, deleted, body_size, hlv, base_legacy = rows[0]
        return _DocRow(doc_key, rev_id, bool(deleted), body_size, hlv, base_legacy)

    @staticmethod
    def _load_tree(conn: sqlite3.Connection, doc_key: int) -> RevTree:
        rows = conn.execute(f"SELECT {NODE_COLUMNS} FROM revs WHERE doc = ?", (doc_key,))
        return RevTree(node_from_row(row) for row in rows)

    def _read_tree(self, doc_id: str) -> RevTree | None:
        """The tree of a document, read consistently; ``None`` if the document is unknown."""
        with self._engine.reading() as conn:
            row = conn.execute(
                "SELECT id FROM docs WHERE collection = ? AND doc_id = ?", (self.id, doc_id)
            ).fetchone()
            return self._load_tree(conn, row[0]) if row else None

    def _next_sequence(self, conn: sqlite3.Connection) -> int:
        return self._engine.next_sequence(conn, self.id)

    def _save_tree(
        self,
        conn: sqlite3.Connection,
        doc_id: str,
        row: _DocRow | None,
        tree: RevTree,
        new_rev: str,
        sequence: int,
        vectors: dict[str, HLV] | None = None,
        base_legacy: str | None = None,
    ) -> str:
        """Prune, drop old bodies, write the changed revisions (with ``vectors``, the versions
        of new revisions) and the document row, whose vector is always its winner's; return
        the winning revID. ``base_legacy`` overrides the legacy revID remembered when the
        document gets its first vector (by default the revision current until then)."""
        db = self.database
        tree.prune(db.max_rev_tree_depth)
        if new_rev in tree:
            tree.drop_old_bodies(new_rev, db.keep_body_generations)
        winner = tree.winner()
        assert winner is not None
        pending = {r: hlv for r, hlv in (vectors or {}).items() if r in tree.nodes}
        winner_hlv = self._winner_vector(conn, row, winner.rev_id, pending)
        base: str | None
        if row is not None and row.base_legacy:
            base = row.base_legacy
        elif winner_hlv is not None and row is not None and row.hlv is None:
            base = base_legacy or row.rev_id
        else:
            base = base_legacy
        if winner.rev_id in tree.added:
            body = tree.added[winner.rev_id]
            body_size = len(body) if body is not None else 0
        elif row is not None and winner.rev_id == row.rev_id:
            body_size = row.body_size
        else:
            body_size = 0  # looked up below, once the document row exists
        if row is None:
            doc_key = conn.execute(
                "INSERT INTO docs (collection, doc_id, sequence, rev_id, deleted, body_size, "
                "hlv, base_legacy) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self.id,
                    doc_id,
                    sequence,
                    winner.rev_id,
                    winner.deleted,
                    body_size,
                    winner_hlv,
                    base,
                ),
            ).lastrowid
            assert doc_key is not None
        else:
            doc_key = row.id
        if tree.removed:
            conn.executemany(
                "DELETE FROM revs WHERE doc = ? AND rev_id = ?",
                [(doc_key, rev_id) for rev_id in tree.removed],
            )
        for rev_id in tree.changed:
            node = tree.nodes[rev_id]
            conn.execute(
                "UPDATE revs SET parent = ?, body = IIF(?, body, NULL) "
                "WHERE doc = ? AND rev_id = ?",
                (node.parent, node.has_body, doc_key, rev_id),
            )
        new_rows = []
        for rev_id, body in tree.added.items():
            node = tree.nodes[rev_id]
            hlv = pending.pop(rev_id, None)
            hlv_text, cv_text = (str(hlv), str(hlv.cv)) if hlv is not None else (None, None)
            new_rows.append(
                (
                    doc_key,
                    rev_id,
                    node.parent,
                    node.deleted,
                    node.sequence,
                    body,
                    hlv_text,
                    cv_text,
                    node.closed,
                )
            )
        conn.executemany(
            "INSERT INTO revs (doc, rev_id, parent, deleted, sequence, body, hlv, cv, closed) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            new_rows,
        )
        if pending:  # vectors given to revisions that were already stored
            doc_versions.record_vectors(conn, doc_key, pending)
        if row is not None:
            if winner.rev_id not in tree.added and winner.rev_id != row.rev_id:
                found = conn.execute(
                    "SELECT length(body) FROM revs WHERE doc = ? AND rev_id = ?",
                    (doc_key, winner.rev_id),
                ).fetchone()
                body_size = (found[0] or 0) if found else 0
            conn.execute(
                "UPDATE docs SET sequence = ?, rev_id = ?, deleted = ?, body_size = ?, hlv = ?, "
                "base_legacy = ? WHERE id = ?",
                (sequence, winner.rev_id, winner.deleted, body_size, winner_hlv, base, doc_key),
            )
        return winner.rev_id

    @staticmethod
    def _winner_vector(
        conn: sqlite3.Connection, row: _DocRow | None, winner: str, vectors: dict[str, HLV]
    ) -> str | None:
        """The stored vector text of the winning revision."""
        if winner in vectors:
            return str(vectors[winner])
        if row is None:
            return None
        if winner == row.rev_id:
            return row.hlv
        found = conn.execute(
            "SELECT hlv FROM revs WHERE doc = ? AND rev_id = ?", (row.id, winner)
        ).fetchone()
        return str(found[0]) if found and found[0] is not None else None


def _revision(doc_id: str, row: Sequence[Any]) -> Revision:
    """A Revision from a ``(rev_id, sequence, deleted, body, hlv)`` row."""
    rev_id, sequence, deleted, body, hlv = row
    return Revision(
        doc_id,
        rev_id,
        sequence,
        bool(deleted),
        bytes(body) if body is not None else None,
        hlv,
    )


def _own_time(a: HLV, b: HLV, me: SourceID) -> int:
    return max(a.time_of(me) or 0, b.time_of(me) or 0)


def _proposed_status(
    current: str | None, deleted: bool, rev_id: str, parent_rev_id: str | None
) -> tuple[int, str | None]:
    """LiteCore's answer to a proposed revision, given the document's current revision."""
    if current == rev_id:
        return 304, None
    if current == (parent_rev_id or None) or (not parent_rev_id and current and deleted):
        return 0, None
    return 409, current


def _json_array(values: list[str]) -> str:
    return json.dumps(values, ensure_ascii=False)


#: Most rows per multi-row INSERT: at most 999 parameters (SQLite's lowest limit) for 7 columns.
_ROWS_PER_INSERT = 128


def _insert_rows(
    conn: sqlite3.Connection, head: str, row_marks: str, rows: Sequence[tuple[object, ...]]
) -> None:
    """``executemany`` of ``head + row_marks`` as multi-row INSERTs of 128, 64, ... 1 rows (a
    few statement texts, so the connection's statement cache keeps them): a handful of
    statement steps per batch instead of one per row. Python's sqlite3 releases and retakes
    the GIL around every step, so with the event loop busy each row of a batch was a thread
    hand-off (futex calls, context switches: perf, issue 13)."""
    start = 0
    size = _ROWS_PER_INSERT
    while start < len(rows):
        while len(rows) - start < size:
            size //= 2
        chunk = rows[start : start + size]
        conn.execute(head + ",".join([row_marks] * size), [value for row in chunk for value in row])
        start += size
