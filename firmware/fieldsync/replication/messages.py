"""Names and small encodings of the Couchbase Mobile replication protocol (version 3).

Everything here is pure: message profiles, property names, subprotocol names and the few
encodings (sequences, histories, booleans) both the passive and the active side share.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fieldsync import fastjson, safejson

#: WebSocket subprotocols. CBMobile_2 is the 2.x name of CBMobile_3 (rev trees); CBMobile_4 is
#: the version-vector protocol of Couchbase Lite 4.x (VV-NOTES.md).
SUBPROTOCOL_V4 = "BLIP_3+CBMobile_4"
SUBPROTOCOL_V3 = "BLIP_3+CBMobile_3"
SUBPROTOCOL_V2 = "BLIP_3+CBMobile_2"
#: What the listener speaks. It takes the first of these the *client* offers, as Sync Gateway
#: does, so the order here is only for messages.
LISTENER_SUBPROTOCOLS = (SUBPROTOCOL_V4, SUBPROTOCOL_V3, SUBPROTOCOL_V2)
#: What the active replicator offers, most preferred first: rev trees only (Sync Gateway 4
#: accepts CBMobile_3).
SUPPORTED_SUBPROTOCOLS = (SUBPROTOCOL_V3, SUBPROTOCOL_V2)

# Message profiles.
GET_CHECKPOINT = "getCheckpoint"
SET_CHECKPOINT = "setCheckpoint"
GET_COLLECTIONS = "getCollections"
SUB_CHANGES = "subChanges"
CHANGES = "changes"
PROPOSE_CHANGES = "proposeChanges"
REV = "rev"
NOREV = "norev"
GET_ATTACHMENT = "getAttachment"
PROVE_ATTACHMENT = "proveAttachment"

#: Property names and values (most messages a phone sends are revisions: Profile, id, rev,
#: sequence, noconflicts, ...). Our BLIP sessions give received messages these very strings,
#: so the thousand revisions a LiteCore pusher keeps in flight share one copy (issue 13).
SHARED_PROPERTY_STRINGS: Mapping[str, str] = {
    s: s
    for s in (
        "Profile",
        "collection",
        "id",  # and "rev": REV below
        "sequence",
        "noconflicts",
        "history",
        "deleted",
        "deltaSrc",
        "Error-Code",
        "Error-Domain",
        "0",
        "1",
        "true",
        REV,
        NOREV,
        CHANGES,
        PROPOSE_CHANGES,
        GET_CHECKPOINT,
        SET_CHECKPOINT,
        GET_ATTACHMENT,
    )
}

#: Profiles that address one collection (and so carry ``collection`` in collection-aware mode).
COLLECTION_PROFILES = frozenset(
    {GET_CHECKPOINT, SET_CHECKPOINT, SUB_CHANGES, CHANGES, PROPOSE_CHANGES, REV, NOREV}
)
#: Profiles whose body may be a whole document, larger than BLIP's ordinary-body limit.
LARGE_BODY_PROFILES = frozenset({REV})

#: Replication tuning shared with LiteCore (ReplicatorTuning.hh).
DEFAULT_MAX_HISTORY = 50
CHANGES_BATCH_SIZE = 200
MAX_CHANGE_LISTS_IN_FLIGHT = 5
MAX_REVS_IN_FLIGHT = 10
MAX_REV_BYTES_AWAITING_REPLY = 2 * 1024 * 1024
INSERTION_BATCH_SIZE = 100
INSERTION_DELAY = 0.020


def is_true(value: str | None) -> bool:
    """How LiteCore reads a boolean property: ``"true"`` or any non-zero integer."""
    if not value:
        return False
    if value.lower() == "true":
        return True
    try:
        return int(value) != 0
    except ValueError:
        return False


def parse_sequence(value: str | None) -> int:
    """Parse a JSON-encoded sequence property (``since``, ``sequence``); 0 when absent or odd."""
    if not value:
        return 0
    try:
        decoded = safejson.loads(value)
    except ValueError:
        return 0
    if isinstance(decoded, bool) or not isinstance(decoded, int):
        return 0
    return max(decoded, 0)


def parse_history(value: str | None) -> list[str]:
    """Split a ``history`` property (revIDs, comma-separated, newest first)."""
    if not value:
        return []
    return [item.strip() for item in value.split(",") if item.strip()]


def format_history(rev_ids: Iterable[str]) -> str:
    return ",".join(rev_ids)


def encode_json(value: Any) -> bytes:
    """Compact JSON, as the protocol's message bodies use."""
    return fastjson.dumps(value)


def collection_property(index: int | None) -> dict[str, str]:
    """The ``collection`` property for a message, or nothing in legacy mode."""
    return {} if index is None else {"collection": str(index)}


def with_collection(properties: Mapping[str, str], index: int | None) -> dict[str, str]:
    merged = dict(properties)
    merged.update(collection_property(index))
    return merged


def trim_trailing(items: Sequence[Any], empty: Any) -> list[Any]:
    """Drop trailing ``empty`` items from a reply array (the protocol lets them be omitted)."""
    end = len(items)
    while end and items[end - 1] == empty and not isinstance(items[end - 1], bool):
        end -= 1
    return list(items[:end])
