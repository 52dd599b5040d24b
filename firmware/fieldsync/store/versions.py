"""Document versions in both spellings: rev-tree revIDs and version vectors (CBMobile_4).

``revid`` holds the rev-tree rules (``<generation>-<hex digest>``); this module holds the vector
rules and everything that relates the two (VV-NOTES.md §2-§3). It is pure: no I/O, no SQL.

* ``SourceID``: 16 bytes, written as 22 base64 characters (padding stripped); the last character
  must leave the unused low bits zero (one of ``A Q g w``), so each ID has exactly one spelling.
* ``Version``: ``<lowercase hex time>@<source>``; time 0 is invalid; ``*`` (LiteCore's local
  shorthand for "me") is refused.
* ``HLV``: current version (cv), merge versions (mv), previous versions (pv), written
  ``cv, mv1, mv2; pv1, pv2`` (a merge without pvs ends with ``;``).
* ``VersionWithLegacy``: a vector plus trailing legacy revIDs (LiteCore's
  ``VersionVecWithLegacy``), the form a ``rev`` + ``history`` pair carries on the wire.
* ``compare_vectors`` (§3.1), ``compare_with_legacy`` (§3.3), ``legacy_version`` (RTE, §3.4).
* ``HybridLogicalClock``: the device's clock for new versions.

Every malformed input raises ``BadVersion``, which names the field it came from (``rev``,
``history``, ``source``, ...) and is an ``InvalidInput`` (HTTP 400).
"""

from __future__ import annotations

import base64
import enum
import functools
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from fieldsync.store import revid
from fieldsync.store.errors import InvalidInput

#: Smallest valid HLC time (LiteCore's ``HybridClock`` minimum, 2**40 ns after the epoch).
MIN_VALID_TIME = 1 << 40
#: Largest valid time (stored as SQLite's signed 64-bit integer).
MAX_VALID_TIME = (1 << 63) - 1
#: Low bits of an HLC time that are a counter, not wall-clock nanoseconds.
COUNTER_MASK = 0xFFFF
#: Phones refuse versions whose time is more than this far ahead of their own clock.
PEER_MAX_SKEW_NS = 120 * 1_000_000_000
#: How far ahead of the newest phone clock the device ever stamps (well inside the 2 minutes).
STAMP_MARGIN_NS = 30 * 1_000_000_000

_SOURCE_CHARS = 22
_SOURCE_TEXT = re.compile(r"[A-Za-z0-9+/]{21}[AQgw]", re.ASCII)
_UUID_TEXT = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}", re.ASCII)
_HEX_TIME = re.compile(r"[0-9a-fA-F]{1,16}", re.ASCII)


