"""Client-certificate authentication over real TLS handshakes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import ssl
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from tests.tls.tls_helpers import (
    NOW,
    ClientOutcome,
    ServerOutcome,
    TestPKI,
    connect,
    issue,
    serve_once,
)

from fieldsync.listener.auth import AuthResult, ListenerCertificateAuthenticator
from fieldsync.tls import context as context_module
from fieldsync.tls.context import (
    ClientAuthUnsupported,
    client_ssl_context,
    configure_client_auth,
    peer_certificate_chain,
    server_ssl_context,
)
from fieldsync.tls.identity import TLSIdentity


@pytest.fixture(scope="module")
def server_identity() -> TLSIdentity:
    return TLSIdentity.create_identity(True, {"CN": "device"}, key_type="ec")


def _run(
    server_identity: TLSIdentity,
    authenticator: ListenerCertificateAuthenticator,
    client_identity: TLSIdentity | None,
) -> tuple[ClientOutcome, ServerOutcome, dict[str, object]]:
    """One connection: the server authenticates the peer chain and answers OK/DENIED."""
    seen: dict[str, object] = {}

    def on_connection(conn: ssl.SSLSocket) -> bytes:
        chain = peer_certificate_chain(conn)
        result = authenticator.authenticate(chain)
        seen["chain"], seen["result"] = chain, result
        if result.ok:
            return f"OK {result.username}".encode()
        return f"DENIED {result.reason}".encode()

    context = server_ssl_context(server_identity, client_auth=authenticator)
    port, thread, server = serve_once(context, on_connection)
    client_context = client_ssl_context(
        pinned_certificate=server_identity.leaf, identity=client_identity
    )
    client = connect(client_context, port)
    thread.join()
    return client, server, seen


# -- root-certificate mode ---------------------------------------------------------------------


def test_client_from_the_trusted_ca_is_accepted_with_its_chain(
    server_identity: TLSIdentity, pki: TestPKI
) -> None:
    phone = issue(pki.intermediate, "phone")
    authenticator = ListenerCertificateAuthenticator([pki.root.cert])
    client, server, seen = _run(server_identity, authenticator, phone)
    assert server.error is None, server.error
    assert client.line == b"OK phone\n"
    assert seen["chain"] == [phone.leaf, pki.intermediate.cert]


def test_client_signed_directly_by_the_root_is_accepted(
    server_identity: TLSIdentity, pki: TestPKI
) -> None:
    phone = issue(pki.root, "phone")
    client, _, _ = _run(server_identity, ListenerCertificateAuthenticator([pki.root.cert]), phone)
    assert client.line == b"OK phone\n"


@pytest.mark.parametrize("tls_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_client_from_another_ca_is_refused(
    server_identity: TLSIdentity, pki: TestPKI, tls_version: ssl.TLSVersion
) -> None:
    stranger = issue(pki.other_root, "stranger")
    authenticator = ListenerCertificateAuthenticator([pki.root.cert])
    client, server, seen = _run(server_identity, authenticator, stranger)
    assert client.line.startswith(b"DENIED")
    assert not seen["result"].ok
    context = server_ssl_context(server_identity, client_auth=authenticator)
    port, thread, server = serve_once(context, lambda conn: b"OK")
    client_context = client_ssl_context(pinned_certificate=server_identity.leaf, identity=stranger)
    client_context.maximum_version = tls_version
    client = connect(client_context, port)
    thread.join()
    # The handshake completes; the refusal is the application's (the listener answers 401).
    assert server.error is None, server.error
    assert not client.refused


def test_client_without_certificate_is_refused(server_identity: TLSIdentity, pki: TestPKI) -> None:
    client, server, seen = _run(
        server_identity, ListenerCertificateAuthenticator([pki.root.cert]), None
    )
    assert server.error is None, server.error
    assert client.line.startswith(b"DENIED")
    assert seen["chain"] == [] and not seen["result"].ok


def test_expired_client_certificate_is_refused(server_identity: TLSIdentity, pki: TestPKI) -> None:
    expired = issue(
        pki.root,
        "old-phone",
        not_before=NOW - dt.timedelta(days=20),
        not_after=NOW - dt.timedelta(days=1),
    )
    authenticator = ListenerCertificateAuthenticator([pki.root.cert])
    client, server, seen = _run(server_identity, authenticator, expired)
    assert server.error is None, server.error
    assert client.line.startswith(b"DENIED")
    assert not seen["result"].ok
    # and the check on its own
    result = authenticator.authenticate(expired.certs)
    assert not result.ok and "not valid at validation time" in result.reason


def test_self_signed_client_certificate_listed_as_root_is_accepted(
    server_identity: TLSIdentity,
) -> None:
    phone = TLSIdentity.create_identity(False, {"CN": "pinned-phone"}, key_type="ec")
    authenticator = ListenerCertificateAuthenticator([phone.leaf])
    client, _, _ = _run(server_identity, authenticator, phone)
    assert client.line == b"OK pinned-phone\n"


# -- root-certificate mode, the cryptography check alone --------------------------------------


def test_authenticate_checks_chain_time_and_usage(pki: TestPKI) -> None:
    authenticator = ListenerCertificateAuthenticator([pki.root.cert])
    phone = issue(pki.intermediate, "phone")
    missing_intermediate = authenticator.authenticate([phone.leaf])
    assert not missing_intermediate.ok and "not trusted" in missing_intermediate.reason

    assert authenticator.authenticate(phone.certs) == AuthResult(True, "phone", "")
    # once seen in a verified chain, the intermediate is remembered (resumed TLS sessions)
    assert authenticator.authenticate([phone.leaf]).ok

    later = authenticator.authenticate(phone.certs, now=NOW + dt.timedelta(days=60))
    assert not later.ok and "not valid at validation time" in later.reason

    server_only = issue(pki.root, "server-only", eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    refused = authenticator.authenticate(server_only.certs)
    assert not refused.ok and "client authentication" in refused.reason

    stranger = issue(pki.other_root, "stranger")
    assert not authenticator.authenticate(stranger.certs).ok
    assert authenticator.authenticate([]) == AuthResult(
        False, None, "the client presented no certificate"
    )


def test_a_leaf_cannot_act_as_a_ca(pki: TestPKI) -> None:
    """A client certificate (CA:FALSE) issued by the root cannot issue further certificates."""
    from tests.tls.tls_helpers import CA

    phone = issue(pki.root, "phone")
    fake_ca = CA(phone.leaf, phone.private_key)  # type: ignore[arg-type]
    forged = issue(fake_ca, "forged")
    authenticator = ListenerCertificateAuthenticator([pki.root.cert])
    result = authenticator.authenticate([forged.leaf, phone.leaf])
    assert not result.ok


def test_root_mode_needs_certificates() -> None:
    with pytest.raises(ValueError, match="at least one root"):
        ListenerCertificateAuthenticator([])
    with pytest.raises(TypeError, match=r"x509\.Certificate"):
        ListenerCertificateAuthenticator(["not a cert"])  # type: ignore[list-item]


def test_certificate_authentication_needs_tls(pki: TestPKI) -> None:
    authenticator = ListenerCertificateAuthenticator([pki.root.cert])
    authenticator.validate(disable_tls=False)
    with pytest.raises(ValueError, match="needs TLS"):
        authenticator.validate(disable_tls=True)


# -- callback mode -----------------------------------------------------------------------------


def _callback(
    accept: Callable[[list[x509.Certificate]], bool],
) -> tuple[ListenerCertificateAuthenticator, list[list[x509.Certificate]]]:
    calls: list[list[x509.Certificate]] = []

    def callback(chain: list[x509.Certificate]) -> bool:
        calls.append(chain)
        return accept(chain)

    return ListenerCertificateAuthenticator(callback), calls


def test_callback_sees_any_certificate_and_decides(server_identity: TLSIdentity) -> None:
    def is_alice(chain: list[x509.Certificate]) -> bool:
        return chain[0].subject.rfc4514_string() == "CN=alice"

    authenticator, calls = _callback(is_alice)
    alice = TLSIdentity.create_identity(False, {"CN": "alice"}, key_type="ec")
    client, server, _ = _run(server_identity, authenticator, alice)
    assert server.error is None, server.error
    assert client.line == b"OK alice\n"
    assert calls == [[alice.leaf]]

    mallory = TLSIdentity.create_identity(False, {"CN": "mallory"}, key_type="ec")
    client, server, _ = _run(server_identity, authenticator, mallory)
    assert server.error is None  # TLS let it through; the callback said no
    assert client.line == b"DENIED client certificate rejected\n"


def test_callback_gets_the_whole_chain_even_if_expired(
    server_identity: TLSIdentity, pki: TestPKI
) -> None:
    authenticator, calls = _callback(lambda chain: True)
    expired = issue(
        pki.intermediate,
        "old",
        not_before=NOW - dt.timedelta(days=20),
        not_after=NOW - dt.timedelta(days=1),
    )
    client, _, _ = _run(server_identity, authenticator, expired)
    assert client.line == b"OK old\n"
    assert calls == [[expired.leaf, pki.intermediate.cert]]


@pytest.mark.parametrize("tls_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_callback_mode_still_requires_a_certificate(
    server_identity: TLSIdentity, tls_version: ssl.TLSVersion
) -> None:
    authenticator, calls = _callback(lambda chain: True)
    context = server_ssl_context(server_identity, client_auth=authenticator)

    def on_connection(conn: ssl.SSLSocket) -> bytes:
        result = authenticator.authenticate(peer_certificate_chain(conn))
        return b"OK" if result.ok else b"DENIED"

    port, thread, server = serve_once(context, on_connection)
    client_context = client_ssl_context(pinned_certificate=server_identity.leaf)
    client_context.maximum_version = tls_version
    client = connect(client_context, port)
    thread.join()
    assert server.error is None, server.error
    assert client.line == b"DENIED\n"
    assert calls == []


def test_callback_errors_refuse() -> None:
    phone = TLSIdentity.create_identity(False, {"CN": "phone"}, key_type="ec")

    def broken(chain: list[x509.Certificate]) -> bool:
        raise RuntimeError("boom")

    result = ListenerCertificateAuthenticator(broken).authenticate(phone.certs)
    assert result == AuthResult(False, "phone", "authenticator error")

    async def coroutine(chain: list[x509.Certificate]) -> bool:  # truthy if not awaited
        return True

    sloppy = ListenerCertificateAuthenticator(coroutine)  # type: ignore[arg-type]
    with pytest.warns(RuntimeWarning, match="never awaited"):
        result = sloppy.authenticate(phone.certs)
        gc.collect()
    assert not result.ok


def test_callback_fallback_without_the_openssl_hook(
    server_identity: TLSIdentity, pki: TestPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(context_module, "_accept_any_available", lambda: False)

    def no_hook(context: ssl.SSLContext) -> None:
        raise ClientAuthUnsupported("no hook in this Python")

    monkeypatch.setattr(context_module, "accept_any_client_certificate", no_hook)
    bare, _ = _callback(lambda chain: True)
    with pytest.raises(ClientAuthUnsupported):
        configure_client_auth(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), bare)

    calls: list[list[x509.Certificate]] = []

    def record(chain: list[x509.Certificate]) -> bool:
        calls.append(chain)
        return True

    with_roots = ListenerCertificateAuthenticator(record, tls_roots=[pki.root.cert])
    client, _, _ = _run(server_identity, with_roots, issue(pki.intermediate, "phone"))
    assert client.line == b"OK phone\n"
    client, server, _ = _run(server_identity, with_roots, issue(pki.other_root, "stranger"))
    assert client.refused and isinstance(server.error, ssl.SSLCertVerificationError)
    assert len(calls) == 1


def test_hook_survives_later_verify_mode_changes(server_identity: TLSIdentity) -> None:
    authenticator, _ = _callback(lambda chain: True)
    context = server_ssl_context(server_identity, client_auth=authenticator)
    context.verify_mode = ssl.CERT_REQUIRED  # CPython keeps the installed verify callback
    port, thread, _ = serve_once(context, lambda conn: b"OK")
    stranger = TLSIdentity.create_identity(False, {"CN": "any"}, key_type="ec")
    client = connect(
        client_ssl_context(pinned_certificate=server_identity.leaf, identity=stranger), port
    )
    thread.join()
    assert client.line == b"OK\n"


# -- session resumption ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["roots", "callback"])
@pytest.mark.parametrize("tls_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_reconnecting_client_is_authenticated_with_its_chain(
    server_identity: TLSIdentity, pki: TestPKI, mode: str, tls_version: ssl.TLSVersion
) -> None:
    """A resumed TLS session would show only the client's leaf, so resumption is turned off
    and the authenticator always gets the whole chain."""
    calls: list[list[x509.Certificate]] = []

    def record(chain: list[x509.Certificate]) -> bool:
        calls.append(chain)
        return True

    if mode == "roots":
        authenticator = ListenerCertificateAuthenticator([pki.root.cert])
    else:
        authenticator = ListenerCertificateAuthenticator(record)
    phone = issue(pki.intermediate, "phone")
    chains: list[list[x509.Certificate]] = []

    def on_connection(conn: ssl.SSLSocket) -> bytes:
        chain = peer_certificate_chain(conn)
        chains.append(chain)
        result = authenticator.authenticate(chain)
        return b"OK" if result.ok else result.reason.encode()

    context = server_ssl_context(server_identity, client_auth=authenticator)
    port, thread, server = serve_once(context, on_connection, connections=2)
    client_context = client_ssl_context(pinned_certificate=server_identity.leaf, identity=phone)
    client_context.maximum_version = tls_version
    first = connect(client_context, port)
    second = connect(client_context, port, session=first.session)
    thread.join()
    assert server.error is None, server.error
    assert (first.line, second.line) == (b"OK\n", b"OK\n")
    # Resumption is off, so every connection shows (and is judged on) the whole chain.
    assert not second.session_reused
    assert chains == [[phone.leaf, pki.intermediate.cert]] * 2
    if mode == "callback":
        assert calls == [[phone.leaf, pki.intermediate.cert]] * 2


async def test_asyncio_listener_path_gets_the_client_chain(
    server_identity: TLSIdentity, pki: TestPKI
) -> None:
    """asyncio TLS server (as the listener runs it): the chain comes from the transport's
    ``ssl_object`` (an ``ssl.SSLObject``, not a socket)."""
    authenticator = ListenerCertificateAuthenticator([pki.root.cert])
    results: list[AuthResult] = []
    chains: list[list[x509.Certificate]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLObject)
        chain = peer_certificate_chain(ssl_object)
        chains.append(chain)
        results.append(authenticator.authenticate(chain))
        writer.write(b"OK\n" if results[-1].ok else b"DENIED\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    context = server_ssl_context(server_identity, client_auth=authenticator)
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    phone = issue(pki.intermediate, "phone")
    async with server:
        client_context = client_ssl_context(pinned_certificate=server_identity.leaf, identity=phone)
        client_context.maximum_version = ssl.TLSVersion.TLSv1_2
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context)
        assert await reader.readline() == b"OK\n"
        writer.close()
        await writer.wait_closed()
    assert chains == [[phone.leaf, pki.intermediate.cert]]
    assert results == [AuthResult(True, "phone", "")]
