"""How one session spells revisions on the wire: rev trees or version vectors.

The subprotocol the listener negotiated decides (VV-NOTES §1): ``BLIP_3+CBMobile_2``/``_3``
sessions speak rev trees (``3-abc…``), ``BLIP_3+CBMobile_4`` sessions speak version vectors
(``<hex>@<source>``, with legacy revIDs for documents nobody changed since the upgrade). A
``WireFormat`` value is chosen once per session and handed to the replication handlers, which ask
it every spelling question: what ``subChanges`` must say, which properties a reply carries, how a
``changes`` row names a revision, how to read a ``proposeChanges`` row or a ``rev`` message, and
what ``history`` a 4.x phone needs (§7 rule 6).

Pure: no sockets, no store access. Parsing and comparison of versions live in
``fieldsync.store.versions``; this module only decides what goes on the wire. Malformed input
raises ``BadVersion`` (an ``InvalidInput``), whose message names the property at fault and which
the handlers answer with a 400 error.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fieldsync.replication.decisions import AnnouncedChange
from fieldsync.replication.messages import (
    DEFAULT_MAX_HISTORY,
    SUBPROTOCOL_V3,
    SUBPROTOCOL_V4,
    format_history,
    is_true,
    parse_history,
    trim_trailing,
)
from fieldsync.store import revid
from fieldsync.store.models import IncomingRevision
from fieldsync.store.versions import (
    HLV,
    RTE_SOURCE,
    BadVersion,
    SourceID,
    Version,
    VersionWithLegacy,
    extract_current,
    legacy_matches,
    legacy_version,
    parse_full,
    parse_rev_history,
    parse_revision,
)
from fieldsync.store.versions import format_history as format_vector_history


class WireFormat(enum.Enum):
    """The revision spelling of a session; the value is ``subChanges``' ``versioning``."""

    REV_TREES = "rev-trees"
    VERSION_VECTORS = "version-vectors"

    @classmethod
    def for_subprotocol(cls, subprotocol: str) -> WireFormat:
        """CBMobile_4 → version vectors; CBMobile_3/_2 (and anything older) → rev trees."""
        return cls.VERSION_VECTORS if subprotocol == SUBPROTOCOL_V4 else cls.REV_TREES

    @property
    def uses_versions(self) -> bool:
        return self is WireFormat.VERSION_VECTORS

    # -- subChanges ------------------------------------------------------------------------------

    def versioning_mismatch(self, requested: str | None) -> str | None:
        """``None`` if ``subChanges``' ``versioning`` fits this session, else the error text.

        A rev-tree session takes the property absent or ``rev-trees`` (LiteCore's passive rule);
        a version-vector session takes it absent (Sync Gateway ignores it) or
        ``version-vectors``.
        """
        if not requested or requested == self.value:
            return None
        known = {f.value for f in WireFormat}
        if requested not in known:
            return f"Incompatible document versioning: unknown versioning {requested!r}"
        protocol = SUBPROTOCOL_V4 if self.uses_versions else SUBPROTOCOL_V3
        return (
            f"Incompatible document versioning: this session speaks {protocol} ({self.value}) "
            f"but subChanges asks for {requested!r}"
        )

    # -- replies to changes / proposeChanges -----------------------------------------------------

    def reply_properties(self, max_history: int = DEFAULT_MAX_HISTORY) -> dict[str, str]:
        """Properties of a reply to ``changes``/``proposeChanges`` (``deltas`` is added by the
        caller on the first reply). No ``maxHistory`` in version-vector replies (§4)."""
        if self.uses_versions:
            return {"blobs": "true", "sendReplacementRevs": "1"}
        return {"maxHistory": str(max_history), "blobs": "true"}

    def rev_reply_properties(self, status: int) -> dict[str, str]:
        """Properties of the success reply to a ``rev``: LiteCore 4.x says ``noop`` when the
        revision was already present or older (status 200); 3.x peers get an empty reply."""
        if self.uses_versions and status == 200:
            return {"noop": "true"}
        return {}

    # -- naming a document's revision ------------------------------------------------------------

    def current_name(self, rev_id: str, version: HLV | None) -> str:
        """How a ``changes`` row or a ``norev`` names a document's revision: in a
        version-vector session the cv, or for a document without a vector its revID written as
        a version (RTE, see ``vector_for_phone``); the rev-tree revID otherwise."""
        if not self.uses_versions:
            return rev_id
        vector = vector_for_phone(rev_id, version)
        return str(vector.cv) if vector is not None else rev_id


def vector_for_phone(rev_id: str, version: HLV | None) -> HLV | None:
    """The vector a 4.x phone is given for a revision: its own, or for a document nobody has
    changed since the upgrade the RTE form of its revID (VV-NOTES §3.4).

    Not the bare legacy revID, as Sync Gateway sends: a LiteCore 4.1 version-vector database
    that pulls a legacy revID stores a record it cannot read back when the next ``changes``
    row for that document arrives (``findAncestors`` fails with "RawRevision decodeTree revIndex
    error", the whole ``changes`` list is refused), so the phone would never get another
    update of it. A phone that holds the legacy revision itself takes the RTE version as the
    same revision (LiteCore compares generation and digest). ``None`` if the revID cannot be
    written as a version (a generation beyond 2**23)."""
    if version is not None:
        return version
    try:
        return HLV(legacy_version(rev_id))
    except (BadVersion, revid.BadRevisionID):
        return None