class BadVersion(InvalidInput):
    """A malformed source ID, version, vector or history. ``field`` names where it came from."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.detail = message

    def for_field(self, field: str) -> BadVersion:
        """The same complaint about another field (a parser called on behalf of ``field``)."""
        return BadVersion(field, self.detail)


class Order(enum.Enum):
    """How revision ``a`` relates to revision ``b``."""

    SAME = "same"
    OLDER = "older"
    NEWER = "newer"
    CONFLICT = "conflict"

    def reverse(self) -> Order:
        """The order of ``b`` relative to ``a``."""
        if self is Order.OLDER:
            return Order.NEWER
        if self is Order.NEWER:
            return Order.OLDER
        return self


# -- source IDs ---------------------------------------------------------------------------------

# Source IDs already validated (a database sees a handful: its own and its phones'); parsing
# every stored vector re-validated them, ~4 % of a pull's CPU (perf, issue 13). Bounded.
_KNOWN_SOURCES: dict[str, SourceID] = {}
_KNOWN_SOURCES_MAX = 1024


@dataclass(frozen=True, slots=True, order=True)
class SourceID:
    """A replica's 16-byte identity, held as its canonical 22-character base64 text."""

    text: str

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or _SOURCE_TEXT.fullmatch(self.text) is None:
            raise BadVersion("source", f"not a 22-character base64 source ID: {self.text!r}")
        if self.text == _ZERO_TEXT:
            raise BadVersion("source", "the all-zero source ID means 'me' and is not absolute")

    @classmethod
    def parse(cls, text: object, field: str = "source") -> SourceID:
        """Validate ``text`` (exactly 22 base64 characters, canonical last character)."""
        if isinstance(text, str):
            known = _KNOWN_SOURCES.get(text)
            if known is not None:
                return known
            if text == "*":
                raise BadVersion(field, "'*' (local shorthand) is not allowed in received versions")
        try:
            source = cls(text)  # type: ignore[arg-type]
        except BadVersion as exc:
            raise exc.for_field(field) from None
        if len(_KNOWN_SOURCES) >= _KNOWN_SOURCES_MAX:
            _KNOWN_SOURCES.clear()
        _KNOWN_SOURCES[source.text] = source
        return source

    @classmethod
    def from_bytes(cls, raw: bytes) -> SourceID:
        """The source ID of 16 raw bytes (e.g. a LiteCore database's public UUID)."""
        if len(raw) != 16:
            raise BadVersion("source", f"a source ID is 16 bytes, not {len(raw)}")
        return cls(base64.b64encode(raw).decode("ascii")[:_SOURCE_CHARS])

    @classmethod
    def from_uuid(cls, text: str, field: str = "uuid") -> SourceID:
        """The source ID of a LiteCore peer from the ``uuid`` it sends in ``getCollections``."""
        if not isinstance(text, str) or _UUID_TEXT.fullmatch(text) is None:
            raise BadVersion(field, f"not a UUID: {text!r}")
        try:
            return cls.from_bytes(bytes.fromhex(text.replace("-", "")))
        except BadVersion as exc:
            raise exc.for_field(field) from None

    @classmethod
    def generate(cls) -> SourceID:
        """A new random source ID (never all-zero, never the RTE marker)."""
        while True:
            raw = os.urandom(16)
            if any(raw):
                candidate = cls.from_bytes(raw)
                if candidate != RTE_SOURCE:
                    return candidate

    @property
    def raw(self) -> bytes:
        """The 16 bytes."""
        return base64.b64decode(self.text + "==")

    def __str__(self) -> str:
        return self.text


_ZERO_TEXT = "A" * _SOURCE_CHARS
#: The source of a legacy revID written as a version (VV-NOTES §2.1, "RTE").
RTE_SOURCE = SourceID("Revision+Tree+Encoding")


# -- versions -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Version:
    """One version: an HLC time written by ``source``."""

    time: int
    source: SourceID

    def __post_init__(self) -> None:
        if not 0 < self.time <= MAX_VALID_TIME:
            raise BadVersion("version", f"time {self.time:#x} out of range")

    @classmethod
    def parse(cls, text: object, field: str = "rev") -> Version:
        """Parse ``<hex time>@<source>``; ``BadVersion`` naming ``field`` if malformed."""
        if not isinstance(text, str):
            raise BadVersion(field, f"a version must be a string, got {type(text).__name__}")
        hex_time, at, source = text.partition("@")
        if not at:
            raise BadVersion(field, f"not a version (no '@'): {text!r}")
        if _HEX_TIME.fullmatch(hex_time) is None:
            raise BadVersion(field, f"bad hex time in version {text!r}")
        number = int(hex_time, 16)
        if number == 0 or number > MAX_VALID_TIME:
            raise BadVersion(field, f"time out of range in version {text!r}")
        return cls(number, SourceID.parse(source, field))

    @property
    def is_legacy(self) -> bool:
        """Whether this is a legacy revID written as a version (RTE)."""
        return self.source == RTE_SOURCE

    def __str__(self) -> str:
        return f"{self.time:x}@{self.source.text}"


def is_version_text(text: str) -> bool:
    """Whether ``text`` is spelled as a version (has ``@``), as opposed to a legacy revID."""
    return "@" in text


