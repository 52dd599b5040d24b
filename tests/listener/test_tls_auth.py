"""The listener with TLS and client authentication: real handshakes and real syncs on loopback."""

from __future__ import annotations

import base64
import datetime as dt
import ssl
from pathlib import Path

import pytest
from tests.support.databases import DatabaseFactory
from tests.support.pki import CA, NOW, issue, make_ca
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from fieldsync.listener import (
    ListenerConfigurationError,
    URLEndpointListener,
    URLEndpointListenerConfiguration,
)
from fieldsync.listener.auth import (
    ListenerCertificateAuthenticator,
    ListenerPasswordAuthenticator,
    hash_password,
)
from fieldsync.replicator import (
    ReplicationError,
    Replicator,
    ReplicatorConfiguration,
    ReplicatorType,
)
from fieldsync.store import Database
from fieldsync.tls.context import client_ssl_context
from fieldsync.tls.identity import TLSIdentity
from fieldsync.tls.keystore import Keystore


@pytest.fixture
def keystore(tmp_path: Path) -> Keystore:
    return Keystore(tmp_path / "keys")


@pytest.fixture
def dbs(databases: DatabaseFactory) -> tuple[Database, Database]:
    return databases("device", **{"on-device": {"v": 1}}), databases("phone")


def _ca(cn: str) -> CA:
    return make_ca(cn, days=9, key_usage=False)


def _client_identity(ca: CA, cn: str, *, expired: bool = False) -> TLSIdentity:
    return issue(ca, cn, expired=expired, not_after=None if expired else NOW + dt.timedelta(days=5))


async def _pull(phone: Database, listener: URLEndpointListener, context: ssl.SSLContext, **kw):
    url = f"wss://127.0.0.1:{listener.port}/device"
    config = ReplicatorConfiguration(
        database=phone, url=url, replicator_type=ReplicatorType.PULL, ssl_context=context, **kw
    )
    return await Replicator(config).run()


async def test_tls_disabled_serves_plain_ws(dbs) -> None:
    device, _phone = dbs
    config = URLEndpointListenerConfiguration(database=device, port=0, disable_tls=True)
    async with URLEndpointListener(config) as listener:
        assert listener.tls_identity is None
        assert all(url.startswith("ws://") for url in listener.urls)


async def test_anonymous_identity_is_generated_kept_and_pinned(dbs, keystore) -> None:
    device, phone = dbs
    config = URLEndpointListenerConfiguration(database=device, port=0, keystore=keystore)
    async with URLEndpointListener(config) as listener:
        identity = listener.tls_identity
        assert all(url.startswith("wss://") for url in listener.urls)
        pinned = client_ssl_context(pinned_certificate=identity.leaf)
        result = await _pull(phone, listener, pinned)
        assert result.docs_pulled == 1
        fingerprint = identity.fingerprint_sha256
    # A restart presents the same anonymous identity (kept in the keystore).
    async with URLEndpointListener(config) as again:
        assert again.tls_identity.fingerprint_sha256 == fingerprint


async def test_configured_identity_is_presented_and_other_pins_refused(dbs, keystore) -> None:
    device, phone = dbs
    identity = TLSIdentity.create_identity(
        True, {"CN": "field-device"}, alias="device", keystore=keystore
    )
    other = TLSIdentity.create_identity(True, {"CN": "impostor"})
    config = URLEndpointListenerConfiguration(database=device, port=0, tls_identity=identity)
    async with URLEndpointListener(config) as listener:
        assert listener.tls_identity.fingerprint_sha256 == identity.fingerprint_sha256
        with pytest.raises(ReplicationError, match="CERTIFICATE_VERIFY_FAILED"):
            await _pull(phone, listener, client_ssl_context(pinned_certificate=other.leaf))
        assert phone.default_collection.get_document("on-device") is None
        tls12 = client_ssl_context(pinned_certificate=identity.leaf)
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        tls12.set_ciphers("ECDHE-RSA-AES256-GCM-SHA384")
        assert (await _pull(phone, listener, tls12)).docs_pulled == 1


async def test_password_auth_preemptive_challenged_and_wrong(dbs) -> None:
    device, phone = dbs
    users = {"ranger": hash_password("correct horse")}
    config = URLEndpointListenerConfiguration(
        database=device,
        port=0,
        disable_tls=True,
        authenticator=ListenerPasswordAuthenticator.from_users(users),
    )
    async with URLEndpointListener(config) as listener:
        url = f"ws://127.0.0.1:{listener.port}/device/_blipsync"
        # Challenge: no credentials -> 401 with a Basic challenge.
        with pytest.raises(InvalidStatus) as challenged:
            await connect(url, subprotocols=["BLIP_3+CBMobile_3"])
        response = challenged.value.response
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic")
        # Wrong password: 401, nothing replicated.
        with pytest.raises(ReplicationError, match="401"):
            await Replicator(
                ReplicatorConfiguration(
                    database=phone,
                    url=url,
                    replicator_type=ReplicatorType.PULL,
                    username="ranger",
                    password="wrong",
                )
            ).run()
        assert phone.default_collection.get_document("on-device") is None
        # Retry with credentials on a new connection, as LiteCore does after the challenge.
        token = base64.b64encode(b"ranger:correct horse").decode()
        ws = await connect(
            url,
            subprotocols=["BLIP_3+CBMobile_3"],
            additional_headers={"Authorization": f"Basic {token}"},
        )
        await ws.close()
        result = await Replicator(
            ReplicatorConfiguration(
                database=phone,
                url=url,
                replicator_type=ReplicatorType.PULL,
                username="ranger",
                password="correct horse",
            )
        ).run()
        assert result.docs_pulled == 1


async def test_client_certificate_from_the_right_ca(dbs, keystore) -> None:
    device, phone = dbs
    good_ca, bad_ca = _ca("field CA"), _ca("other CA")
    server = TLSIdentity.create_identity(True, {"CN": "device"})
    config = URLEndpointListenerConfiguration(
        database=device,
        port=0,
        tls_identity=server,
        authenticator=ListenerCertificateAuthenticator([good_ca.cert]),
    )
    async with URLEndpointListener(config) as listener:

        def context(identity: TLSIdentity | None) -> ssl.SSLContext:
            return client_ssl_context(pinned_certificate=server.leaf, identity=identity)

        for refused in (
            _client_identity(bad_ca, "mallory"),
            None,
            _client_identity(good_ca, "old", expired=True),
        ):
            with pytest.raises(ReplicationError, match="401"):
                await _pull(phone, listener, context(refused))
            assert phone.default_collection.get_document("on-device") is None
        result = await _pull(phone, listener, context(_client_identity(good_ca, "phone-1")))
        assert result.docs_pulled == 1


def test_certificate_auth_without_tls_is_a_configuration_error(tmp_path) -> None:
    db = Database.open(tmp_path / "db")
    config = URLEndpointListenerConfiguration(
        database=db,
        disable_tls=True,
        authenticator=ListenerCertificateAuthenticator([_ca("x").cert]),
    )
    with pytest.raises(ListenerConfigurationError, match="TLS"):
        URLEndpointListener(config)
    db.close()