# -- proposeChanges ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProposedVersion:
    """One ``proposeChanges`` row of a version-vector session, parsed.

    ``rev`` is the proposed cv (or a legacy revID for a document the phone never saved since its
    upgrade); ``proposed`` is the whole vector when the column carried one (LiteCore 4.0.x, 4.1
    continuous). ``parent`` is the phone's idea of our current revision: a version, a legacy
    revID, or ``None`` for a new document; when the column held a whole vector (after a 409
    retry) only its first entry is kept, as Sync Gateway does, the rest being validated.
    """

    doc_id: str
    rev: Version | str
    parent: Version | str | None
    proposed: HLV | None
    body_size: int


def parse_proposed_versions(body: Any) -> list[ProposedVersion]:
    """Decode a version-vector ``proposeChanges`` body: ``[[docID, rev, parent?, size?], …]``.

    ``BadVersion`` (400) names the column at fault (``rev``/``parent``) and the document."""
    if not isinstance(body, list):
        raise BadVersion("body", "proposeChanges body must be a JSON array")
    rows: list[ProposedVersion] = []
    for entry in body:
        if not isinstance(entry, list) or len(entry) < 2:
            raise BadVersion("body", f"bad proposeChanges entry {entry!r}")
        doc_id, rev_text = entry[0], entry[1]
        if not isinstance(doc_id, str) or not doc_id:
            raise BadVersion("docID", f"must be a non-empty string, got {doc_id!r}")
        field = f"rev of '{doc_id}'"
        rev = extract_current(rev_text, field)
        proposed: HLV | None = None
        if isinstance(rev, Version) and isinstance(rev_text, str) and rev_text.strip() != str(rev):
            whole = parse_full(rev_text, field)
            proposed = whole.vector
        raw_parent = entry[2] if len(entry) > 2 else None
        parent: Version | str | None = None
        if raw_parent not in (None, ""):
            parent_field = f"parent of '{doc_id}'"
            parent = extract_current(raw_parent, parent_field)
            if isinstance(raw_parent, str) and raw_parent.strip() != str(parent):
                parse_full(raw_parent, parent_field)  # a whole vector: validate all of it
        size = entry[3] if len(entry) > 3 and isinstance(entry[3], int) else 0
        rows.append(ProposedVersion(doc_id, rev, parent, proposed, size))
    return rows


class VersionLookup(Protocol):
    """What ``answer_version_changes`` needs from a collection."""

    def has_version(self, doc_id: str, version: Version | str) -> bool: ...


def answer_version_changes(
    collection: VersionLookup, changes: Sequence[AnnouncedChange]
) -> tuple[list[Any], list[int]]:
    """The reply to a ``changes`` list in a version-vector session (a peer pushing with
    ``changes`` rather than ``proposeChanges``; LiteCore 4.x does not): 0 for a revision we
    already have, ``[]`` (send it) otherwise; and the indexes asked for. Rows may carry whole
    vectors; only the first entry counts."""
    answers: list[Any] = []
    wanted: list[int] = []
    for position, change in enumerate(changes):
        current = extract_current(change.rev_id, f"rev of '{change.doc_id}'")
        if collection.has_version(change.doc_id, current):
            answers.append(0)
        else:
            answers.append([])
            wanted.append(position)
    return trim_trailing(answers, 0), wanted


# -- receiving a rev ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionedRevision:
    """A ``rev`` of a version-vector session named by a version: the vector plus legacy tail."""

    doc_id: str
    version: VersionWithLegacy
    deleted: bool
    no_conflicts: bool


def read_rev(
    wire: WireFormat, properties: Mapping[str, str], body: bytes = b""
) -> VersionedRevision | IncomingRevision:
    """What a received ``rev`` names.

    Rev-tree sessions, and legacy revIDs in a version-vector session (a document the phone has
    not saved since its upgrade), give an ``IncomingRevision`` with ``body`` (a delta's caller
    replaces it with the whole body); a version gives a ``VersionedRevision``. ``BadVersion``
    names the property.
    """
    doc_id = properties.get("id", "")
    rev = properties.get("rev", "")
    if not doc_id:
        raise BadVersion("id", "missing document ID")
    deleted = is_true(properties.get("deleted"))
    no_conflicts = is_true(properties.get("noconflicts"))
    history_text = properties.get("history")
    if not wire.uses_versions or "@" not in rev:
        try:
            revid.parse(rev)
        except revid.BadRevisionID as exc:
            raise BadVersion("rev", str(exc)) from None
        history = parse_history(history_text)
        for entry in history:
            try:
                revid.parse(entry)
            except revid.BadRevisionID as exc:
                raise BadVersion("history", str(exc)) from None
        return IncomingRevision(
            doc_id=doc_id,
            rev_id=rev,
            history=history,
            deleted=deleted,
            body=body,
            no_conflicts=no_conflicts,
            from_vv_peer=wire.uses_versions,
        )
    version = parse_rev_history(rev, history_text)
    return VersionedRevision(doc_id, version, deleted, no_conflicts)