def parse_revision(text: object, field: str = "rev") -> Version | str:
    """A ``rev``-like string: a ``Version``, or a legacy revID (returned as the string)."""
    if isinstance(text, str) and "@" not in text:
        try:
            revid.parse(text)
        except revid.BadRevisionID as exc:
            raise BadVersion(field, str(exc)) from None
        return text
    return Version.parse(text, field)


def extract_current(text: object, field: str = "rev") -> Version | str:
    """The first entry of a string that may be a whole vector (``"cv; pv, …"``): the only part
    used from ``proposeChanges``/``changes`` columns and 409 ``rev`` values (VV-NOTES §0.4)."""
    if not isinstance(text, str):
        raise BadVersion(field, f"must be a string, got {type(text).__name__}")
    end = len(text)
    for delimiter in ",;":
        found = text.find(delimiter)
        if found >= 0:
            end = min(end, found)
    return parse_revision(text[:end].strip(), field)


def legacy_version(rev_id: str) -> Version:
    """The RTE version of a legacy revID: ``(gen << 40 | first 5 digest bytes) @ RTE`` (§3.4)."""
    parsed = revid.parse(rev_id)
    if parsed.generation >= 1 << 23:
        raise BadVersion("rev", f"generation of {rev_id!r} too large for a version")
    low = int(parsed.digest[:10].ljust(10, "0"), 16)
    return Version((parsed.generation << 40) | low, RTE_SOURCE)


def legacy_matches(rev_id: str, version: Version) -> bool:
    """Whether a legacy revID and an RTE version name the same revision."""
    if not version.is_legacy or revid.generation(rev_id) >= 1 << 23:
        return False
    return legacy_version(rev_id) == version


# -- vectors ------------------------------------------------------------------------------------


def single_version_vector(version: Version) -> str:
    """The text of the vector made of ``version`` alone, ``str(HLV(version))``: also the text
    of its cv. Without building the HLV (per new document of a push; perf, issue 13)."""
    return str(version)


@dataclass(frozen=True, slots=True)
class HLV:
    """A hybrid logical vector: current version, merge versions, previous versions."""

    cv: Version
    mv: tuple[Version, ...] = ()
    pv: tuple[Version, ...] = ()

    def __post_init__(self) -> None:
        _check_sources(self.cv, self.mv, self.pv, "vector")

    # - text

    @classmethod
    def parse(cls, text: object, field: str = "rev") -> HLV:
        """Parse ``cv[, mv…][; pv…]``; spaces after delimiters are skipped. Without ``;`` every
        entry is a current/merge version (as LiteCore reads it)."""
        if not isinstance(text, str):
            raise BadVersion(field, f"a vector must be a string, got {type(text).__name__}")
        current_part, semi, previous_part = text.partition(";")
        if ";" in previous_part:
            raise BadVersion(field, f"more than one ';' in vector {text!r}")
        current = _split_versions(current_part, field, text)
        if not current:
            raise BadVersion(field, f"empty vector {text!r}")
        previous = _split_versions(previous_part, field, text) if semi else []
        try:
            return cls(current[0], tuple(current[1:]), tuple(previous))
        except BadVersion as exc:
            raise exc.for_field(field) from None

    def __str__(self) -> str:
        """LiteCore's spelling: ``", "`` and ``"; "``; a merge without pvs ends with ``;``."""
        text = ", ".join(str(v) for v in (self.cv, *self.mv))
        if self.pv:
            text += "; " + ", ".join(str(v) for v in self.pv)
        elif self.mv:
            text += ";"
        return text

    # - lookups

    def versions(self) -> tuple[Version, ...]:
        """All entries: cv, then mvs, then pvs."""
        return (self.cv, *self.mv, *self.pv)

    def time_of(self, source: SourceID) -> int | None:
        """The time of ``source``'s first entry (cv first), or ``None`` if absent."""
        for version in self.versions():
            if version.source == source:
                return version.time
        return None

    def contains(self, version: Version) -> bool:
        """Whether this vector has seen ``version`` (its source at the same or a later time)."""
        known = self.time_of(version.source)
        return known is not None and known >= version.time

    # - building

    def with_new_cv(self, version: Version) -> HLV:
        """A vector for a new revision by ``version.source`` on top of this one: the old cv and
        mvs become pvs (LiteCore ``_add``, SG ``InvalidateMV``)."""
        older = [v for v in (self.cv, *self.mv, *self.pv) if v.source != version.source]
        return HLV(version, (), tuple(_max_per_source(older)))

    def to_dict(self) -> dict[str, int]:
        """Every source with its newest time."""
        return {v.source.text: v.time for v in _max_per_source(self.versions())}


