"""A one-connection TLS server and client on 127.0.0.1 for the TLS tests (the test PKI itself
is ``tests.support.pki``, re-exported here)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

from tests.support.pki import CA, NOW, TestPKI, issue, make_ca

__all__ = ["CA", "NOW", "TestPKI", "connect", "issue", "make_ca", "serve_once"]


@dataclass
class ServerOutcome:
    """What the server side saw for one connection."""

    error: BaseException | None = None
    value: object = None


def serve_once(
    context: ssl.SSLContext,
    on_connection: Callable[[ssl.SSLSocket], bytes],
    *,
    connections: int = 1,
) -> tuple[int, threading.Thread, ServerOutcome]:
    """Accept ``connections`` TLS connections on 127.0.0.1, one after the other; send each
    what ``on_connection`` returns, then close it. The last error (if any) is recorded."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)
    port = listener.getsockname()[1]
    outcome = ServerOutcome()

    def run() -> None:
        try:
            for _ in range(connections):
                raw, _ = listener.accept()
                raw.settimeout(20)
                try:
                    with context.wrap_socket(raw, server_side=True) as conn:
                        reply = on_connection(conn)
                        outcome.value = reply
                        conn.sendall(reply + b"\n")
                except (ssl.SSLError, OSError) as exc:  # recorded for the test to inspect
                    outcome.error = exc
        except BaseException as exc:
            outcome.error = exc
        finally:
            listener.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return port, thread, outcome


@dataclass
class ClientOutcome:
    """What the client saw: the server's line, or the TLS/socket error."""

    line: bytes | None = None
    error: BaseException | None = None
    server_leaf: bytes | None = None
    version: str | None = None
    cipher: str | None = None
    session: ssl.SSLSession | None = None
    session_reused: bool = False

    @property
    def refused(self) -> bool:
        return self.error is not None or not self.line


def connect(
    context: ssl.SSLContext, port: int, *, session: ssl.SSLSession | None = None
) -> ClientOutcome:
    """Connect to 127.0.0.1:port (offering ``session`` for resumption), handshake and read one
    line."""
    outcome = ClientOutcome()
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        conn = context.wrap_socket(raw, session=session)
    except (ssl.SSLError, OSError) as exc:
        raw.close()
        outcome.error = exc
        return outcome
    with conn:
        outcome.server_leaf = conn.getpeercert(binary_form=True)
        outcome.version = conn.version()
        outcome.cipher = (conn.cipher() or (None,))[0]
        data = b""
        try:
            while not data.endswith(b"\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
        except (ssl.SSLError, OSError) as exc:
            outcome.error = exc
            return outcome
        outcome.line = data
        outcome.session = conn.session
        outcome.session_reused = conn.session_reused
    return outcome
