"""Test PKI and a one-connection TLS server on 127.0.0.1 for the TLS tests."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fieldsync.tls.identity import TLSIdentity

NOW = dt.datetime.now(dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class CA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    chain: list[x509.Certificate] = field(default_factory=list)  # above this CA, excl. root


def make_ca(cn: str, parent: CA | None = None) -> CA:
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_name = parent.cert.subject if parent else _name(cn)
    signer = parent.key if parent else key
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), False
        )
        .sign(signer, hashes.SHA256())
    )
    is_root = parent is None or parent.cert.issuer == parent.cert.subject
    return CA(cert, key, [] if is_root else [parent.cert, *parent.chain])


def issue(
    ca: CA,
    cn: str,
    *,
    eku: list[x509.ObjectIdentifier] | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> TLSIdentity:
    """A client identity signed by ``ca``; its chain includes ``ca`` unless ``ca`` is a root."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - dt.timedelta(hours=1))
        .not_valid_after(not_after or NOW + dt.timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(eku or [ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
        )
    )
    cert = builder.sign(ca.key, hashes.SHA256())
    chain = [cert]
    if ca.cert.issuer != ca.cert.subject:
        chain += [ca.cert, *ca.chain]
    return TLSIdentity(chain, key)


class TestPKI:
    """root → intermediate, plus an unrelated root."""

    __test__ = False

    def __init__(self) -> None:
        self.root = make_ca("Test Root")
        self.intermediate = make_ca("Test Intermediate", self.root)
        self.other_root = make_ca("Other Root")


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
