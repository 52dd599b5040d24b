"""``URLEndpointListenerConfiguration``: what a listener serves and how."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_PORT = 4984


class ListenerConfigurationError(ValueError):
    """A listener setting that cannot work; the message names the setting."""


@dataclass
class URLEndpointListenerConfiguration:
    """Couchbase Lite's ``URLEndpointListenerConfiguration``, in Python form.

    Serve either whole databases (``database`` / ``databases``: every collection they hold, now
    or later) or chosen ``collections`` (all from one database). Each database is reached at
    ``/<database name>`` on the listener's port.
    """

    database: Any = None
    collections: Sequence[Any] | None = None
    databases: Sequence[Any] | None = None
    port: int = DEFAULT_PORT
    network_interface: str | None = None
    disable_tls: bool = False
    tls_identity: Any = None
    authenticator: Any = None
    enable_delta_sync: bool = False
    read_only: bool = False
    keystore: Any = None

    def served_databases(self) -> list[Any]:
        """The databases behind this listener, in order."""
        result: list[Any] = []
        if self.database is not None:
            result.append(self.database)
        for database in self.databases or ():
            if all(database is not d for d in result):
                result.append(database)
        for collection in self.collections or ():
            if all(collection.database is not d for d in result):
                result.append(collection.database)
        return result

    def validate(self) -> None:
        """Raise ListenerConfigurationError for settings that cannot work together."""
        databases = self.served_databases()
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
        names = [d.name for d in databases]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ListenerConfigurationError(
                f"databases: two databases are both named {sorted(duplicates)[0]!r}; "
                "each needs its own URL path"
            )
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ListenerConfigurationError(f"port: {self.port!r} is not a port number (0-65535)")
        if self.disable_tls and is_certificate_authenticator(self.authenticator):
            raise ListenerConfigurationError(
                "authenticator: client-certificate authentication needs TLS (disable_tls=True)"
            )

    def collections_of(self, database: Any) -> dict[str, Any] | None:
        """The collections served from ``database`` (None: all of them, looked up live)."""
        if self.collections is not None and any(c.database is database for c in self.collections):
            return {c.full_name: c for c in self.collections}
        return None


def is_certificate_authenticator(authenticator: Any) -> bool:
    """Whether ``authenticator`` checks client certificates (and so needs TLS)."""
    from fieldsync.listener.auth import ListenerCertificateAuthenticator

    return isinstance(authenticator, ListenerCertificateAuthenticator)
