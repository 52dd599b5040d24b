"""Real TLS handshakes on 127.0.0.1: the server identity, protocol versions, cipher suites,
certificate pinning, and the asyncio path a listener takes."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from tests.tls.tls_helpers import connect, serve_once

from fieldsync.tls.context import (
    TLS12_CIPHERS,
    check_pinned_certificate,
    client_ssl_context,
    peer_certificate_chain,
    server_ssl_context,
)
from fieldsync.tls.identity import TLSIdentity
from fieldsync.tls.keystore import Keystore


@pytest.fixture(scope="module")
def rsa_identity() -> TLSIdentity:
    return TLSIdentity.create_identity(True, {"CN": "device-rsa"}, key_type="rsa")


@pytest.fixture(scope="module")
def ec_identity() -> TLSIdentity:
    return TLSIdentity.create_identity(True, {"CN": "device-ec"}, key_type="ec")


def _der(identity: TLSIdentity) -> bytes:
    return identity.leaf.public_bytes(serialization.Encoding.DER)


def _hello(_conn: ssl.SSLSocket) -> bytes:
    return b"hello"


def test_server_presents_its_identity_over_tls13(rsa_identity: TLSIdentity) -> None:
    port, thread, server = serve_once(server_ssl_context(rsa_identity), _hello)
    client = connect(client_ssl_context(pinned_certificate=rsa_identity.leaf), port)
    thread.join()
    assert server.error is None, server.error
    assert client.error is None, client.error
    assert client.line == b"hello\n"
    assert client.server_leaf == _der(rsa_identity)
    assert client.version == "TLSv1.3"


@pytest.mark.parametrize(
    ("fixture", "cipher"),
    [
        ("rsa_identity", "ECDHE-RSA-AES256-GCM-SHA384"),
        ("ec_identity", "ECDHE-ECDSA-AES256-GCM-SHA384"),
    ],
)
def test_tls12_only_client_like_couchbase_lite_3_2(
    request: pytest.FixtureRequest, fixture: str, cipher: str
) -> None:
    identity: TLSIdentity = request.getfixturevalue(fixture)
    port, thread, _ = serve_once(server_ssl_context(identity), _hello)
    context = client_ssl_context(pinned_certificate=identity.leaf)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(cipher)
    client = connect(context, port)
    thread.join()
    assert client.error is None, client.error
    assert client.line == b"hello\n"
    assert (client.version, client.cipher) == ("TLSv1.2", cipher)


def test_server_offers_only_forward_secret_aead_suites_for_tls12(
    rsa_identity: TLSIdentity,
) -> None:
    offered = {c["name"] for c in server_ssl_context(rsa_identity).get_ciphers()}
    tls12 = {name for name in offered if not name.startswith("TLS_")}
    assert tls12 == set(TLS12_CIPHERS.split(":"))
    assert "ECDHE-RSA-AES256-GCM-SHA384" in tls12


def test_tls12_client_with_a_cbc_suite_is_refused(rsa_identity: TLSIdentity) -> None:
    port, thread, server = serve_once(server_ssl_context(rsa_identity), _hello)
    context = client_ssl_context(pinned_certificate=rsa_identity.leaf)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-RSA-AES256-SHA384")
    client = connect(context, port)
    thread.join()
    assert isinstance(client.error, ssl.SSLError)
    assert isinstance(server.error, ssl.SSLError)


def test_pinned_client_accepts_the_right_identity_and_refuses_another(
    rsa_identity: TLSIdentity, ec_identity: TLSIdentity
) -> None:
    # right pin
    port, thread, _ = serve_once(server_ssl_context(rsa_identity), _hello)
    ok = connect(client_ssl_context(pinned_certificate=rsa_identity.leaf), port)
    thread.join()
    assert ok.error is None and ok.line == b"hello\n"

    # the server presents another identity than the pinned one
    port, thread, server = serve_once(server_ssl_context(ec_identity), _hello)
    refused = connect(client_ssl_context(pinned_certificate=rsa_identity.leaf), port)
    thread.join()
    assert isinstance(refused.error, ssl.SSLCertVerificationError)
    assert refused.line is None
    assert server.error is not None  # the server saw the client abort


def test_same_subject_same_key_other_certificate_fails_the_pin(rsa_identity: TLSIdentity) -> None:
    """A second self-signed certificate for the same key and subject: whether or not OpenSSL
    lets the handshake through, the exact pin check must refuse it."""
    twin = TLSIdentity([_resign(rsa_identity)], rsa_identity.private_key)
    assert twin.fingerprint_sha256 != rsa_identity.fingerprint_sha256
    port, thread, _ = serve_once(server_ssl_context(twin), _hello)
    context = client_ssl_context(pinned_certificate=rsa_identity.leaf)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        try:
            conn = context.wrap_socket(raw)
        except ssl.SSLCertVerificationError:
            conn = None  # refused during the handshake already: also correct
        if conn is not None:
            with conn, pytest.raises(ssl.SSLCertVerificationError, match="not the pinned"):
                check_pinned_certificate(conn, rsa_identity.leaf)
    thread.join()


def _resign(identity: TLSIdentity):
    leaf = identity.leaf
    builder = (
        x509.CertificateBuilder()
        .subject_name(leaf.subject)
        .issuer_name(leaf.issuer)
        .public_key(leaf.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(leaf.not_valid_before_utc)
        .not_valid_after(leaf.not_valid_after_utc - dt.timedelta(seconds=1))
    )
    for extension in leaf.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    return builder.sign(identity.private_key, hashes.SHA256())


def test_stored_identity_serves_tls(keystore: Keystore) -> None:
    TLSIdentity.create_identity(True, {"CN": "stored"}, alias="srv", keystore=keystore)
    identity = TLSIdentity.get_identity("srv", keystore=keystore)
    assert identity is not None
    port, thread, _ = serve_once(identity.ssl_context_server(), _hello)
    client = connect(client_ssl_context(pinned_certificate=identity.leaf), port)
    thread.join()
    assert client.error is None and client.server_leaf == _der(identity)


def test_anonymous_identity_over_restarts_keeps_the_pin(keystore_dir) -> None:
    first = TLSIdentity.anonymous_identity("listener", keystore=Keystore(keystore_dir))
    restarted = TLSIdentity.anonymous_identity("listener", keystore=Keystore(keystore_dir))
    port, thread, _ = serve_once(server_ssl_context(restarted), _hello)
    client = connect(client_ssl_context(pinned_certificate=first.leaf), port)
    thread.join()
    assert client.error is None and client.line == b"hello\n"


async def test_asyncio_server_and_peer_chain(rsa_identity: TLSIdentity) -> None:
    """The listener's path: asyncio TLS server, ssl_object from the transport."""
    seen: dict[str, object] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        seen["chain"] = peer_certificate_chain(ssl_object)
        seen["version"] = ssl_object.version()
        writer.write(b"hi\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(
        handle, "127.0.0.1", 0, ssl=server_ssl_context(rsa_identity)
    )
    port = server.sockets[0].getsockname()[1]
    async with server:
        context = client_ssl_context(pinned_certificate=rsa_identity.leaf)
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        assert await reader.readline() == b"hi\n"
        check_pinned_certificate(writer.get_extra_info("ssl_object"), rsa_identity.leaf)
        writer.close()
        await writer.wait_closed()
    assert seen["chain"] == []  # no client certificate requested
    assert seen["version"] == "TLSv1.2"


def test_client_context_needs_a_trust_setting() -> None:
    with pytest.raises(ValueError, match="pinned_certificate or root_certs"):
        client_ssl_context()