def parse_stored(text: str | None) -> HLV | None:
    """A vector read back from the store (written by fieldsync, so always well formed)."""
    return _parse_stored(text) if text is not None else None


@functools.lru_cache(maxsize=2048)
def _parse_stored(text: str) -> HLV:
    # HLVs are immutable: a pull reads each document's vector twice (its change, then its
    # revision) and parsing was ~8 % of a pull's CPU (perf, issue 13).
    return HLV.parse(text, "stored vector")


def _split_versions(part: str, field: str, whole: str) -> list[Version]:
    stripped = part.strip(" ")
    if not stripped:
        return []
    result = []
    for entry in stripped.split(","):
        entry = entry.strip(" ")
        if not entry:
            raise BadVersion(field, f"empty entry in vector {whole!r}")
        result.append(Version.parse(entry, field))
    return result


def _check_sources(cv: Version, mv: Sequence[Version], pv: Sequence[Version], field: str) -> None:
    seen: set[SourceID] = set()
    cv_again = False
    for index, version in enumerate((cv, *mv, *pv)):
        if version.source in seen:
            # The cv's author may appear once more among the mvs, with an older time.
            if (
                version.source == cv.source
                and 1 <= index <= len(mv)
                and not cv_again
                and version.time < cv.time
            ):
                cv_again = True
                continue
            raise BadVersion(field, f"source {version.source} appears twice")
        seen.add(version.source)


def _max_per_source(versions: Iterable[Version]) -> list[Version]:
    """Each source once, at its newest time, in first-seen order."""
    best: dict[SourceID, Version] = {}
    for version in versions:
        known = best.get(version.source)
        if known is None or version.time > known.time:
            best[version.source] = version
    return list(best.values())


def compare_to_version(vector: HLV, version: Version) -> Order:
    """LiteCore ``VersionVector::compareTo(Version)``: OLDER if the vector lacks ``version``,
    SAME if it is the vector's cv, otherwise NEWER."""
    known = vector.time_of(version.source)
    if known is None or known < version.time:
        return Order.OLDER
    if known == version.time and vector.cv.source == version.source:
        return Order.SAME
    return Order.NEWER


def compare_vectors(a: HLV | None, b: HLV | None) -> Order:
    """§3.1: ``a`` is NEWER iff it contains ``b``'s cv and ``b`` does not contain ``a``'s.
    An absent vector is older than any vector."""
    if a is None or b is None:
        if a is None and b is None:
            return Order.SAME
        return Order.OLDER if a is None else Order.NEWER
    mine = compare_to_version(a, b.cv)
    if mine is Order.SAME:
        return Order.SAME
    theirs = compare_to_version(b, a.cv)
    if mine is theirs:
        return Order.CONFLICT
    return mine


def merge(winner: HLV, loser: HLV, new_cv: Version) -> HLV:
    """A resolution with a new body (LiteCore ``merge``): ``new_cv`` current, both cvs as mvs
    (newest first), every other source at its newest time as pv."""
    mvs: list[Version] = []
    taken: set[SourceID] = set()
    # As LiteCore writes it: both cvs newest first, the merging source's own older cv included
    # (once); a second cv by a source already listed is covered and left out.
    for version in sorted((winner.cv, loser.cv), key=lambda v: v.time, reverse=True):
        if version.source not in taken and version.time < new_cv.time:
            mvs.append(version)
            taken.add(version.source)
    taken.add(new_cv.source)
    rest = [
        v for v in _max_per_source((*winner.versions(), *loser.versions())) if v.source not in taken
    ]
    rest.sort(key=lambda v: v.time, reverse=True)
    return HLV(new_cv, tuple(mvs), tuple(rest))


