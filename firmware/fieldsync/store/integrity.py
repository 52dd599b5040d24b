"""INTEGRITY_CHECK: is the SQLite file sound, does every blob hold the bytes its name promises,
and does every document's revision tree keep its invariants? Reports, never repairs.

Rev-tree invariants checked per document:

* the document row has revisions, and every revision belongs to an existing document;
* every revID is well formed, every parent is in the same tree, and a child's generation is
  higher than its parent's (so the tree has no cycle);
* the document row names the tree's winner (LiteCore's rule), with the winner's deleted flag,
  and the winner still has its body;
* every blob a leaf revision references is stored;
* the document's sequence is the newest of its revisions and not past its collection's last
  sequence.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from typing import Protocol

from fieldsync.store import revid
from fieldsync.store.blobs import BlobStore, digest_for, find_blobs
from fieldsync.store.doc_versions import check_vectors
from fieldsync.store.engine import Engine
from fieldsync.store.revtree import NODE_COLUMNS, RevNode, RevTree, node_from_row

#: Problems reported in full; beyond this only a count is kept.
MAX_PROBLEMS = 200


class IntegrityOwner(Protocol):
    @property
    def engine(self) -> Engine: ...
    @property
    def blobs(self) -> BlobStore: ...


class Progress(Protocol):
    def __call__(self, phase: str, done: int, total: int) -> None: ...


def check_sqlite(engine: Engine) -> list[str]:
    """``PRAGMA integrity_check`` rows other than ``ok``."""
    rows = engine.query("PRAGMA integrity_check")
    return [f"sqlite: {row[0]}" for row in rows if row[0] != "ok"]


def check_blobs(blobs: BlobStore, progress: Progress | None = None) -> tuple[list[str], int]:
    """Blob files whose content does not hash to their name; ``(problems, blobs checked)``."""
    problems: list[str] = []
    digests = list(blobs.digests())
    for index, digest in enumerate(digests):
        sha1 = hashlib.sha1(usedforsecurity=False)
        try:
            with blobs.open_read(digest) as file:
                while chunk := file.read(1 << 20):
                    sha1.update(chunk)
        except (OSError, KeyError) as exc:
            problems.append(f"blob {digest}: cannot be read ({exc})")
            continue
        actual = digest_for(sha1.digest())
        if actual != digest:
            problems.append(f"blob {digest}: content is corrupt (it hashes to {actual})")
        if progress is not None and (index % 20 == 0 or index == len(digests) - 1):
            progress("blobs", index + 1, len(digests))
    return problems, len(digests)


def tree_problems(tree: RevTree) -> list[str]:
    """Structural problems of one tree (parents, generations)."""
    problems: list[str] = []
    for node in tree.nodes.values():
        if not revid.is_valid(node.rev_id):
            problems.append(f"malformed revID {node.rev_id!r}")
            continue
        if node.parent is None:
            continue
        parent = tree.get(node.parent)
        if parent is None:
            problems.append(f"{node.rev_id} names parent {node.parent} that is not in the tree")
        elif not revid.is_valid(parent.rev_id) or revid.generation(
            parent.rev_id
        ) >= revid.generation(node.rev_id):
            problems.append(f"{node.rev_id} has parent {node.parent} of no lower generation")
    return problems


def check_rev_trees(engine: Engine, progress: Progress | None = None) -> list[str]:
    """Every rev-tree invariant of the module docstring, for every document."""
    problems: list[str] = []
    last_sequences = dict(engine.query("SELECT id, last_sequence FROM collections"))
    docs = engine.query("SELECT id, collection, doc_id, sequence, rev_id, deleted FROM docs")
    nodes: dict[int, list[tuple[RevNode, bool]]] = defaultdict(list)
    orphan_revs = 0
    known_docs = {row[0] for row in docs}
    for doc, *row in engine.query(f"SELECT doc, {NODE_COLUMNS} FROM revs"):
        if doc not in known_docs:
            orphan_revs += 1
            continue
        nodes[doc].append((node_from_row(tuple(row)), True))
    if orphan_revs:
        problems.append(f"{orphan_revs} revision(s) belong to no document")
    for index, (key, collection, doc_id, sequence, rev_id, deleted) in enumerate(docs):
        where = f"document {doc_id!r} (collection {collection})"
        tree = RevTree(node for node, _ in nodes.get(key, []))
        if not len(tree):
            problems.append(f"{where}: has no revisions")
            continue
        problems.extend(f"{where}: {p}" for p in tree_problems(tree))
        winner = tree.winner()
        if winner is None or winner.rev_id != rev_id:
            problems.append(
                f"{where}: current revision is {rev_id} but the tree's winner is "
                f"{winner.rev_id if winner else 'none'}"
            )
        elif bool(deleted) != winner.deleted:
            problems.append(f"{where}: deleted flag disagrees with revision {rev_id}")
        elif not winner.has_body:
            problems.append(f"{where}: current revision {rev_id} has no body")
        newest = max(node.sequence for node in tree.nodes.values())
        if sequence != newest:
            problems.append(f"{where}: sequence {sequence} but newest revision is at {newest}")
        if sequence > last_sequences.get(collection, 0):
            problems.append(f"{where}: sequence {sequence} is past the collection's last sequence")
        if len(problems) > MAX_PROBLEMS:
            break
        if progress is not None and (index % 500 == 0 or index == len(docs) - 1):
            progress("documents", index + 1, len(docs))
    return problems


def check_missing_blobs(database: IntegrityOwner) -> list[str]:
    """Blobs a current or conflicting revision references that are not stored."""
    with database.engine.locked() as conn:
        used = referenced_digests(conn)
    return [
        f"blob {d}: referenced by a revision but missing"
        for d in sorted(used)
        if not database.blobs.has(d)
    ]


def check_integrity(
    database: IntegrityOwner, progress: Progress | None = None
) -> tuple[list[str], int]:
    """Every check; ``(problems, blobs checked)``. No problems means all is well."""
    problems = check_sqlite(database.engine)
    blob_problems, checked = check_blobs(database.blobs, progress)
    problems.extend(blob_problems)
    problems.extend(check_rev_trees(database.engine, progress))
    problems.extend(check_vectors(database.engine))
    problems.extend(check_missing_blobs(database))
    if len(problems) > MAX_PROBLEMS:
        problems = [*problems[:MAX_PROBLEMS], f"… and {len(problems) - MAX_PROBLEMS} more"]
    return problems, checked


def _leaf_bodies(conn: sqlite3.Connection) -> Iterator[bytes]:
    # instr() skips bodies that cannot hold a blob reference without parsing them.
    cursor = conn.execute(
        "SELECT body FROM revs r WHERE body IS NOT NULL AND instr(body, '\"digest\"') > 0 "
        "AND NOT EXISTS (SELECT 1 FROM revs c WHERE c.doc = r.doc AND c.parent = r.rev_id)"
    )
    for (body,) in cursor:
        yield bytes(body)


def referenced_digests(conn: sqlite3.Connection) -> set[str]:
    """Digests of the blobs every stored leaf body references."""
    digests: set[str] = set()
    for body in _leaf_bodies(conn):
        try:
            parsed = json.loads(body)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            digests.update(
                b["digest"] for b in find_blobs(parsed) if isinstance(b.get("digest"), str)
            )
    return digests