@dataclass
class PeerKey:
    """Who the peer of a session is, for the per-phone ``lastLegacyRevID`` bookkeeping of
    CBMobile_4 sessions (VV-NOTES §7): ``value`` is ``None`` until the session learns it. A
    plain holder shared by the session's puller and pushers (no back references, so a closed
    connection is freed without the cyclic collector)."""

    value: str | None = None


def peer_source(uuid_property: str | None) -> SourceID | None:
    """The source ID of a 4.x phone from ``getCollections``' ``uuid`` (4.0.3+), or ``None``
    when it sent none. ``BadVersion`` (field ``uuid``) when it is not a UUID."""
    if uuid_property is None or uuid_property == "":
        return None
    return SourceID.from_uuid(uuid_property, field="uuid")


# -- sending a rev to a 4.x phone ----------------------------------------------------------------


@dataclass(frozen=True)
class OutgoingRev:
    """The ``rev``/``history`` pair for a revision sent in a version-vector session, and the
    phone's ``lastLegacyRevID`` the device learns by sending it (``None``: nothing learned)."""

    rev: str
    history: str | None
    learned_peer_legacy: str | None = None


def outgoing_rev(
    rev_id: str,
    vector: HLV | None,
    ancestry: Sequence[str],
    known: Sequence[str],
    peer_legacy: str | None,
    *,
    max_history: int = DEFAULT_MAX_HISTORY,
) -> OutgoingRev:
    """What to send a 4.x phone for a revision (VV-NOTES §3.3, §7 rule 6).

    ``rev_id``/``vector``: the revision's rev-tree ID and vector (``None`` for a document with
    no vector yet). ``ancestry``: its rev-tree ancestors, newest first, without ``rev_id``.
    ``known``: the phone's reply to ``changes`` (its local revision first). ``peer_legacy``:
    the phone's ``lastLegacyRevID`` for this document as learned earlier (``''`` = it has
    none, ``None`` = unknown).

    * no vector: the RTE version of ``rev_id`` stands for one (``vector_for_phone``);
    * the phone holds an RTE version of a revision of ours: it goes into the pv sent;
    * the phone's copy is the legacy revID ``R``: the vector's history, then the rev-tree chain
      from ``rev_id`` down to ``R`` (so the phone sees a descendant); the device learns ``R``;
    * otherwise: the vector's history, then the phone's ``lastLegacyRevID`` if it has one.
    """
    chain = [rev_id, *ancestry]
    spelled = vector_for_phone(rev_id, vector)
    if spelled is None:
        return OutgoingRev(rev_id, _rev_tree_history(ancestry, known, max_history))
    spelled = _with_known_rte(spelled, chain, known)
    first = known[0] if known else None
    if first is not None and "@" not in first:
        if first in chain:
            tail = chain[: chain.index(first) + 1]
            return OutgoingRev(str(spelled.cv), format_vector_history(spelled, tail), first)
        # The phone's legacy revision is not in our tree: a real conflict, which the phone flags.
        return OutgoingRev(str(spelled.cv), format_vector_history(spelled, chain[:max_history]))
    tail = [peer_legacy] if peer_legacy else []
    return OutgoingRev(str(spelled.cv), format_vector_history(spelled, tail))


def _with_known_rte(vector: HLV, chain: Sequence[str], known: Sequence[str]) -> HLV:
    """``vector`` plus, as a previous version, the RTE version the phone holds when it names a
    revision of ``chain`` (the phone got it as RTE; our vector, made when that revision was
    first changed, does not list it). LiteCore gives a vector the parent's RTE version the same
    way (``generateVersionVector``). A vector already holding an RTE entry is left alone (one
    entry per source)."""
    if vector.time_of(RTE_SOURCE) is not None:
        return vector
    for entry in known:
        if "@" not in entry:
            continue
        try:
            version = Version.parse(entry, "known")
        except BadVersion:
            continue
        if version.is_legacy and any(legacy_matches(r, version) for r in chain):
            return HLV(vector.cv, vector.mv, (*vector.pv, version))
    return vector


def _rev_tree_history(
    ancestry: Sequence[str], known: Sequence[str], max_history: int
) -> str | None:
    known_set = set(known)
    sent: list[str] = []
    for rev_id in ancestry:
        if len(sent) >= max(max_history, 1):
            break
        sent.append(rev_id)
        if rev_id in known_set:
            break
    return format_history(sent) if sent else None


def delta_bases(known: Sequence[str]) -> list[Version | str]:
    """The phone's known revisions as possible delta sources, in its order (its local
    revision first): versions and legacy revIDs; anything unreadable is skipped."""
    bases: list[Version | str] = []
    for entry in known:
        try:
            bases.append(parse_revision(entry, "known"))
        except BadVersion:
            continue
    return bases
