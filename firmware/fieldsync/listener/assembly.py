"""The composition root: one place that turns settings into a listener.

``fieldsync run`` and the agent both build their listener here, so they open the keystore,
pick the TLS identity (one alias rule), build the authenticator, and run the event loop (uvloop)
the same way. Everything a user can get wrong on the way is an
``AssemblyError`` with one line that says what to fix; the callers print it and exit 1.
"""

from __future__ import annotations

import gc
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import uvloop

from fieldsync.errors import FieldsyncError
from fieldsync.listener.auth import ListenerPasswordAuthenticator
from fieldsync.listener.config import (
    DEFAULT_PORT,
    Authenticator,
    URLEndpointListenerConfiguration,
)
from fieldsync.listener.listener import legacy_identity_labels
from fieldsync.store import Collection, Database, InvalidInput
from fieldsync.store.names import split_full_name
from fieldsync.tls import DEFAULT_SERVER_ALIAS

# The TLS modules load cryptography (~9 MB of memory): only settings that use TLS or client
# certificates import them, in the functions below.
if TYPE_CHECKING:
    from fieldsync.tls.identity import ServerIdentity
    from fieldsync.tls.keystore import Keystore

__all__ = [
    "Assembly",
    "AssemblyError",
    "ServeSettings",
    "assemble",
    "load_authenticator",
    "open_keystore",
    "resolve_identity",
    "run_event_loop",
    "served_collections",
]

T = TypeVar("T")

MIB = 1024 * 1024


class AssemblyError(FieldsyncError):
    """A setting the listener cannot be built from; the message is one line saying why."""


@dataclass(frozen=True)
class ServeSettings:
    """How to serve, whoever asks (``fieldsync run`` options or the agent's file)."""

    port: int = DEFAULT_PORT
    interface: str | None = None
    tls: bool = True
    #: The TLS identity's alias; a missing one is created as the anonymous identity under that
    #: label when ``create_identity`` (the default identity always is).
    identity: str = DEFAULT_SERVER_ALIAS
    create_identity: bool = True
    keystore: Path | None = None  # None: default_keystore_path()
    kek_file: Path | None = None
    users: Mapping[str, str] = field(default_factory=dict)  # name -> salted password hash
    client_ca: Sequence[Path] = ()
    #: How the caller names ``client_ca`` in messages (its option or configuration key).
    client_ca_key: str = "client_cert_roots"
    delta_sync: bool = False
    read_only: bool = False
    #: Free space (MiB) kept on the database's file system: pushes are refused below it.
    #: None = the default reserve.
    reserve_free_mb: int | None = None


@dataclass(frozen=True)
class Assembly:
    """A listener configuration ready to serve, and the identity it presents (TLS only)."""

    configuration: URLEndpointListenerConfiguration
    identity: ServerIdentity | None


def open_keystore(settings: ServeSettings) -> Keystore:
    """The keystore of ``settings``; unsafe permissions, a foreign owner or an unreadable
    key-encryption key are an AssemblyError."""
    from fieldsync.tls.keystore import Keystore, KeystoreError, default_keystore_path

    path = settings.keystore or default_keystore_path()
    try:
        return Keystore(path, kek_file=settings.kek_file)
    except (KeystoreError, OSError) as exc:
        raise AssemblyError(f"keystore: {_reason(exc)}") from None


def resolve_identity(
    settings: ServeSettings, keystore: Keystore, database_names: Sequence[str]
) -> ServerIdentity:
    """The TLS identity to present (``TLSIdentity.server_identity``: the one alias rule)."""
    from fieldsync.tls.identity import TLSIdentity, TLSIdentityError
    from fieldsync.tls.keystore import KeystoreError

    try:
        return TLSIdentity.server_identity(
            settings.identity,
            keystore=keystore,
            create=settings.create_identity,
            legacy_labels=legacy_identity_labels(database_names),
        )
    except (KeystoreError, TLSIdentityError, ValueError, OSError) as exc:
        raise AssemblyError(f"TLS identity {settings.identity!r}: {_reason(exc)}") from None


def load_authenticator(settings: ServeSettings) -> Authenticator | None:
    """Client certificates (``client_ca``), else passwords (``users``), else None."""
    if settings.client_ca:
        from cryptography import x509

        from fieldsync.tls.client_auth import ListenerCertificateAuthenticator

        roots: list[x509.Certificate] = []
        for path in settings.client_ca:
            try:
                roots.extend(x509.load_pem_x509_certificates(Path(path).read_bytes()))
            except (OSError, ValueError) as exc:
                raise AssemblyError(
                    f"{settings.client_ca_key}: cannot load {path}: {exc}"
                ) from None
        return ListenerCertificateAuthenticator(roots)
    if settings.users:
        try:
            return ListenerPasswordAuthenticator.from_users(settings.users)
        except ValueError as exc:
            raise AssemblyError(f"users: {exc}") from None
    return None


def served_collections(database: Database, full_names: Sequence[str]) -> list[Collection]:
    """The collections ``scope.name`` of ``database``, created when missing (a name no
    collection can have is an AssemblyError)."""
    result: list[Collection] = []
    for full_name in full_names:
        try:
            result.append(database.create_collection(*reversed(split_full_name(full_name))))
        except InvalidInput as exc:
            raise AssemblyError(f"collection {full_name!r}: {exc}") from None
    return result


def assemble(
    databases: Mapping[str, Database],
    settings: ServeSettings,
    *,
    collections: Sequence[Collection] | None = None,
) -> Assembly:
    """The listener configuration for ``databases`` (``{url_name: Database}``); with
    ``collections`` (of the one database) only those are served."""
    identity = None
    keystore = None
    if settings.tls:
        keystore = open_keystore(settings)
        identity = resolve_identity(settings, keystore, list(databases))
    configuration = URLEndpointListenerConfiguration(
        databases=dict(databases),
        collections=list(collections) if collections else None,
        port=settings.port,
        network_interface=settings.interface,
        disable_tls=not settings.tls,
        tls_identity=identity.identity if identity else None,
        keystore=keystore,
        authenticator=load_authenticator(settings),
        enable_delta_sync=settings.delta_sync,
        read_only=settings.read_only,
        min_free_bytes=None if settings.reserve_free_mb is None else settings.reserve_free_mb * MIB,
    )
    try:
        configuration.validate()
    except ValueError as exc:
        raise AssemblyError(str(exc)) from None
    return Assembly(configuration, identity)


def run_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop (every long-running fieldsync command uses this).

    The cyclic garbage collector is tuned for streaming documents, whose objects die by
    reference counting: what is loaded by now (modules, settings) lives as long as the process
    and is frozen out of its sight, and it runs after 10,000 new objects instead of 700. A
    10,000-document push spent 51 ms in it, now 27 ms (perf, issue 13)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    return uvloop.run(main)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__