def trivial_merge(winner: HLV, loser: HLV) -> HLV:
    """A resolution keeping ``winner``'s body (LiteCore ``trivialMerge``): the cv stays, every
    other source takes its newest time; it compares SAME to ``winner``."""
    rest = [
        v
        for v in _max_per_source((*winner.mv, *winner.pv, *loser.versions()))
        if v.source != winner.cv.source
    ]
    rest.sort(key=lambda v: v.time, reverse=True)
    return HLV(winner.cv, (), tuple(rest))


# -- vectors with legacy revIDs ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VersionWithLegacy:
    """A revision as LiteCore 4.x compares it: a vector (``None`` for a legacy-only revision)
    and legacy revIDs, newest generation first (VV-NOTES §3.3)."""

    vector: HLV | None
    legacy: tuple[str, ...] = ()

    @property
    def current(self) -> Version | str:
        """The revision's name: its cv, or its newest legacy revID."""
        if self.vector is not None:
            return self.vector.cv
        if not self.legacy:
            raise BadVersion("rev", "a revision needs a version or a legacy revID")
        return self.legacy[0]

    def __str__(self) -> str:
        """The whole history in one string, as LiteCore writes it."""
        if self.vector is None:
            return ", ".join(self.legacy)
        text = str(self.vector)
        if not self.legacy:
            return text
        if self.vector.pv:
            delimiter = ", "
        elif self.vector.mv:
            delimiter = " "  # the vector already ends with ';'
        else:
            delimiter = "; "
        return text + delimiter + ", ".join(self.legacy)


def _compare_legacy(a: Sequence[str], b: Sequence[str]) -> Order:
    for index_a, rev_id in enumerate(a):
        if rev_id in b:
            newer_a, newer_b = index_a != 0, b.index(rev_id) != 0
            return _mk_order(newer_a, newer_b)
    return Order.CONFLICT


def _mk_order(a_nonempty: bool, b_nonempty: bool) -> Order:
    if a_nonempty and b_nonempty:
        return Order.CONFLICT
    if a_nonempty:
        return Order.NEWER
    if b_nonempty:
        return Order.OLDER
    return Order.SAME


# Extended order indexes of LiteCore's table: both empty, a empty, b empty, same, older, newer.
_X_BOTH_EMPTY, _X_A_EMPTY, _X_B_EMPTY = 0, 1, 2
_X_INDEX = {Order.SAME: 3, Order.OLDER: 4, Order.NEWER: 5}
_S, _O, _N, _C = Order.SAME, Order.OLDER, Order.NEWER, Order.CONFLICT
#: VV-NOTES §3.3: rows = vector order, columns = legacy order.
_MATRIX: tuple[tuple[Order, ...], ...] = (
    (_S, _O, _N, _S, _O, _N),
    (_O, _O, _C, _O, _O, _C),
    (_N, _C, _N, _N, _C, _N),
    (_S, _C, _C, _S, _C, _C),
    (_O, _C, _C, _O, _C, _C),
    (_N, _C, _C, _N, _C, _C),
)


def _extended(a_empty: bool, b_empty: bool, full: Callable[[], Order]) -> int | None:
    if a_empty or b_empty:
        if a_empty and b_empty:
            return _X_BOTH_EMPTY
        return _X_A_EMPTY if a_empty else _X_B_EMPTY
    order = full()
    return None if order is Order.CONFLICT else _X_INDEX[order]


def compare_with_legacy(a: VersionWithLegacy, b: VersionWithLegacy) -> Order:
    """LiteCore ``VersionVecWithLegacy::compare`` (VV-NOTES §3.3)."""

    def rte_match(x: VersionWithLegacy, y: VersionWithLegacy) -> bool:
        return (
            x.vector is None
            and bool(x.legacy)
            and y.vector is not None
            and legacy_matches(x.legacy[0], y.vector.cv)
        )

    if rte_match(a, b) or rte_match(b, a):
        return Order.SAME
    vector_index = _extended(
        a.vector is None, b.vector is None, lambda: compare_vectors(a.vector, b.vector)
    )
    legacy_index = _extended(
        not a.legacy, not b.legacy, lambda: _compare_legacy(a.legacy, b.legacy)
    )
    if vector_index is None or legacy_index is None:
        return Order.CONFLICT
    return _MATRIX[vector_index][legacy_index]


