"""How a Pusher talks to the peer: the one thing that differs between the two sides.

The passive side answers a peer's ``subChanges`` with ``changes`` lists (``ChangesMode``); the
active replicator offers its own revisions with ``proposeChanges`` and ``noconflicts``
(``ProposeMode``). In a CBMobile_4 session the passive side names revisions by version and
sends 4.x phones a vector history (``VectorChangesMode``). Everything else a Pusher does is the
same for all of them.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

from fieldsync.replication import decisions
from fieldsync.replication.messages import CHANGES, PROPOSE_CHANGES, format_history
from fieldsync.replication.ports import ReplicatedCollection
from fieldsync.replication.versioning import PeerKey, WireFormat, delta_bases, outgoing_rev
from fieldsync.replication.writer import WRITER
from fieldsync.store import Change, Revision
from fieldsync.store.versions import Version, legacy_matches


@dataclass(frozen=True)
class SpelledRev:
    """How a ``rev`` message names a revision: ``rev``, ``history`` (``None``: omit), and the
    revisions the peer has that may serve as delta sources, as (wire name, local revID)."""

    rev: str
    history: str | None
    delta_bases: list[tuple[str, str]] = field(default_factory=list)


def spell_rev_tree(
    collection: ReplicatedCollection, revision: Revision, known: list[str], max_history: int
) -> SpelledRev:
    """Rev-tree spelling: the revID, its ancestry cut after the first one the peer knows."""
    if revision.rev_id.startswith("1-"):
        ancestry: list[str] = []  # a first revision has none: no need to read the tree
    else:
        ancestry = collection.rev_history(revision.doc_id, revision.rev_id)[1:]
    sent = decisions.history_to_send(ancestry, known, max_history)
    return SpelledRev(
        revision.rev_id, format_history(sent) if sent else None, [(k, k) for k in known]
    )


log = logging.getLogger(__name__)


def _log_failure(write: Future[None]) -> None:
    exc = write.exception()
    if exc is not None:
        log.warning("could not record a peer's legacy revision: %s", exc)


class PushMode(Protocol):
    """The wire behaviour of one kind of Pusher."""

    #: The profile of the change lists (``changes`` or ``proposeChanges``).
    profile: str

    def announcement(self, changes: list[Change]) -> tuple[dict[str, str], list[object]]:
        """The properties and the JSON entries of the change list announcing ``changes``."""
        ...

    def wanted(self, change: Change, answer: object) -> tuple[list[str] | None, str | None]:
        """From the peer's answer to one entry: the ancestors it knows if it wants the revision
        (``None`` if not), and the conflicting revID it holds when it reports a conflict."""
        ...

    def peer_has(self, doc_id: str, rev_id: str) -> None:
        """The peer holds ``rev_id`` of ``doc_id`` (it said so in a conflict): announce later
        revisions against it."""
        ...

    def caught_up_before_idle(self) -> bool:
        """Whether to send the empty "caught up" list as soon as the backlog is announced
        (before its revisions are acknowledged) rather than after."""
        ...

    def caught_up_notice(self, *, continuous: bool) -> bool:
        """Whether this mode sends the empty "caught up" list at all."""
        ...

    def rev_properties(self) -> dict[str, str]:
        """Extra properties of every ``rev`` message."""
        ...

    def name(self, change: Change) -> str:
        """How the change list named the change's revision (also used by ``norev`` and
        ``replacedRev``)."""
        ...

    def spell_rev(
        self,
        collection: ReplicatedCollection,
        revision: Revision,
        known: list[str],
        max_history: int,
    ) -> SpelledRev:
        """``rev``/``history`` for sending ``revision`` to a peer that knows ``known``."""
        ...

    def revision_sent(self, doc_id: str, rev_id: str) -> None:
        """The peer acknowledged ``rev_id`` of ``doc_id``."""
        ...


class RevTreeSpelling:
    """Revisions named and sent as rev-tree revIDs with their history (CBMobile_2/3)."""

    def name(self, change: Change) -> str:
        return change.rev_id

    def spell_rev(
        self,
        collection: ReplicatedCollection,
        revision: Revision,
        known: list[str],
        max_history: int,
    ) -> SpelledRev:
        return spell_rev_tree(collection, revision, known, max_history)


class ChangesMode(RevTreeSpelling):
    """The passive side: feed a peer that pulls (``subChanges``) with ``changes`` lists."""

    profile = CHANGES

    def announcement(self, changes: list[Change]) -> tuple[dict[str, str], list[object]]:
        return {}, [
            decisions.changes_entry(c.sequence, c.doc_id, c.rev_id, c.deleted, c.body_size)
            for c in changes
        ]

    def wanted(self, change: Change, answer: object) -> tuple[list[str] | None, str | None]:
        if isinstance(answer, list):
            return [rev for rev in answer if isinstance(rev, str)], None
        return None, None

    def caught_up_before_idle(self) -> bool:
        return True  # LiteCore's passive pusher sends an empty NoReply "changes" at once

    def caught_up_notice(self, *, continuous: bool) -> bool:
        return True

    def rev_properties(self) -> dict[str, str]:
        return {}

    def revision_sent(self, doc_id: str, rev_id: str) -> None:
        return None

    def peer_has(self, doc_id: str, rev_id: str) -> None:
        return None


class ProposeMode(RevTreeSpelling):
    """The active side: offer revisions with ``proposeChanges`` against the revision the peer is
    known to have (``remote_revs``: docID -> the peer's revID, updated as revisions go out)."""

    profile = PROPOSE_CHANGES

    def __init__(self, remote_revs: dict[str, str]) -> None:
        self.remote_revs = remote_revs

    def announcement(self, changes: list[Change]) -> tuple[dict[str, str], list[object]]:
        return {"conflictIncludesRev": "true"}, [
            decisions.proposed_entry(
                c.doc_id, c.rev_id, self.remote_revs.get(c.doc_id), c.body_size
            )
            for c in changes
        ]

    def wanted(self, change: Change, answer: object) -> tuple[list[str] | None, str | None]:
        if answer in (0, None):
            remote = self.remote_revs.get(change.doc_id)
            return ([remote] if remote else []), None
        status = answer.get("status") if isinstance(answer, dict) else answer
        if status == 409:
            current = answer.get("rev") if isinstance(answer, dict) else None
            return None, str(current or "")
        if status == 304:  # the peer has it already: it is the ancestor to propose against
            self.remote_revs[change.doc_id] = change.rev_id  # (LiteCore marks it synced)
        return None, None

    def peer_has(self, doc_id: str, rev_id: str) -> None:
        self.remote_revs[doc_id] = rev_id

    def caught_up_before_idle(self) -> bool:
        return False

    def caught_up_notice(self, *, continuous: bool) -> bool:
        # LiteCore's active pusher says "caught up" with an empty NoReply proposeChanges, and
        # only when it keeps running.
        return continuous

    def rev_properties(self) -> dict[str, str]:
        return {"noconflicts": "true"}

    def revision_sent(self, doc_id: str, rev_id: str) -> None:
        self.remote_revs[doc_id] = rev_id


class VectorChangesMode(ChangesMode):
    """The passive side of a CBMobile_4 session (a 4.x phone pulls): ``changes`` rows name the
    cv (the legacy revID while a document has no vector), and each ``rev`` carries the vector
    history plus the legacy tail the phone needs (``versioning.outgoing_rev``). What the phone
    learns about its ``lastLegacyRevID`` from a revision is recorded once it acknowledges it.

    ``peer``: the phone's key for that bookkeeping (``None`` until known: nothing recorded).
    """

    def __init__(self, collection: ReplicatedCollection, peer: PeerKey) -> None:
        self._collection = collection
        self._peer = peer
        self._learned: dict[tuple[str, str], str] = {}

    def announcement(self, changes: list[Change]) -> tuple[dict[str, str], list[object]]:
        return {}, [
            decisions.changes_entry(c.sequence, c.doc_id, self.name(c), c.deleted, c.body_size)
            for c in changes
        ]

    def name(self, change: Change) -> str:
        return WireFormat.VERSION_VECTORS.current_name(change.rev_id, change.version)

    def spell_rev(
        self,
        collection: ReplicatedCollection,
        revision: Revision,
        known: list[str],
        max_history: int,
    ) -> SpelledRev:
        doc_id = revision.doc_id
        peer = self._peer.value
        peer_legacy = collection.get_peer_legacy(doc_id, peer) if peer else None
        ancestry = collection.rev_history(doc_id, revision.rev_id)[1:]
        out = outgoing_rev(
            revision.rev_id, revision.version, ancestry, known, peer_legacy, max_history=max_history
        )
        if out.learned_peer_legacy is not None and peer:
            self._learned[(doc_id, revision.rev_id)] = out.learned_peer_legacy
        bases: list[tuple[str, str]] = []
        for base in delta_bases(known):
            if isinstance(base, Version) and base.is_legacy:
                # The phone holds a revision of ours it got as RTE (``vector_for_phone``).
                bases.extend(
                    (str(base), r) for r in (revision.rev_id, *ancestry) if legacy_matches(r, base)
                )
            elif isinstance(base, Version):
                found = collection.get_revision_by_version(doc_id, base, with_body=False)
                if found is not None:
                    bases.append((str(base), found.rev_id))
            else:
                bases.append((base, base))
        return SpelledRev(out.rev, out.history, bases)

    def revision_sent(self, doc_id: str, rev_id: str) -> None:
        learned = self._learned.pop((doc_id, rev_id), None)
        peer = self._peer.value
        if learned is not None and peer:
            # On the writer thread, in order with the session's other writes: a foreign write
            # lock must not hold the event loop.
            write = WRITER.submit(self._collection.set_peer_legacy, doc_id, peer, learned)
            write.add_done_callback(_log_failure)
