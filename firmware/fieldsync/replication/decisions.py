"""The replicator's pure decisions: which revisions to ask for, and what history to send.

These functions take a collection (through the narrow ``RevisionLookup`` interface) and the
decoded JSON of a message, and return the JSON of the answer. No I/O besides store reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fieldsync.errors import FieldsyncError
from fieldsync.replication.messages import trim_trailing


class RevisionLookup(Protocol):
    """What the decisions need from a collection of the document store."""

    def check_proposed(
        self, doc_id: str, rev_id: str, parent_rev_id: str | None
    ) -> tuple[int, str | None]: ...

    def find_known_revisions(
        self, doc_id: str, rev_id: str, *, max_ancestors: int = 20, require_bodies: bool = False
    ) -> tuple[bool, list[str]]: ...


class MalformedMessage(FieldsyncError, ValueError):
    """A message body that does not have the shape the protocol defines (answered with 400)."""


@dataclass(frozen=True)
class ProposedChange:
    doc_id: str
    rev_id: str
    parent_rev_id: str | None
    body_size: int


@dataclass(frozen=True)
class AnnouncedChange:
    sequence: Any
    doc_id: str
    rev_id: str
    deleted: bool
    body_size: int


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedMessage(f"{what} must be a non-empty string, got {value!r}")
    return value


def parse_proposed_changes(body: Any) -> list[ProposedChange]:
    """Decode a ``proposeChanges`` body: ``[[docID, revID, serverRevID?, bodySize?], …]``."""
    if not isinstance(body, list):
        raise MalformedMessage("proposeChanges body must be a JSON array")
    changes = []
    for entry in body:
        if not isinstance(entry, list) or len(entry) < 2:
            raise MalformedMessage(f"bad proposeChanges entry {entry!r}")
        parent = entry[2] if len(entry) > 2 else None
        if parent is not None and not isinstance(parent, str):
            raise MalformedMessage(f"bad server revID in proposeChanges entry {entry!r}")
        size = entry[3] if len(entry) > 3 and isinstance(entry[3], int) else 0
        changes.append(
            ProposedChange(
                _string(entry[0], "docID"), _string(entry[1], "revID"), parent or None, size
            )
        )
    return changes


def parse_changes(body: Any) -> list[AnnouncedChange]:
    """Decode a ``changes`` body: ``[[sequence, docID, revID, deleted?, bodySize?], …]``."""
    if not isinstance(body, list):
        raise MalformedMessage("changes body must be a JSON array")
    changes = []
    for entry in body:
        if not isinstance(entry, list) or len(entry) < 3:
            raise MalformedMessage(f"bad changes entry {entry!r}")
        deleted = entry[3] if len(entry) > 3 else 0
        size = entry[4] if len(entry) > 4 and isinstance(entry[4], int) else 0
        changes.append(
            AnnouncedChange(
                entry[0],
                _string(entry[1], "docID"),
                _string(entry[2], "revID"),
                bool(deleted) and deleted in (1, True, 0b101),
                size,
            )
        )
    return changes


def answer_proposed_changes(
    collection: RevisionLookup,
    changes: Sequence[ProposedChange],
    *,
    conflict_includes_rev: bool,
) -> list[Any]:
    """The ``proposeChanges`` reply: per entry 0 (send it), 304 (have it) or 409 (conflict).

    With ``conflict_includes_rev`` a conflict is ``{"status": 409, "rev": <current revID>}``.
    """
    answers: list[Any] = []
    proposals = [(c.doc_id, c.rev_id, c.parent_rev_id) for c in changes]
    many = getattr(collection, "check_proposed_many", None)  # the store's one-query form
    if many is not None:
        checked: list[tuple[int, str | None]] = many(proposals)
    else:
        checked = [collection.check_proposed(*proposal) for proposal in proposals]
    for status, current in checked:
        if status == 409 and conflict_includes_rev and current:
            answers.append({"status": 409, "rev": current})
        else:
            answers.append(status)
    return trim_trailing(answers, 0)


def answer_changes(
    collection: RevisionLookup,
    changes: Sequence[AnnouncedChange],
    *,
    max_ancestors: int = 20,
    require_bodies: bool = False,
) -> tuple[list[Any], list[int]]:
    """The ``changes`` reply and the indexes of the revisions asked for.

    Per entry: a list of known ancestor revIDs (send it) or 0 (already have it). With
    ``require_bodies`` (delta sync) only ancestors whose body is kept are listed, since only those
    can be delta sources.
    """
    answers: list[Any] = []
    wanted: list[int] = []
    for index, change in enumerate(changes):
        have, ancestors = collection.find_known_revisions(
            change.doc_id,
            change.rev_id,
            max_ancestors=max_ancestors,
            require_bodies=require_bodies,
        )
        if have:
            answers.append(0)
        else:
            answers.append(ancestors)
            wanted.append(index)
    return trim_trailing(answers, 0), wanted


def history_to_send(history: Sequence[str], known: Sequence[str], max_history: int) -> list[str]:
    """The ``history`` of a ``rev`` message.

    ``history`` is the revision's ancestry, newest first, *without* the revision itself. It is
    cut just after the first revision the peer already knows, and at ``max_history`` entries.
    """
    known_set = set(known)
    result: list[str] = []
    for rev_id in history:
        if len(result) >= max(max_history, 1):
            break
        result.append(rev_id)
        if rev_id in known_set:
            break
    return result


def changes_entry(
    sequence: int, doc_id: str, rev_id: str, deleted: bool, body_size: int
) -> list[Any]:
    """One entry of a ``changes`` message, as LiteCore's passive pusher writes it."""
    return [sequence, doc_id, rev_id, 1 if deleted else 0, body_size]


def proposed_entry(
    doc_id: str, rev_id: str, remote_rev_id: str | None, body_size: int
) -> list[Any]:
    """One entry of a ``proposeChanges`` message, as LiteCore's active pusher writes it."""
    return [doc_id, rev_id, remote_rev_id or "", body_size]
