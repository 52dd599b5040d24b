"""Which collection a message addresses: legacy mode versus collection-aware mode.

The first message of a connection decides. ``getCollections`` first makes the connection
collection-aware: every collection message must then carry a ``collection`` index into the
list that ``getCollections`` resolved. Anything else first makes it legacy: only the default
collection, and no message may carry ``collection``. Mixing them is answered with 400.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Generic, TypeVar

from fieldsync.replication.errors import RoutingError
from fieldsync.replication.messages import COLLECTION_PROFILES, GET_COLLECTIONS

C = TypeVar("C")


class Mode(Enum):
    UNDECIDED = "undecided"
    LEGACY = "legacy"
    COLLECTION_AWARE = "collection-aware"


class CollectionRouter(Generic[C]):
    """Resolve each message to a collection (of any type ``C``) and its index."""

    def __init__(self, default: C | None, lookup: Mapping[str, C]) -> None:
        self._default = default
        self._lookup = lookup
        self.mode = Mode.UNDECIDED
        self.resolved: list[C | None] = []

    def assign(self, collections: Sequence[C], *, legacy: bool) -> None:
        """For the side that sent ``getCollections`` itself (the active replicator): fix the mode
        and the collections the peer's messages may address."""
        if legacy:
            self.mode = Mode.LEGACY
            self._default = collections[0] if collections else None
        else:
            self.mode = Mode.COLLECTION_AWARE
            self.resolved = list(collections)

    def resolve_collections(self, names: Sequence[str]) -> list[C | None]:
        """Handle ``getCollections``: map each ``[scope.]name`` to a served collection or None."""
        if self.mode is not Mode.UNDECIDED:
            raise RoutingError(400, "Invalid getCollections message: not the first message")
        self.mode = Mode.COLLECTION_AWARE
        self.resolved = [self._lookup.get(self.normalize(name)) for name in names]
        return self.resolved

    @staticmethod
    def normalize(name: str) -> str:
        return name if "." in name else f"_default.{name}"

    def route(self, profile: str, properties: Mapping[str, str]) -> tuple[C | None, int | None]:
        """The collection and index a message addresses (``(None, None)`` if it addresses none).

        Raises RoutingError for a message that breaks the connection's mode.
        """
        if profile == GET_COLLECTIONS:
            return None, None
        raw = properties.get("collection")
        if self.mode is Mode.UNDECIDED and profile in COLLECTION_PROFILES:
            self.mode = Mode.LEGACY
        if self.mode is Mode.COLLECTION_AWARE:
            if raw is None:
                if profile in COLLECTION_PROFILES:
                    raise RoutingError(
                        400, f"'{profile}' needs a 'collection' property after getCollections"
                    )
                return None, None
            try:
                index = int(raw)
            except ValueError:
                raise RoutingError(400, f"invalid 'collection' property {raw!r}") from None
            if not 0 <= index < len(self.resolved):
                raise RoutingError(400, f"'collection' index {index} is out of range")
            collection = self.resolved[index]
            if collection is None:
                raise RoutingError(404, f"collection #{index} does not exist here")
            return collection, index
        if raw is not None:
            raise RoutingError(
                400, "inappropriate use of the 'collection' property (legacy connection)"
            )
        if profile not in COLLECTION_PROFILES:
            return None, None
        if self._default is None:
            raise RoutingError(404, "the default collection is not served here")
        return self._default, None
