"""TLSIdentity: creation, attributes, persistence, PKCS#12 import, the anonymous identity."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tests.tls.tls_helpers import TestPKI, issue

from fieldsync.tls.identity import (
    ANONYMOUS_RENEWAL_MARGIN,
    TLSIdentity,
    TLSIdentityError,
)
from fieldsync.tls.keystore import Keystore, KeystoreError


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_server_identity_rsa_defaults() -> None:
    identity = TLSIdentity.create_identity(True, {"CN": "field-device"})
    assert identity.alias is None
    assert isinstance(identity.private_key, rsa.RSAPrivateKey)
    assert identity.private_key.key_size == 2048
    assert identity.key_description == "RSA-2048"
    leaf = identity.leaf
    assert leaf.issuer == leaf.subject
    assert _eku(leaf) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert identity.purposes == {"server"}
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    remaining = identity.expiration - _now()
    assert dt.timedelta(days=364) < remaining <= dt.timedelta(days=365)
    leaf.verify_directly_issued_by(leaf)


def test_client_identity_ec() -> None:
    identity = TLSIdentity.create_identity(False, {"CN": "phone"}, key_type="ec")
    assert isinstance(identity.private_key, ec.EllipticCurvePrivateKey)
    assert identity.private_key.curve.name == "secp256r1"
    assert _eku(identity.leaf) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert identity.purposes == {"client"}


def test_all_couchbase_lite_attributes() -> None:
    attributes = {
        "CN": "Jane Doe",
        "pseudonym": "plainjane837",
        "GN": "Jane",
        "SN": "Doe",
        "O": "Example Corp.",
        "OU": "Marketing",
        "postalAddress": "123 Example Blvd #2A",
        "L": "Boston",
        "postalCode": "02134",
        "ST": "Massachusetts",
        "C": "US",
        "rfc822Name": "jane@example.com",
        "dNSName": ["device.local", "www.example.com"],
        "iPAddress": ["192.0.2.7", "::1"],
        "uniformResourceIdentifier": "https://example.com/jane",
        "registeredID": "1.3.6.1.4.1.99999.1",
    }
    identity = TLSIdentity.create_identity(False, attributes, key_type="ec")
    subject = identity.leaf.subject

    def value(oid: x509.ObjectIdentifier) -> str:
        return subject.get_attributes_for_oid(oid)[0].value  # type: ignore[return-value]

    assert value(NameOID.COMMON_NAME) == "Jane Doe"
    assert value(NameOID.PSEUDONYM) == "plainjane837"
    assert value(NameOID.GIVEN_NAME) == "Jane"
    assert value(NameOID.SURNAME) == "Doe"
    assert value(NameOID.ORGANIZATION_NAME) == "Example Corp."
    assert value(NameOID.ORGANIZATIONAL_UNIT_NAME) == "Marketing"
    assert value(NameOID.POSTAL_ADDRESS) == "123 Example Blvd #2A"
    assert value(NameOID.LOCALITY_NAME) == "Boston"
    assert value(NameOID.POSTAL_CODE) == "02134"
    assert value(NameOID.STATE_OR_PROVINCE_NAME) == "Massachusetts"
    assert value(NameOID.COUNTRY_NAME) == "US"
    san = identity.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == ["jane@example.com"]
    assert san.get_values_for_type(x509.DNSName) == ["device.local", "www.example.com"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.7"),
        ipaddress.ip_address("::1"),
    ]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["https://example.com/jane"]
    assert [o.dotted_string for o in san.get_values_for_type(x509.RegisteredID)] == [
        "1.3.6.1.4.1.99999.1"
    ]


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({}, "'CN' .* is required"),
        ({"CN": ""}, "'CN' .* is required"),
        ({"CN": "x", "emailAddress": "a@b"}, "unknown certificate attribute 'emailAddress'"),
        ({"CN": "x", "C": "USA"}, "attribute 'C'"),
        ({"CN": "x", "iPAddress": "300.1.1.1"}, "attribute 'iPAddress'"),
        ({"CN": "x", "rfc822Name": "not-an-address"}, "attribute 'rfc822Name'"),
        ({"CN": "x", "dNSName": []}, "attribute 'dNSName' has no value"),
    ],
)
def test_bad_attributes_are_clear_errors(attributes: dict, message: str) -> None:
    with pytest.raises(TLSIdentityError, match=message):
        TLSIdentity.create_identity(True, attributes, key_type="ec")


def test_expiration_handling() -> None:
    with pytest.raises(TLSIdentityError, match="in the past"):
        TLSIdentity.create_identity(True, {"CN": "x"}, _now() - dt.timedelta(seconds=1))
    naive = (_now() + dt.timedelta(days=2)).replace(tzinfo=None, microsecond=0)
    identity = TLSIdentity.create_identity(True, {"CN": "x"}, naive, key_type="ec")
    assert identity.expiration == naive.replace(tzinfo=dt.UTC)
    with pytest.raises(TLSIdentityError, match="key_type"):
        TLSIdentity.create_identity(True, {"CN": "x"}, key_type="dsa")  # type: ignore[arg-type]


def test_alias_persists_and_no_alias_does_not(keystore: Keystore) -> None:
    kept = TLSIdentity.create_identity(True, {"CN": "kept"}, alias="kept", keystore=keystore)
    TLSIdentity.create_identity(True, {"CN": "memory"}, key_type="ec", keystore=keystore)
    assert keystore.aliases() == ["kept"]
    again = TLSIdentity.get_identity("kept", keystore=keystore.path)
    assert again is not None
    assert again.alias == "kept"
    assert again.fingerprint_sha256 == kept.fingerprint_sha256
    assert again.private_key.private_numbers() == kept.private_key.private_numbers()
    assert keystore.load("kept").metadata["kind"] == "server"  # type: ignore[union-attr]
    with pytest.raises(KeystoreError, match="already has an identity"):
        TLSIdentity.create_identity(True, {"CN": "x"}, alias="kept", keystore=keystore)
    assert TLSIdentity.delete_identity("kept", keystore=keystore) is True
    assert TLSIdentity.get_identity("kept", keystore=keystore) is None
    assert TLSIdentity.delete_identity("kept", keystore=keystore) is False


def test_fingerprint_and_pem() -> None:
    identity = TLSIdentity.create_identity(True, {"CN": "x"}, key_type="ec")
    der = identity.leaf.public_bytes(serialization.Encoding.DER)
    raw = hashlib.sha256(der).digest()
    assert identity.fingerprint_sha256_raw == raw
    assert identity.fingerprint_sha256 == ":".join(f"{b:02X}" for b in raw)
    assert x509.load_pem_x509_certificates(identity.certificate_pem().encode()) == identity.certs
    again = TLSIdentity.from_pem(identity.certificate_pem(), identity.private_key_pem())
    assert again.fingerprint_sha256 == identity.fingerprint_sha256
    encrypted = identity.private_key_pem(b"secret")
    assert b"ENCRYPTED" in encrypted
    with pytest.raises(TLSIdentityError, match="unreadable PEM private key"):
        TLSIdentity.from_pem(identity.certificate_pem(), encrypted, password=b"wrong")


def test_mismatched_key_is_refused() -> None:
    one = TLSIdentity.create_identity(True, {"CN": "one"}, key_type="ec")
    two = TLSIdentity.create_identity(True, {"CN": "two"}, key_type="ec")
    with pytest.raises(TLSIdentityError, match="does not match"):
        TLSIdentity(one.certs, two.private_key)


# -- PKCS#12 -----------------------------------------------------------------------------------


def _p12(
    identity: TLSIdentity, password: bytes | None, *, extra: list[x509.Certificate] | None = None
) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    cas = extra if extra is not None else identity.certs[1:]
    return pkcs12.serialize_key_and_certificates(
        b"phone", identity.private_key, identity.leaf, cas or None, encryption
    )


def test_pkcs12_round_trip_with_chain(keystore: Keystore, pki: TestPKI) -> None:
    client = issue(pki.intermediate, "phone")
    assert len(client.certs) == 2
    # unordered extras, plus the root and an unrelated certificate
    extras = [pki.other_root.cert, pki.root.cert, pki.intermediate.cert]
    data = _p12(client, b"p12-secret", extra=extras)
    imported = TLSIdentity.import_identity(data, "p12-secret", "phone", keystore=keystore)
    assert imported.alias == "phone"
    assert imported.certs == [client.leaf, pki.intermediate.cert, pki.root.cert]
    stored = TLSIdentity.get_identity("phone", keystore=keystore)
    assert stored is not None and stored.certs == imported.certs
    assert stored.private_key.private_numbers() == client.private_key.private_numbers()
    # and back out again
    exported = stored.to_pkcs12("again")
    key, cert, _ = pkcs12.load_key_and_certificates(exported, b"again")
    assert cert == client.leaf and key is not None


def test_pkcs12_without_password(keystore: Keystore) -> None:
    identity = TLSIdentity.create_identity(False, {"CN": "x"}, key_type="ec")
    imported = TLSIdentity.import_identity(_p12(identity, None), None, "x", keystore=keystore)
    assert imported.fingerprint_sha256 == identity.fingerprint_sha256


def test_pkcs12_wrong_password(keystore: Keystore) -> None:
    identity = TLSIdentity.create_identity(False, {"CN": "x"}, key_type="ec")
    data = _p12(identity, b"right")
    with pytest.raises(TLSIdentityError, match="wrong password"):
        TLSIdentity.import_identity(data, "wrong", "x", keystore=keystore)
    with pytest.raises(TLSIdentityError, match="wrong password"):
        TLSIdentity.import_identity(data, None, "x", keystore=keystore)
    assert keystore.aliases() == []


@pytest.mark.parametrize("damage", ["truncate", "garbage", "pem", "empty"])
def test_pkcs12_corrupt(keystore: Keystore, damage: str) -> None:
    identity = TLSIdentity.create_identity(False, {"CN": "x"}, key_type="ec")
    data = _p12(identity, b"pw")
    if damage == "truncate":
        data = data[: len(data) // 2]
        expected = "not a PKCS#12 file"
    elif damage == "garbage":
        data = os.urandom(600)
        expected = "not a PKCS#12 file"
    elif damage == "pem":
        data = identity.certificate_pem().encode()
        expected = "PEM file, not PKCS#12"
    else:
        data = b""
        expected = "not a PKCS#12 file"
    with pytest.raises(TLSIdentityError, match=expected):
        TLSIdentity.import_identity(data, "pw", "x", keystore=keystore)


def test_pkcs12_damaged_inside_is_a_clear_error(keystore: Keystore) -> None:
    identity = TLSIdentity.create_identity(False, {"CN": "x"}, key_type="ec")
    data = bytearray(_p12(identity, b"pw"))
    data[len(data) // 2] ^= 0xFF  # structure intact at the top, contents damaged
    with pytest.raises(TLSIdentityError, match=r"wrong password .*or damaged"):
        TLSIdentity.import_identity(bytes(data), "pw", "x", keystore=keystore)


def test_pkcs12_without_key(keystore: Keystore) -> None:
    identity = TLSIdentity.create_identity(False, {"CN": "x"}, key_type="ec")
    data = pkcs12.serialize_key_and_certificates(
        b"x", None, identity.leaf, None, serialization.BestAvailableEncryption(b"pw")
    )
    with pytest.raises(TLSIdentityError, match="contains no private key"):
        TLSIdentity.import_identity(data, "pw", "x", keystore=keystore)


def test_pkcs12_key_without_its_certificate(keystore: Keystore) -> None:
    one = TLSIdentity.create_identity(False, {"CN": "one"}, key_type="ec")
    two = TLSIdentity.create_identity(False, {"CN": "two"}, key_type="ec")
    data = pkcs12.serialize_key_and_certificates(
        b"x", one.private_key, None, [two.leaf], serialization.BestAvailableEncryption(b"pw")
    )
    with pytest.raises(TLSIdentityError, match="matches none of its certificates"):
        TLSIdentity.import_identity(data, "pw", "x", keystore=keystore)


# -- anonymous identity ------------------------------------------------------------------------


def test_anonymous_identity_is_reused_across_restarts(keystore_dir) -> None:
    first = TLSIdentity.anonymous_identity("db1", keystore=Keystore(keystore_dir))
    assert first.alias == TLSIdentity.anonymous_alias("db1")
    assert isinstance(first.private_key, rsa.RSAPrivateKey)
    assert first.purposes == {"server"}
    # a "restart": a fresh Keystore object over the same directory
    second = TLSIdentity.anonymous_identity("db1", keystore=Keystore(keystore_dir))
    assert second.fingerprint_sha256 == first.fingerprint_sha256
    other = TLSIdentity.anonymous_identity("db2", keystore=Keystore(keystore_dir))
    assert other.fingerprint_sha256 != first.fingerprint_sha256
    assert sorted(Keystore(keystore_dir).aliases()) == sorted([first.alias, other.alias])


def test_anonymous_identity_is_renewed_near_expiry(keystore: Keystore) -> None:
    alias = TLSIdentity.anonymous_alias("db1")
    soon = _now() + ANONYMOUS_RENEWAL_MARGIN - dt.timedelta(minutes=5)
    old = TLSIdentity.create_identity(
        True, {"CN": "old"}, soon, alias, keystore=keystore, key_type="ec"
    )
    renewed = TLSIdentity.anonymous_identity("db1", keystore=keystore)
    assert renewed.fingerprint_sha256 != old.fingerprint_sha256
    assert renewed.expiration - _now() > dt.timedelta(days=364)
    stored = TLSIdentity.get_identity(alias, keystore=keystore)
    assert stored is not None and stored.fingerprint_sha256 == renewed.fingerprint_sha256


def test_anonymous_identity_with_time_left_is_kept(keystore: Keystore) -> None:
    alias = TLSIdentity.anonymous_alias("db1")
    later = _now() + ANONYMOUS_RENEWAL_MARGIN + dt.timedelta(hours=2)
    kept = TLSIdentity.create_identity(True, {"CN": "k"}, later, alias, keystore=keystore)
    again = TLSIdentity.anonymous_identity("db1", keystore=keystore)
    assert again.fingerprint_sha256 == kept.fingerprint_sha256


def test_corrupt_anonymous_identity_is_replaced(keystore: Keystore) -> None:
    first = TLSIdentity.anonymous_identity("db1", keystore=keystore)
    path = keystore.entry_path(first.alias or "")
    path.write_bytes(path.read_bytes()[:200])
    replaced = TLSIdentity.anonymous_identity("db1", keystore=keystore)
    assert replaced.fingerprint_sha256 != first.fingerprint_sha256
    assert TLSIdentity.get_identity(first.alias or "", keystore=keystore) is not None


def test_unsafe_anonymous_identity_is_not_replaced(keystore: Keystore) -> None:
    first = TLSIdentity.anonymous_identity("db1", keystore=keystore)
    path = keystore.entry_path(first.alias or "")
    os.chmod(path, 0o644)
    with pytest.raises(KeystoreError, match="0644"):
        TLSIdentity.anonymous_identity("db1", keystore=keystore)
    os.chmod(path, 0o600)
    assert TLSIdentity.anonymous_identity("db1", keystore=keystore).fingerprint_sha256 == (
        first.fingerprint_sha256
    )


def test_anonymous_label_must_not_be_empty(keystore: Keystore) -> None:
    with pytest.raises(TLSIdentityError, match="non-empty label"):
        TLSIdentity.anonymous_identity("", keystore=keystore)


def test_issue_helper_chain_is_valid(pki: TestPKI) -> None:
    client = issue(pki.intermediate, "phone")
    client.leaf.verify_directly_issued_by(pki.intermediate.cert)
    pki.intermediate.cert.verify_directly_issued_by(pki.root.cert)
    assert client.leaf.signature_hash_algorithm.name == hashes.SHA256().name  # type: ignore[union-attr]