# -- the wire's rev + history pair ---------------------------------------------------------------


def format_history(vector: HLV, legacy: Sequence[str] = ()) -> str | None:
    """The ``history`` property sent with ``rev: <cv>`` (VV-NOTES §2.4 / §7.6): the vector
    minus its cv, then the legacy revIDs; ``None`` when there is nothing to send."""
    rest = [str(v) for v in vector.pv] + list(legacy)
    if vector.mv:
        text = ", ".join(str(v) for v in vector.mv) + ";"
        return text + (" " + ", ".join(rest) if rest else "")
    return ", ".join(rest) if rest else None


def parse_rev_history(
    rev: object, history: object, *, rev_field: str = "rev", history_field: str = "history"
) -> VersionWithLegacy:
    """Read a received ``rev`` (a version) and its ``history`` (may be ``None``/empty): with a
    ``;`` in it the history starts with mvs, otherwise with pvs; trailing legacy revIDs are
    split off. ``BadVersion`` names the field at fault."""
    cv = Version.parse(rev, rev_field)
    if history is None or history == "":
        return VersionWithLegacy(HLV(cv))
    if not isinstance(history, str):
        raise BadVersion(history_field, f"must be a string, got {type(history).__name__}")
    merge_part, semi, rest_part = history.partition(";") if ";" in history else ("", "", history)
    if ";" in rest_part:
        raise BadVersion(history_field, f"more than one ';' in {history!r}")
    mvs = _split_versions(merge_part, history_field, history) if semi else []
    if semi and not mvs:
        raise BadVersion(history_field, f"';' without merge versions in {history!r}")
    entries = [e.strip(" ") for e in rest_part.split(",")] if rest_part.strip(" ") else []
    pvs: list[Version] = []
    legacy: list[str] = []
    for entry in entries:
        if not entry:
            raise BadVersion(history_field, f"empty entry in {history!r}")
        if "@" in entry:
            if legacy:
                raise BadVersion(history_field, f"version {entry!r} after a legacy revID")
            pvs.append(Version.parse(entry, history_field))
        else:
            try:
                revid.parse(entry)
            except revid.BadRevisionID as exc:
                raise BadVersion(history_field, str(exc)) from None
            legacy.append(entry)
    try:
        vector = HLV(cv, tuple(mvs), tuple(pvs))
    except BadVersion as exc:
        raise exc.for_field(history_field) from None
    return VersionWithLegacy(vector, tuple(legacy))


def parse_full(text: object, field: str = "rev") -> VersionWithLegacy:
    """A whole history in one string (``"cv, mv; pv, 3-abc"``), as a LiteCore 409 reply or a
    ``proposeChanges`` parent column may carry it. Trailing legacy revIDs are split off; without
    a ``;`` every version is read as current/merge, as LiteCore reads it."""
    if not isinstance(text, str):
        raise BadVersion(field, f"must be a string, got {type(text).__name__}")
    head, semi, tail = text.partition(";")
    if ";" in tail:
        raise BadVersion(field, f"more than one ';' in {text!r}")
    current = [e.strip(" ") for e in head.split(",")]
    rest = [e.strip(" ") for e in tail.split(",")] if tail.strip(" ") else []
    entries = current + rest
    if any(not e for e in entries):
        raise BadVersion(field, f"empty entry in {text!r}")
    n_versions = 0
    while n_versions < len(entries) and "@" in entries[n_versions]:
        n_versions += 1
    legacy = entries[n_versions:]
    for entry in legacy:
        if "@" in entry:
            raise BadVersion(field, f"version {entry!r} after a legacy revID")
        parse_revision(entry, field)
    if n_versions == 0:
        if semi:
            raise BadVersion(field, f"';' without versions in {text!r}")
        return VersionWithLegacy(None, tuple(legacy))
    versions = [Version.parse(e, field) for e in entries[:n_versions]]
    n_current = len(current) if semi else n_versions
    if n_current > n_versions:
        raise BadVersion(field, f"legacy revID before ';' in {text!r}")
    try:
        vector = HLV(versions[0], tuple(versions[1:n_current]), tuple(versions[n_current:]))
    except BadVersion as exc:
        raise exc.for_field(field) from None
    return VersionWithLegacy(vector, tuple(legacy))


