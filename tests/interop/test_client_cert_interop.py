"""TLS client-certificate authentication: LiteCore 3.2 (the phone) against fieldsync's listener.

The listener has a TLS identity and a ``ListenerCertificateAuthenticator``; LiteCore pins the
listener's certificate and presents a client certificate (``auth: {type: "Client Cert"}``).
One issued by the trusted CA gets in and syncs both ways; one from another CA, or none, is
refused and nothing moves in either direction. Skipped without ``FIELDSYNC_LITECORE_LIB``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.interop.fieldsync_side import run, url
from tests.interop.litecore import (
    NETWORK_DOMAIN,
    WEBSOCKET_DOMAIN,
    LiteDatabase,
    pulled_doc_ids,
    pushed_doc_ids,
)

listener_mod = pytest.importorskip("fieldsync.listener", reason="fieldsync.listener not importable")
store_mod = pytest.importorskip("fieldsync.store", reason="fieldsync.store not importable")
auth_mod = pytest.importorskip("fieldsync.listener.auth")
identity_mod = pytest.importorskip("fieldsync.tls.identity")

from cryptography import x509  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from tests.support.pki import CA, issue, make_ca  # noqa: E402

#: Refusals a phone can act on (LiteCore does not retry them): LiteCore's network codes for a
#: TLS alert from the server (handshake failed 6, cert required 9, cert rejected 10: see
#: TCPSocket.cc, alerts 42-49 -> 10) or an HTTP 401/403 on the upgrade.
CLEAR_REFUSALS = {
    (NETWORK_DOMAIN, 6),
    (NETWORK_DOMAIN, 9),
    (NETWORK_DOMAIN, 10),
    (WEBSOCKET_DOMAIN, 401),
    (WEBSOCKET_DOMAIN, 403),
}


def _ca(cn: str) -> CA:
    return make_ca(cn)


def _client_cert(ca: CA, cn: str, *, rsa_key: bool = False) -> tuple[str, bytes]:
    """(certificate PEM, private key PEM) for a phone, issued by ``ca``."""
    identity = issue(ca, cn, key_type="rsa" if rsa_key else "ec", with_chain=False)
    return identity.certificate_pem(chain=False), identity.private_key_pem()


@pytest.fixture
def device_db(tmp_path: Path) -> Iterator[Any]:
    db = store_mod.Database.open(tmp_path / "device", create=True)
    db.default_collection.save_document("on-device", {"v": "device"})
    yield db
    db.close()


@pytest.fixture
def server_identity() -> Any:
    return identity_mod.TLSIdentity.create_identity(True, {"CN": "field-device"})


def _config(device_db: Any, identity: Any, authenticator: Any) -> Any:
    return listener_mod.URLEndpointListenerConfiguration(
        database=device_db, port=0, tls_identity=identity, authenticator=authenticator
    )


async def _sync(
    phone: LiteDatabase, server: Any, identity: Any, client_cert: tuple[str, bytes] | None
) -> Any:
    pem = identity.certificate_pem(chain=False)
    with phone.replicator(
        url(server, scheme="wss"), pinned_cert_pem=pem, client_cert=client_cert
    ) as repl:
        status = await run(repl)
        return status, list(repl.documents_ended)


def _assert_refused(status: Any, ended: list, phone: LiteDatabase, device_db: Any) -> None:
    assert status.error, status
    assert ended == []
    assert phone.get("on-device") is None
    assert device_db.default_collection.get_document("on-phone") is None


async def test_client_certificate_from_trusted_ca(
    device_db: Any, phone: LiteDatabase, server_identity: Any
) -> None:
    trusted, other = _ca("field CA"), _ca("some other CA")
    authenticator = auth_mod.ListenerCertificateAuthenticator([trusted.cert])
    phone.put("on-phone", {"v": "phone"})
    async with listener_mod.URLEndpointListener(
        _config(device_db, server_identity, authenticator)
    ) as server:
        # From another CA: refused during the TLS handshake or with 401; nothing moves.
        status, ended = await _sync(phone, server, server_identity, _client_cert(other, "mallory"))
        _assert_refused(status, ended, phone, device_db)
        # No client certificate at all: refused too.
        status, ended = await _sync(phone, server, server_identity, None)
        _assert_refused(status, ended, phone, device_db)
        # A self-signed certificate claiming the trusted CA's name: refused.
        impostor_ca = _ca("field CA")
        status, ended = await _sync(
            phone, server, server_identity, _client_cert(impostor_ca, "phone-1")
        )
        _assert_refused(status, ended, phone, device_db)

        # Issued by the trusted CA (EC and RSA keys): accepted, syncs both ways.
        status, ended = await _sync(phone, server, server_identity, _client_cert(trusted, "p1"))
        assert not status.error, status
        assert pushed_doc_ids(ended) == {"on-phone"}
        assert pulled_doc_ids(ended) == {"on-device"}
        phone.put("second", {"v": 2})
        cert = _client_cert(trusted, "p2", rsa_key=True)
        status, ended = await _sync(phone, server, server_identity, cert)
        assert not status.error, status
        assert pushed_doc_ids(ended) == {"second"}
    assert phone.get("on-device")["body"] == {"v": "device"}
    assert device_db.default_collection.get_document("on-phone").body == {"v": "phone"}
    assert device_db.default_collection.get_document("second").body == {"v": 2}


async def test_client_certificate_callback(
    device_db: Any, phone: LiteDatabase, server_identity: Any
) -> None:
    ca = _ca("any CA")
    seen: list[str] = []

    def decide(chain: list[x509.Certificate]) -> bool:
        cn = chain[0].subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        seen.append(str(cn))
        return cn == "ranger-7"

    authenticator = auth_mod.ListenerCertificateAuthenticator(decide)
    phone.put("on-phone", {"v": "phone"})
    async with listener_mod.URLEndpointListener(
        _config(device_db, server_identity, authenticator)
    ) as server:
        status, ended = await _sync(phone, server, server_identity, _client_cert(ca, "ranger-9"))
        _assert_refused(status, ended, phone, device_db)
        status, ended = await _sync(phone, server, server_identity, _client_cert(ca, "ranger-7"))
        assert not status.error, status
        assert pulled_doc_ids(ended) == {"on-device"}
    assert seen == ["ranger-9", "ranger-7"]
    assert device_db.default_collection.get_document("on-phone").body == {"v": "phone"}


@pytest.mark.parametrize("presented", ["other-ca", "none"])
async def test_refused_client_certificate_is_a_clear_non_transient_error(
    device_db: Any, phone: LiteDatabase, server_identity: Any, presented: str
) -> None:
    """Known fieldsync bug (this test fails until it is fixed).

    In root-certificate mode OpenSSL rejects the chain during the handshake and the listener
    drops the TCP connection without the TLS alert getting through: LiteCore is still writing
    its CertificateVerify when the socket is reset (``ssl->f_send() returned -80``, "NET -
    Connection was reset by peer") and reports POSIX 104 ECONNRESET, which it treats as
    transient. With LiteCore's default retry settings a refused phone therefore goes *offline
    and retries* (one-shot: 9 times with back-off; continuous: forever) instead of stopping
    with "certificate rejected". LiteCore's own TLS server sends the alert and drains the socket
    before closing it (sockpp ``check_mbed_setup``), so its clients get NetworkDomain 10.
    """
    trusted = _ca("field CA")
    authenticator = auth_mod.ListenerCertificateAuthenticator([trusted.cert])
    cert = _client_cert(_ca("some other CA"), "mallory") if presented == "other-ca" else None
    async with listener_mod.URLEndpointListener(
        _config(device_db, server_identity, authenticator)
    ) as server:
        pem = server_identity.certificate_pem(chain=False)
        with phone.replicator(
            url(server, scheme="wss"), pinned_cert_pem=pem, client_cert=cert, max_retries=None
        ) as repl:
            repl.start()
            status = await repl.wait_async("offline", timeout=30)
            assert repl.documents_ended == []
    assert phone.get("on-device") is None
    error = (status.error.domain, status.error.code)
    assert status.level == "stopped" and error in CLEAR_REFUSALS, status
