"""A collection of documents, each with its revision tree, and its changes feed."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from fieldsync.store import expiry, revid
from fieldsync.store.bodies import EMPTY_BODY, decode_incoming, decode_stored, encode_body
from fieldsync.store.engine import Engine
from fieldsync.store.errors import ConflictError, InvalidInput, NotFoundError
from fieldsync.store.models import Change, Document, IncomingRevision, InsertResult, Revision
from fieldsync.store.names import check_doc_id
from fieldsync.store.revtree import BadHistory, RevNode, RevTree

#: Above this many docIDs a changes-feed filter is applied through a JSON array parameter.
_INLINE_FILTER_LIMIT = 200


class _DocRow(NamedTuple):
    id: int
    rev_id: str
    deleted: bool
    body_size: int


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
        rows = self._engine.query(
            "SELECT d.rev_id, d.sequence, d.deleted, r.body FROM docs d "
            "JOIN revs r ON r.doc = d.id AND r.rev_id = d.rev_id "
            "WHERE d.collection = ? AND d.doc_id = ?",
            (self.id, doc_id),
        )
        if not rows or rows[0][2]:
            return None
        rev_id, sequence, _deleted, body = rows[0]
        return Document(doc_id, rev_id, sequence, False, decode_stored(body))

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
            f"SELECT r.rev_id, r.sequence, r.deleted, {body_column} FROM docs d "
            f"JOIN revs r ON r.doc = d.id AND {match} "
            "WHERE d.collection = ? AND d.doc_id = ?",
            params,
        )
        if not rows:
            return None
        found_rev, sequence, deleted, body = rows[0]
        return Revision(
            doc_id, found_rev, sequence, bool(deleted), bytes(body) if body is not None else None
        )

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
            "SELECT sequence, doc_id, rev_id, deleted, body_size FROM docs "
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
            Change(seq, doc_id, rev_id, bool(deleted), size)
            for seq, doc_id, rev_id, deleted, size in self._engine.query(sql, params)
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
        current = row.rev_id if row else None
        if current == rev_id:
            return 304, None
        if current == (parent_rev_id or None) or (not parent_rev_id and row and row.deleted):
            return 0, None
        return 409, current

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
            tree.add(tombstone, losing_rev, True, sequence, EMPTY_BODY)
            new_rev, data = winning_rev, None
            if body is not None:
                data = encode_body(body)
                new_rev = revid.make(winning_rev, False, data)
                sequence = self._next_sequence(conn)
                tree.add(new_rev, winning_rev, False, sequence, data)
            self._save_tree(conn, doc_id, row, tree, new_rev, sequence)
        document = self.get_document(doc_id)
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
            self._save_tree(conn, doc_id, row, tree, new_rev, sequence)
        return Document(doc_id, new_rev, sequence, deleted, decode_stored(data))

    # -- revisions from peers ----------------------------------------------------------------

    def insert_revisions(self, revs: Sequence[IncomingRevision]) -> list[InsertResult]:
        """Insert revisions received from a peer, with their history, in ONE transaction that
        is durable when this returns. Per revision: 201 inserted, 200 already present,
        409 conflict (``no_conflicts`` set and its parent is not the current revision),
        400 malformed. Unknown ancestors in a history become body-less revisions."""
        results: list[InsertResult] = []
        with self._engine.write() as conn:
            for rev in revs:
                try:
                    results.append(self._insert_one(conn, rev))
                except (InvalidInput, revid.BadRevisionID, BadHistory) as exc:
                    results.append(InsertResult(400, str(exc)))
        return results

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
        sequence = self._next_sequence(conn)
        tree.graft(chain, index, rev.deleted, sequence, data)
        winner = self._save_tree(conn, rev.doc_id, row, tree, rev.rev_id, sequence)
        return InsertResult(201, "", winner)

    # -- storage -----------------------------------------------------------------------------

    def _doc_row(self, doc_id: str, conn: sqlite3.Connection | None = None) -> _DocRow | None:
        sql = "SELECT id, rev_id, deleted, body_size FROM docs WHERE collection = ? AND doc_id = ?"
        if conn is None:
            rows = self._engine.query(sql, (self.id, doc_id))
        else:
            rows = conn.execute(sql, (self.id, doc_id)).fetchall()
        if not rows:
            return None
        doc_key, rev_id, deleted, body_size = rows[0]
        return _DocRow(doc_key, rev_id, bool(deleted), body_size)

    @staticmethod
    def _load_tree(conn: sqlite3.Connection, doc_key: int) -> RevTree:
        rows = conn.execute(
            "SELECT rev_id, parent, deleted, sequence, body IS NOT NULL FROM revs WHERE doc = ?",
            (doc_key,),
        ).fetchall()
        return RevTree(
            RevNode(rev_id, parent, bool(deleted), sequence, bool(has_body))
            for rev_id, parent, deleted, sequence, has_body in rows
        )

    def _read_tree(self, doc_id: str) -> RevTree | None:
        """The tree of a document, read consistently; ``None`` if the document is unknown."""
        with self._engine.locked() as conn:
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
    ) -> str:
        """Prune, drop old bodies, write the changed revisions and the document row; return
        the winning revID."""
        db = self.database
        tree.prune(db.max_rev_tree_depth)
        if new_rev in tree:
            tree.drop_old_bodies(new_rev, db.keep_body_generations)
        winner = tree.winner()
        assert winner is not None
        if winner.rev_id in tree.added:
            body = tree.added[winner.rev_id]
            body_size = len(body) if body is not None else 0
        elif row is not None and winner.rev_id == row.rev_id:
            body_size = row.body_size
        else:
            body_size = 0  # looked up below, once the document row exists
        if row is None:
            doc_key = conn.execute(
                "INSERT INTO docs (collection, doc_id, sequence, rev_id, deleted, body_size) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (self.id, doc_id, sequence, winner.rev_id, winner.deleted, body_size),
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
            new_rows.append((doc_key, rev_id, node.parent, node.deleted, node.sequence, body))
        conn.executemany(
            "INSERT INTO revs (doc, rev_id, parent, deleted, sequence, body) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            new_rows,
        )
        if row is not None:
            if winner.rev_id not in tree.added and winner.rev_id != row.rev_id:
                found = conn.execute(
                    "SELECT length(body) FROM revs WHERE doc = ? AND rev_id = ?",
                    (doc_key, winner.rev_id),
                ).fetchone()
                body_size = (found[0] or 0) if found else 0
            conn.execute(
                "UPDATE docs SET sequence = ?, rev_id = ?, deleted = ?, body_size = ? WHERE id = ?",
                (sequence, winner.rev_id, winner.deleted, body_size, doc_key),
            )
        return winner.rev_id


def _json_array(values: list[str]) -> str:
    return json.dumps(values, ensure_ascii=False)