# -- decisions the store and the replicator share ----------------------------------------------


@dataclass(frozen=True, slots=True)
class DocVersions:
    """A document's current state in both spellings. ``hlv`` is ``None`` for a document nobody
    has changed since the upgrade (it is named by ``rev_id`` alone); ``base_legacy`` is the
    rev-tree revID that was current just before its first version (LiteCore's
    ``lastLegacyRevID``), ``None`` if it never had one."""

    doc_id: str
    rev_id: str
    deleted: bool
    sequence: int
    hlv: HLV | None
    base_legacy: str | None = None

    @property
    def current_text(self) -> str:
        """How a CBMobile_4 peer names the current revision: the cv, else the legacy revID."""
        return str(self.hlv.cv) if self.hlv is not None else self.rev_id

    def with_legacy(self) -> VersionWithLegacy:
        """The local side of a §3.3 comparison."""
        if self.hlv is None:
            return VersionWithLegacy(None, (self.rev_id,))
        return VersionWithLegacy(self.hlv, (self.base_legacy,) if self.base_legacy else ())


def decide_proposed(
    current: DocVersions | None,
    rev: Version | str,
    parent: Version | str | None,
    proposed: HLV | None = None,
) -> tuple[int, str | None]:
    """Answer one CBMobile_4 ``proposeChanges`` row (VV-NOTES §3.5, Sync Gateway's rules):
    ``(0, None)`` send it, ``(304, None)`` already have it, ``(409, current)`` conflict with
    ``current`` spelled for the peer. ``parent`` is the first entry of the parent column
    (``extract_current``); ``proposed`` the whole vector when the ``rev`` column carried one."""
    if current is None:
        return 0, None
    if parent is None and current.deleted:
        return 0, None
    if isinstance(parent, Version) and parent.is_legacy and legacy_matches(current.rev_id, parent):
        parent = current.rev_id  # a legacy revID and its RTE version are the same revision
    if isinstance(parent, str) and parent == current.rev_id:
        if isinstance(rev, Version) and rev.is_legacy and legacy_matches(current.rev_id, rev):
            return 304, None
        return 0, None
    if isinstance(rev, str):
        if rev == current.rev_id or (
            current.hlv is not None and legacy_matches(rev, current.hlv.cv)
        ):
            return 304, None
        return 409, current.current_text
    hlv = current.hlv
    if hlv is None:
        if rev.is_legacy and legacy_matches(current.rev_id, rev):
            return 304, None
        return 409, current.rev_id
    if isinstance(parent, Version) and parent == hlv.cv:
        return 0, None
    if hlv.contains(rev):
        return 304, None
    if hlv.cv.source == rev.source and hlv.cv.time < rev.time:
        return 0, None
    if proposed is not None and proposed.contains(hlv.cv):
        return 0, None
    return 409, str(hlv.cv)


def _holds_rte_of(vector: HLV, current: DocVersions) -> bool:
    """Whether ``vector`` covers the RTE version of the document's current (legacy) revID."""
    known = vector.time_of(RTE_SOURCE)
    return known is not None and legacy_matches(current.rev_id, Version(known, RTE_SOURCE))


