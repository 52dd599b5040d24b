"""``URLEndpointListener``: the passive peer that Couchbase Lite replicators connect to.

It owns the listening socket, the HTTP upgrade (routing by path, subprotocol choice,
authentication) and TLS, and hands each accepted WebSocket to a ``PassiveReplicator``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from fieldsync.blip import BLIPSession
from fieldsync.blip.limits import MAX_WEBSOCKET_MESSAGE
from fieldsync.listener import handshake
from fieldsync.listener.auth import (
    BASIC_CHALLENGE,
    authenticate_request,
    is_certificate_authenticator,
)
from fieldsync.listener.authguard import AuthGuard, Busy, TooManyFailures
from fieldsync.listener.config import URLEndpointListenerConfiguration
from fieldsync.listener.sockets import (
    BindTarget,
    format_url,
    open_listening_socket,
    usable_addresses,
)
from fieldsync.replication.messages import LISTENER_SUBPROTOCOLS, SHARED_PROPERTY_STRINGS
from fieldsync.replication.notifier import ChangeNotifier
from fieldsync.replication.passive import PassiveReplicator
from fieldsync.replication.stats import ReplicationStats
from fieldsync.replication.versioning import WireFormat
from fieldsync.store import Collection, Database, InvalidInput
from fieldsync.tls import DEFAULT_SERVER_ALIAS

if TYPE_CHECKING:  # the TLS modules load cryptography: only a TLS listener imports them
    from cryptography.x509 import Certificate

    from fieldsync.tls.identity import TLSIdentity

log = logging.getLogger(__name__)

#: WebSocket close code for "going away" (the listener is stopping).
CLOSE_GOING_AWAY = 1001


@dataclass(frozen=True)
class ConnectionStatus:
    """``connection_count``: open connections; ``active_connection_count``: busy replicating."""

    connection_count: int
    active_connection_count: int


@dataclass
class ConnectionInfo:
    """One open replication connection, for logs and the status report."""

    peer: str
    database: str
    user: str | None
    subprotocol: str
    stats: ReplicationStats = field(default_factory=ReplicationStats)
    connected_at: float = field(default_factory=time.time)

    @property
    def busy(self) -> bool:
        return self.stats.busy


@dataclass(frozen=True)
class Accepted:
    """What the HTTP upgrade decided for one connection."""

    database_name: str
    subprotocol: str
    user: str | None


class ReplicationConnection(ServerConnection):
    """A WebSocket connection of this listener: it carries its own upgrade decision (as
    websockets' connections carry their request), not a side table keyed by ``id()``."""

    accepted: Accepted | None = None


def legacy_identity_labels(database_names: Sequence[str]) -> list[str]:
    """The labels earlier versions of ``fieldsync run`` gave their anonymous identity, so that
    one is adopted instead of replaced (see ``TLSIdentity.server_identity``)."""
    return ["listener-" + "-".join(sorted(database_names))] if database_names else []


class _DatabaseCollections(Mapping[str, Collection]):
    """Every collection of a database, looked up when a peer asks for it."""

    def __init__(self, database: Database) -> None:
        self._database = database

    def __getitem__(self, full_name: str) -> Collection:
        try:
            collection = self._database.collection(full_name)
        except InvalidInput:  # a name no collection can have
            collection = None
        if collection is None:
            raise KeyError(full_name)
        return collection

    def __iter__(self) -> Iterator[str]:
        return iter([c.full_name for c in self._database.collections()])

    def __len__(self) -> int:
        return len(self._database.collections())


class URLEndpointListener:
    """A passive replication endpoint, as Couchbase Lite's ``URLEndpointListener``."""

    def __init__(self, config: URLEndpointListenerConfiguration) -> None:
        config.validate()
        self.config = config
        self._databases = config.served()
        self._target = BindTarget.parse(config.network_interface)
        self._server: Server | None = None
        self._socket: socket.socket | None = None  # bound, not yet served
        self._port: int | None = None
        self._tls_identity: TLSIdentity | None = None
        #: Set when the listener had to replace an unreadable anonymous identity.
        self.tls_identity_replaced: str | None = None
        self._ssl_context: ssl.SSLContext | None = None
        self._notifiers: dict[str, ChangeNotifier] = {}
        self._connections: dict[ServerConnection, ConnectionInfo] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._auth_guard = AuthGuard()

    # -- public API ---------------------------------------------------------------------------

    @property
    def port(self) -> int | None:
        """The port listened on (the OS's choice when configured as 0); None when stopped."""
        return self._port

    @property
    def tls_identity(self) -> TLSIdentity | None:
        """The TLS identity presented to clients (None with TLS disabled or when stopped)."""
        return self._tls_identity

    @property
    def urls(self) -> list[str]:
        """One URL per usable address and database (empty when stopped)."""
        if self._port is None:
            return []
        scheme = "ws" if self.config.disable_tls else "wss"
        return [
            format_url(scheme, address, self._port, name)
            for address in usable_addresses(self._target)
            for name in self._databases
        ]

    @property
    def status(self) -> ConnectionStatus:
        infos = list(self._connections.values())
        return ConnectionStatus(len(infos), sum(1 for info in infos if info.busy))

    def connections(self) -> list[ConnectionInfo]:
        return list(self._connections.values())

    def bind(self, *, shared: bool = False, listen: bool = True) -> int:
        """Open the listening socket and load the TLS identity, without accepting connections
        yet (:meth:`start` does); return the port. ``shared``: other processes' listeners
        bind the same port and the kernel spreads connections over them (worker processes,
        ``fieldsync run --workers``); ``listen=False`` only reserves the port. Raises
        OSError/InterfaceError if it can't."""
        if self._socket is not None:
            return self._socket.getsockname()[1]
        self._ssl_context = None
        self._tls_identity = None
        if not self.config.disable_tls:
            self._tls_identity, self._ssl_context = self._make_tls()
        sock = open_listening_socket(
            self._target, self.config.port, reuse_port=shared, listen=listen
        )
        self._socket = sock
        self._port = sock.getsockname()[1]
        return self._port

    def unbind(self) -> None:
        """Close the socket :meth:`bind` opened, if it was never served."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
            self._port = None

    async def start(self) -> None:
        """Accept connections, on the socket :meth:`bind` opened (opened now if it was not).
        Raises OSError/InterfaceError if it can't."""
        if self._server is not None:
            return
        self.bind()
        sock, self._socket = self._socket, None
        assert sock is not None
        try:
            self._server = await serve(
                self._handle_connection,
                sock=sock,
                ssl=self._ssl_context,
                subprotocols=[Subprotocol(name) for name in LISTENER_SUBPROTOCOLS],
                select_subprotocol=self._select_subprotocol,
                process_request=self._process_request,
                compression=None,
                max_size=MAX_WEBSOCKET_MESSAGE,  # one BLIP frame; bigger closes with 1009
                ping_interval=60,
                ping_timeout=60,
                close_timeout=2,
                server_header="fieldsync",
                create_connection=ReplicationConnection,
            )
        except BaseException:
            sock.close()
            self._port = None
            raise
        self._loop = asyncio.get_running_loop()
        for name, database in self._databases.items():
            self._notifiers[name] = ChangeNotifier(database)
            database.close_callbacks.append(self._database_closing)
        log.info("listening on %s", ", ".join(self.urls) or f"port {self._port}")

    async def stop(self) -> None:
        """Close every connection (WebSocket 1001) and stop listening."""
        server, self._server = self._server, None
        if server is None:
            self.unbind()
            return
        for database in self._databases.values():
            with contextlib.suppress(ValueError):
                database.close_callbacks.remove(self._database_closing)
        server.close(close_connections=True)
        await server.wait_closed()
        self._port = None
        self._notifiers.clear()
        log.info("listener stopped")

    def _database_closing(self, _database: Database) -> None:
        """A served database is closing: drop every connection (1001) and stop listening."""
        loop = self._loop
        if loop is None:
            return

        def begin() -> None:
            if self._server is not None:
                self._server.close(close_connections=True)
                loop.create_task(self.stop())

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            begin()
        else:
            loop.call_soon_threadsafe(begin)

    def start_blocking(self) -> None:
        """Run the listener until interrupted (a blocking convenience for scripts)."""

        async def main() -> None:
            await self.start()
            try:
                await asyncio.Event().wait()
            finally:
                await self.stop()

        asyncio.run(main())

    async def __aenter__(self) -> URLEndpointListener:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- TLS ----------------------------------------------------------------------------------

    def _make_tls(self) -> tuple[TLSIdentity, ssl.SSLContext]:
        from fieldsync.tls.context import server_ssl_context
        from fieldsync.tls.identity import TLSIdentity

        identity = self.config.tls_identity
        if identity is None:
            found = TLSIdentity.server_identity(
                DEFAULT_SERVER_ALIAS,
                keystore=self.config.keystore,
                legacy_labels=legacy_identity_labels(list(self._databases)),
            )
            identity, self.tls_identity_replaced = found.identity, found.replaced
            if found.replaced:
                log.error("%s", found.replaced)
        authenticator = self.config.authenticator
        client_auth = authenticator if is_certificate_authenticator(authenticator) else None
        return identity, server_ssl_context(identity, client_auth=client_auth)

    # -- the HTTP upgrade ---------------------------------------------------------------------

    def _select_subprotocol(
        self, _connection: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        chosen = handshake.choose_subprotocol(list(offered))
        return None if isinstance(chosen, handshake.Refusal) else Subprotocol(chosen)

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        peer = _peer_name(connection)
        decision = handshake.decide(
            request.path, request.headers.get_all("Sec-WebSocket-Protocol"), self._databases
        )
        if isinstance(decision, handshake.Refusal):
            log.info("%s: refused %s: %d %s", peer, request.path, decision.status, decision.message)
            return _http_error(decision.status, decision.message, decision.headers)
        user = None
        authenticator = self.config.authenticator
        if authenticator is not None:
            chain = _client_chain(connection)  # read on the loop; checked in a worker thread
            checked = await self._auth_guard.check(
                _peer_host(connection),
                lambda: authenticate_request(
                    authenticator,
                    authorization_header=request.headers.get("Authorization"),
                    peer_chain=chain,
                ),
                lambda outcome: outcome.ok,
            )
            if isinstance(checked, TooManyFailures | Busy):  # answered without hashing
                status = 429 if isinstance(checked, TooManyFailures) else 503
                log.info("%s: authentication refused with %d (failed logins)", peer, status)
                return _http_error(
                    status,
                    "too many failed logins from this address; retry later"
                    if status == 429
                    else "busy checking logins; retry later",
                    (("Retry-After", str(checked.retry_after)),),
                )
            result = checked
            if not result.ok:
                log.warning("%s: authentication failed: %s", peer, result.reason)
                challenge: tuple[tuple[str, str], ...] = ()
                if not is_certificate_authenticator(authenticator):
                    challenge = (("WWW-Authenticate", BASIC_CHALLENGE),)
                return _http_error(401, "authentication required", challenge)
            user = result.username
        accepted = Accepted(decision.database_name, decision.subprotocol, user)
        if isinstance(connection, ReplicationConnection):
            connection.accepted = accepted
        return None

    # -- connections --------------------------------------------------------------------------

    async def _handle_connection(self, connection: ServerConnection) -> None:
        accepted = getattr(connection, "accepted", None)
        if not isinstance(accepted, Accepted):  # pragma: no cover - set by _process_request
            await connection.close(1011, "internal error")
            return
        database_name, subprotocol, user = (
            accepted.database_name,
            accepted.subprotocol,
            accepted.user,
        )
        database = self._databases[database_name]
        peer = _peer_name(connection)
        info = ConnectionInfo(peer, database_name, user, subprotocol)
        self._connections[connection] = info
        spool = self.config.spool_directory or str(database.path)
        session = BLIPSession(
            connection, name=peer, spool_dir=spool, shared_strings=SHARED_PROPERTY_STRINGS
        )
        collections = self.config.collections_of(database) or _DatabaseCollections(database)
        replicator = PassiveReplicator(
            session,
            database,
            collections,
            notifier=self._notifiers[database_name],
            read_only=self.config.read_only,
            enable_delta_sync=self.config.enable_delta_sync,
            stats=info.stats,
            wire=WireFormat.for_subprotocol(subprotocol),
            min_free_bytes=self.config.min_free_bytes,
        )
        log.info(
            "%s: connected to /%s%s (%s)",
            peer,
            database_name,
            f" as {user}" if user else "",
            subprotocol,
        )
        try:
            await replicator.run()
        finally:
            del self._connections[connection]
            stats = info.stats
            log.info(
                "%s: disconnected (%s %s): %d docs received, %d sent, %d errors%s",
                peer,
                connection.close_code,
                connection.close_reason or "",
                stats.docs_in,
                stats.docs_out,
                stats.errors,
                f" (last: {stats.last_error})" if stats.last_error else "",
            )


def _client_chain(connection: ServerConnection) -> list[Certificate]:
    """The client's TLS certificate chain (leaf first); empty without TLS or a certificate."""
    ssl_object = connection.transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return []
    from fieldsync.tls.context import peer_certificate_chain

    return peer_certificate_chain(ssl_object)


def _peer_host(connection: ServerConnection) -> str:
    """The client's address without its port (failed logins are counted per address)."""
    address = connection.remote_address
    host = str(address[0]) if address else "peer"
    return host[7:] if host.startswith("::ffff:") else host


def _peer_name(connection: ServerConnection) -> str:
    address = connection.remote_address
    if not address:
        return "peer"
    host, port = address[0], address[1]
    if host.startswith("::ffff:"):
        host = host[7:]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _http_error(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = (message + "\n").encode()
    response_headers = Headers(
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
            *headers,
        ]
    )
    return Response(status, HTTPStatus(status).phrase, response_headers, body)
