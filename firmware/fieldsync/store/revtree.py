"""A document's revision tree, in memory: the pure rules, no SQL.

The rules are Couchbase Lite's (LiteCore's ``RevTree``):

* every revision has at most one parent; revisions without children are *leaves*; all leaves are
  kept, so conflicting branches stay visible until resolved or purged;
* the *winner* (current revision) is the leaf that is live rather than deleted, then has the
  higher revID (generation first, then digest);
* inserting a revision with its history grafts it onto the newest ancestor already present;
  missing ancestors become body-less nodes that only carry their revID;
* history is bounded: once the tree holds more than ``max_depth`` revisions, revisions more than
  ``max_depth`` deep below any leaf are pruned away.

The tree records what changed (added, re-parented, body dropped, removed) so the caller can write
just those rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fieldsync.errors import FieldsyncError
from fieldsync.store import revid


class BadHistory(FieldsyncError, ValueError):
    """A revision history whose generations do not descend one by one."""


@dataclass(slots=True)
class RevNode:
    rev_id: str
    parent: str | None
    deleted: bool
    sequence: int
    has_body: bool
    #: The tombstone closing a losing conflict branch (LiteCore's ``kRevClosed``).
    closed: bool = False


#: The ``revs`` columns a :class:`RevNode` is read from, in :func:`node_from_row` order.
NODE_COLUMNS = "rev_id, parent, deleted, sequence, body IS NOT NULL, closed"


def node_from_row(row: tuple[str, str | None, int, int, int, int]) -> RevNode:
    """A node from a row of :data:`NODE_COLUMNS`."""
    rev_id, parent, deleted, sequence, has_body, closed = row
    return RevNode(rev_id, parent, bool(deleted), sequence, bool(has_body), bool(closed))


def _priority(node: RevNode) -> tuple[bool, bool, tuple[int, str]]:
    """Sort key of a leaf: higher means a better candidate for winner. As LiteCore's
    ``compareRevs``: live before deleted, closed branches after even deletions, then revID.
    So once the winner is deleted, the branches closed by conflict resolution cannot outrank
    it (every side would otherwise pick its own closing tombstone)."""
    return (not node.deleted, not node.closed, revid.sort_key(node.rev_id))


class RevTree:
    """The revisions of one document."""

    def __init__(self, nodes: Iterable[RevNode] = ()) -> None:
        self.nodes: dict[str, RevNode] = {node.rev_id: node for node in nodes}
        #: revisions added since loading, in insertion order, with their bodies (or ``None``).
        self.added: dict[str, bytes | None] = {}
        #: loaded revisions whose parent or body presence changed, and loaded ones removed.
        self.changed: set[str] = set()
        self.removed: set[str] = set()

    # -- queries ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, rev_id: object) -> bool:
        return rev_id in self.nodes

    def get(self, rev_id: str) -> RevNode | None:
        return self.nodes.get(rev_id)

    def leaves(self) -> list[RevNode]:
        """All leaves, best first (the winner is the first)."""
        parents = {node.parent for node in self.nodes.values()}
        leaves = [node for node in self.nodes.values() if node.rev_id not in parents]
        leaves.sort(key=_priority, reverse=True)
        return leaves

    def winner(self) -> RevNode | None:
        """The current revision, or ``None`` for an empty tree."""
        parents = {node.parent for node in self.nodes.values()}
        best: RevNode | None = None
        best_key = None
        for node in self.nodes.values():
            if node.rev_id in parents:
                continue
            key = _priority(node)
            if best_key is None or key > best_key:
                best, best_key = node, key
        return best

    def is_leaf(self, rev_id: str) -> bool:
        return rev_id in self.nodes and all(n.parent != rev_id for n in self.nodes.values())

    def ancestry(self, rev_id: str) -> list[str]:
        """``rev_id`` then its ancestors, newest first; empty if unknown."""
        chain: list[str] = []
        node = self.nodes.get(rev_id)
        while node is not None:
            chain.append(node.rev_id)
            node = self.nodes.get(node.parent) if node.parent else None
        return chain

    def in_priority_order(self) -> list[RevNode]:
        """Every revision: leaves best first, then the others by descending revID."""
        leaves = self.leaves()
        leaf_ids = {node.rev_id for node in leaves}
        others = [node for node in self.nodes.values() if node.rev_id not in leaf_ids]
        others.sort(key=lambda node: revid.sort_key(node.rev_id), reverse=True)
        return leaves + others

    # -- changes ---------------------------------------------------------------------------

    def add(
        self,
        rev_id: str,
        parent: str | None,
        deleted: bool,
        sequence: int,
        body: bytes | None,
        *,
        closed: bool = False,
    ) -> RevNode:
        """Add a revision (no checks: callers decide whether it belongs)."""
        node = RevNode(rev_id, parent, deleted, sequence, body is not None, closed)
        self.nodes[rev_id] = node
        self.added[rev_id] = body
        return node

    def find_common_ancestor(self, chain: Sequence[str], max_depth: int) -> int:
        """Index in ``chain`` (a revID followed by its ancestors, newest first) of the first
        revision already in the tree, or ``len(chain)`` if none is.

        Generations must descend one by one; like LiteCore, a gap is tolerated only at a depth
        that pruning will cut off anyway. Raises ``BadHistory`` otherwise.
        """
        last_gen = 0
        for index, rev_id in enumerate(chain):
            gen = revid.generation(rev_id)
            if last_gen and gen != last_gen - 1 and not (gen < last_gen and index >= max_depth - 1):
                raise BadHistory(
                    f"revision history is not sequential at {rev_id!r} (after generation "
                    f"{last_gen})"
                )
            last_gen = gen
            if rev_id in self.nodes:
                return index
        return len(chain)

    def graft(
        self,
        chain: Sequence[str],
        ancestor_index: int,
        deleted: bool,
        sequence: int,
        body: bytes,
    ) -> None:
        """Insert ``chain[0]`` (with ``body``) and its unknown ancestors ``chain[1:ancestor_index]``
        (without bodies) below ``chain[ancestor_index]`` (or as a new root if that is past the
        end)."""
        parent = chain[ancestor_index] if ancestor_index < len(chain) else None
        for index in range(ancestor_index - 1, 0, -1):
            self.add(chain[index], parent, False, sequence, None)
            parent = chain[index]
        self.add(chain[0], parent, deleted, sequence, body)

    def drop_old_bodies(self, rev_id: str, keep_generations: int) -> None:
        """Forget the bodies of ``rev_id``'s ancestors more than ``keep_generations`` above it."""
        distance = 0
        node = self.nodes.get(rev_id)
        while node is not None and node.parent:
            node = self.nodes.get(node.parent)
            distance += 1
            if node is not None and distance > keep_generations and node.has_body:
                node.has_body = False
                self._mark_changed(node.rev_id)

    def prune(self, max_depth: int) -> list[str]:
        """Remove revisions more than ``max_depth`` deep below any leaf; return their revIDs."""
        if max_depth < 1:
            raise ValueError("max_depth must be at least 1")
        if len(self.nodes) <= max_depth:
            return []
        doomed: set[str] = set()
        for leaf in self.leaves():
            depth = 0
            node: RevNode | None = leaf
            while node is not None:
                depth += 1
                if depth > max_depth:
                    doomed.add(node.rev_id)
                node = self.nodes.get(node.parent) if node.parent else None
        if not doomed:
            return []
        for node in self.nodes.values():
            if node.rev_id in doomed:
                continue
            parent = node.parent
            while parent is not None and parent in doomed:
                parent = self.nodes[parent].parent
            if parent != node.parent:
                node.parent = parent
                self._mark_changed(node.rev_id)
        for rev_id in doomed:
            del self.nodes[rev_id]
            if rev_id in self.added:
                del self.added[rev_id]
            else:
                self.removed.add(rev_id)
                self.changed.discard(rev_id)
        return sorted(doomed, key=revid.sort_key)

    def _mark_changed(self, rev_id: str) -> None:
        if rev_id not in self.added:
            self.changed.add(rev_id)
        elif not self.nodes[rev_id].has_body:
            # Added in this same operation and already superseded: store it without a body.
            self.added[rev_id] = None