def decide_incoming(current: DocVersions | None, incoming: VersionWithLegacy) -> Order:
    """How a revision a 4.x phone pushed relates to the stored document, incoming first:
    NEWER store it; SAME/OLDER nothing to store; CONFLICT refuse (409).

    * A legacy document (no vector) is compared as LiteCore does (§3.3): the phone's legacy
      tail must reach the document's revID.
    * A document with a vector is compared by vectors (§3.1), as Sync Gateway does for 4.x
      pushes: every write on the device updates the vector, so a phone that holds the current
      cv has seen every change. If the vectors conflict but the phone's legacy tail names the
      current revID, the phone edited that very revision, which it held as a legacy revision
      (it synced over CBMobile_3, then upgraded): NEWER, not a spurious conflict.
    """
    if current is None:
        return Order.NEWER
    vector = incoming.vector
    hlv = current.hlv
    if hlv is None:
        order = compare_with_legacy(incoming, VersionWithLegacy(None, (current.rev_id,)))
        if order is Order.CONFLICT and vector is not None and _holds_rte_of(vector, current):
            # The phone got this legacy revision as its RTE version and edited it.
            order = Order.NEWER
    elif vector is None:
        order = compare_with_legacy(incoming, current.with_legacy())
    else:
        order = compare_vectors(vector, hlv)
        if order is Order.CONFLICT and current.rev_id in incoming.legacy and not current.deleted:
            order = Order.NEWER
    if (
        order is Order.CONFLICT
        and current.deleted
        and vector is not None
        and not (vector.mv or vector.pv or incoming.legacy)
    ):
        return Order.NEWER  # a new document (no parent) over a tombstone, as LiteCore allows
    return order


# -- the device's clock ---------------------------------------------------------------------------


@dataclass
class ClockState:
    """What a ``HybridLogicalClock`` persists: the last time it issued or saw, and the newest
    phone time it saw with the device wall-clock reading at that moment."""

    last: int = 0
    peer_time: int = 0
    peer_wall: int = 0


@dataclass
class HybridLogicalClock:
    """Nanoseconds since the Unix epoch, low 16 bits a counter; strictly increasing.

    ``now()`` stamps a new version. It never stamps more than ``STAMP_MARGIN_NS`` ahead of the
    newest phone clock it can infer (the newest phone time ``see()`` was given, advanced by the
    wall-clock time elapsed since), so a device whose clock runs ahead is not refused by phones;
    ``see()`` moves the clock past received times, so a device whose clock runs behind (no RTC,
    no NTP) still stamps after what it has seen. Persist ``state`` with every stamp.
    """

    state: ClockState = field(default_factory=ClockState)
    wall: Callable[[], int] = time.time_ns

    def now(self, *, after: int = 0) -> int:
        """A new time, greater than every earlier one and than ``after``."""
        wall = self.wall()
        candidate = wall & ~COUNTER_MASK
        state = self.state
        if state.peer_time:
            elapsed = max(0, wall - state.peer_wall)
            ceiling = state.peer_time + elapsed + STAMP_MARGIN_NS
            candidate = min(candidate, ceiling & ~COUNTER_MASK)
        stamp = max(candidate, state.last + 1, after + 1, MIN_VALID_TIME)
        if stamp > MAX_VALID_TIME:
            raise OverflowError("hybrid logical clock exhausted")
        state.last = stamp
        return stamp

    def see(self, version: Version, *, mine: SourceID | None = None) -> None:
        """Take note of a received version (not the device's own, not RTE)."""
        if version.is_legacy or version.source == mine:
            return
        t = version.time
        if t < MIN_VALID_TIME:
            return
        state = self.state
        state.last = max(state.last, t)
        if t > state.peer_time:
            wall = self.wall()
            # Keep the newest inferred phone clock: a new time only replaces it if it is ahead of
            # the old one's extrapolation.
            if state.peer_time == 0 or t >= state.peer_time + max(0, wall - state.peer_wall):
                state.peer_time, state.peer_wall = t, wall

    def see_all(self, vector: HLV, *, mine: SourceID | None = None) -> None:
        """``see()`` every entry of a received vector (cv, mv and pv, as LiteCore does)."""
        for version in vector.versions():
            self.see(version, mine=mine)
