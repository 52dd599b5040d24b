"""How a Pusher talks to the peer: the one thing that differs between the two sides.

The passive side answers a peer's ``subChanges`` with ``changes`` lists (``ChangesMode``); the
active replicator offers its own revisions with ``proposeChanges`` and ``noconflicts``
(``ProposeMode``). Everything else a Pusher does is the same for both.
"""

from __future__ import annotations

import logging
from typing import Protocol

from fieldsync.replication import decisions
from fieldsync.replication.messages import CHANGES, PROPOSE_CHANGES
from fieldsync.store import Change

log = logging.getLogger(__name__)


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

    def revision_sent(self, doc_id: str, rev_id: str) -> None:
        """The peer acknowledged ``rev_id`` of ``doc_id``."""
        ...


class ChangesMode:
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


class ProposeMode:
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
        return None, None

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
