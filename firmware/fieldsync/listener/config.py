"""``URLEndpointListenerConfiguration``: what a listener serves and how."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from fieldsync.errors import FieldsyncError
from fieldsync.listener.auth import ListenerPasswordAuthenticator, is_certificate_authenticator
from fieldsync.store import Collection, Database

if TYPE_CHECKING:  # TLS types: loaded (with cryptography) only where TLS is used
    from fieldsync.tls.client_auth import ListenerCertificateAuthenticator
    from fieldsync.tls.identity import TLSIdentity
    from fieldsync.tls.keystore import Keystore

#: The listener's TCP port unless configured (Couchbase Lite's own listener picks one; Sync
#: Gateway's public port is 4984, which phones' apps are usually written against).
DEFAULT_PORT = 4984

Authenticator: TypeAlias = "ListenerPasswordAuthenticator | ListenerCertificateAuthenticator"


class ListenerConfigurationError(FieldsyncError, ValueError):
    """A listener setting that cannot work; the message names the setting."""


@dataclass
class URLEndpointListenerConfiguration:
    """Couchbase Lite's ``URLEndpointListenerConfiguration``, in Python form.

    Serve either whole databases (``database`` / ``databases``: every collection they hold, now
    or later) or chosen ``collections`` (all from one database). Each database is reached at
    ``/<url name>``: its key when ``databases`` is a ``{url_name: Database}`` map, otherwise
    ``database.name``.
    """

    database: Database | None = None
    collections: Sequence[Collection] | None = None
    databases: Mapping[str, Database] | Sequence[Database] | None = None
    port: int = DEFAULT_PORT
    network_interface: str | None = None
    disable_tls: bool = False
    tls_identity: TLSIdentity | None = None
    authenticator: Authenticator | None = None
    enable_delta_sync: bool = False
    read_only: bool = False
    keystore: Keystore | None = None
    #: Refuse pushes (507) while the database's file system has less than this free, so the card
    #: never fills completely; None = the replicator's default (64 MiB), 0 = no reserve.
    min_free_bytes: int | None = None
    #: Where the bodies of large incoming messages wait (anonymous temporary files, see
    #: ``BLIPLimits.max_incoming_memory``); None = the served database's own directory, so
    #: they use the card, not RAM (``/tmp`` may be a tmpfs).
    spool_directory: str | None = None

    def served(self) -> dict[str, Database]:
        """The databases behind this listener by URL name, in order."""
        result: dict[str, Database] = {}

        def add(name: str, database: Database) -> None:
            if any(database is d for d in result.values()):
                return
            if name in result:
                raise ListenerConfigurationError(
                    f"databases: two databases are both named {name!r}; each needs its own URL path"
                )
            result[name] = database

        if isinstance(self.databases, Mapping):
            for name, database in self.databases.items():
                add(name, database)
        if self.database is not None:
            add(self.database.name, self.database)
        if self.databases is not None and not isinstance(self.databases, Mapping):
            for database in self.databases:
                add(database.name, database)
        for collection in self.collections or ():
            owner = collection.database
            if isinstance(owner, Database):
                add(owner.name, owner)
        return result

    def served_databases(self) -> list[Database]:
        """The databases behind this listener, in order."""
        return list(self.served().values())

    def validate(self) -> None:
        """Raise ListenerConfigurationError for settings that cannot work together."""
        databases = self.served()
        if not databases:
            raise ListenerConfigurationError(
                "URLEndpointListenerConfiguration needs a database, databases or collections"
            )
        if self.collections is not None:
            if not self.collections:
                raise ListenerConfigurationError("collections: the list is empty")
            owners = {id(c.database) for c in self.collections}
            if len(owners) > 1:
                raise ListenerConfigurationError(
                    "collections: all collections must belong to the same database"
                )
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ListenerConfigurationError(f"port: {self.port!r} is not a port number (0-65535)")
        if self.disable_tls and is_certificate_authenticator(self.authenticator):
            raise ListenerConfigurationError(
                "authenticator: client-certificate authentication needs TLS (disable_tls=True)"
            )

    def collections_of(self, database: Database) -> dict[str, Collection] | None:
        """The collections served from ``database`` (None: all of them, looked up live)."""
        if self.collections is not None and any(c.database is database for c in self.collections):
            return {c.full_name: c for c in self.collections}
        return None
