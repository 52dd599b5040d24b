"""``TLSIdentity``: a certificate chain with its private key, as in Couchbase Lite.

Identities are created (self-signed), imported from PKCS#12, or read back by alias from a
:class:`~fieldsync.tls.keystore.Keystore`. The attribute keys of :meth:`TLSIdentity.create_identity`
are Couchbase Lite's certificate attribute keys (``CERT_ATTR_*`` below): subject-name keys
(``CN``, ``O``, ``OU``, ...) and subject-alternative-name keys (``rfc822Name``, ``dNSName``,
``iPAddress``, ``uniformResourceIdentifier``, ``registeredID``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import logging
import os
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from fieldsync.errors import FieldsyncError
from fieldsync.tls import DEFAULT_SERVER_ALIAS
from fieldsync.tls.client_auth import ListenerCertificateAuthenticator
from fieldsync.tls.context import server_ssl_context
from fieldsync.tls.keystore import (
    Keystore,
    KeystoreEntryError,
    PrivateKey,
    open_keystore,
    validate_alias,
)

__all__ = [
    "ANONYMOUS_RENEWAL_MARGIN",
    "CERT_ATTR_COMMON_NAME",
    "CERT_ATTR_COUNTRY",
    "CERT_ATTR_EMAIL_ADDRESS",
    "CERT_ATTR_GIVEN_NAME",
    "CERT_ATTR_HOSTNAME",
    "CERT_ATTR_IP_ADDRESS",
    "CERT_ATTR_LOCALITY",
    "CERT_ATTR_ORGANIZATION",
    "CERT_ATTR_ORGANIZATION_UNIT",
    "CERT_ATTR_POSTAL_ADDRESS",
    "CERT_ATTR_POSTAL_CODE",
    "CERT_ATTR_PSEUDONYM",
    "CERT_ATTR_REGISTERED_ID",
    "CERT_ATTR_STATE_OR_PROVINCE",
    "CERT_ATTR_SURNAME",
    "CERT_ATTR_URL",
    "DEFAULT_SERVER_ALIAS",
    "DEFAULT_VALIDITY",
    "ServerIdentity",
    "TLSIdentity",
    "TLSIdentityError",
]

log = logging.getLogger(__name__)

# Couchbase Lite's certificate attribute keys (kCBLCertAttrKey* / CERT_ATTRIBUTE_*).
CERT_ATTR_COMMON_NAME = "CN"
CERT_ATTR_PSEUDONYM = "pseudonym"
CERT_ATTR_GIVEN_NAME = "GN"
CERT_ATTR_SURNAME = "SN"
CERT_ATTR_ORGANIZATION = "O"
CERT_ATTR_ORGANIZATION_UNIT = "OU"
CERT_ATTR_POSTAL_ADDRESS = "postalAddress"
CERT_ATTR_LOCALITY = "L"
CERT_ATTR_POSTAL_CODE = "postalCode"
CERT_ATTR_STATE_OR_PROVINCE = "ST"
CERT_ATTR_COUNTRY = "C"
CERT_ATTR_EMAIL_ADDRESS = "rfc822Name"
CERT_ATTR_HOSTNAME = "dNSName"
CERT_ATTR_URL = "uniformResourceIdentifier"
CERT_ATTR_IP_ADDRESS = "iPAddress"
CERT_ATTR_REGISTERED_ID = "registeredID"

#: Subject attributes, in the order they are written into the distinguished name.
_NAME_ATTRIBUTES: dict[str, ObjectIdentifier] = {
    CERT_ATTR_COUNTRY: NameOID.COUNTRY_NAME,
    CERT_ATTR_STATE_OR_PROVINCE: NameOID.STATE_OR_PROVINCE_NAME,
    CERT_ATTR_LOCALITY: NameOID.LOCALITY_NAME,
    CERT_ATTR_POSTAL_CODE: NameOID.POSTAL_CODE,
    CERT_ATTR_POSTAL_ADDRESS: NameOID.POSTAL_ADDRESS,
    CERT_ATTR_ORGANIZATION: NameOID.ORGANIZATION_NAME,
    CERT_ATTR_ORGANIZATION_UNIT: NameOID.ORGANIZATIONAL_UNIT_NAME,
    CERT_ATTR_GIVEN_NAME: NameOID.GIVEN_NAME,
    CERT_ATTR_SURNAME: NameOID.SURNAME,
    CERT_ATTR_PSEUDONYM: NameOID.PSEUDONYM,
    CERT_ATTR_COMMON_NAME: NameOID.COMMON_NAME,
}
_SAN_ATTRIBUTES = (
    CERT_ATTR_EMAIL_ADDRESS,
    CERT_ATTR_HOSTNAME,
    CERT_ATTR_URL,
    CERT_ATTR_IP_ADDRESS,
    CERT_ATTR_REGISTERED_ID,
)

#: Validity of a created identity when no expiration is given (as Couchbase Lite: one year).
DEFAULT_VALIDITY = dt.timedelta(days=365)
#: An anonymous identity with less validity left than this is replaced.
ANONYMOUS_RENEWAL_MARGIN = dt.timedelta(hours=24)
_BACKDATE = dt.timedelta(minutes=5)
_ANONYMOUS_PREFIX = "anonymous-"

KeyType = Literal["rsa", "ec"]
AttributeValue = str | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address


class TLSIdentityError(FieldsyncError, ValueError):
    """An identity cannot be created, imported or used; the message says why."""


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class TLSIdentity:
    """A certificate chain (leaf first) and the leaf's private key, optionally under an alias.

    Build one with :meth:`create_identity`, :meth:`import_identity`, :meth:`get_identity`,
    :meth:`anonymous_identity` or :meth:`from_pem`.
    """

    __slots__ = ("_alias", "_certs", "_key")

    def __init__(
        self,
        certs: Sequence[x509.Certificate],
        private_key: PrivateKey,
        *,
        alias: str | None = None,
    ) -> None:
        if not certs:
            raise TLSIdentityError("an identity needs at least one certificate")
        if not isinstance(private_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise TLSIdentityError(
                f"unsupported private key type {type(private_key).__name__}: use RSA or EC"
            )
        if private_key.public_key() != certs[0].public_key():
            raise TLSIdentityError("the private key does not match the leaf certificate")
        self._certs = tuple(certs)
        self._key = private_key
        self._alias = alias

    # -- Couchbase Lite API ------------------------------------------------------------------

    @classmethod
    def create_identity(
        cls,
        server: bool,
        attributes: Mapping[str, AttributeValue | Iterable[AttributeValue]],
        expiration: dt.datetime | None = None,
        alias: str | None = None,
        *,
        keystore: Keystore | str | os.PathLike[str] | None = None,
        key_type: KeyType = "rsa",
    ) -> TLSIdentity:
        """Create a self-signed identity (RSA-2048 or EC P-256).

        ``attributes`` uses the ``CERT_ATTR_*`` keys; ``CN`` is required. Subject-alternative-name
        keys accept one value or several. ``expiration`` defaults to one year from now (a naive
        datetime is taken as UTC). Server identities get the serverAuth extended key usage,
        client identities clientAuth. With ``alias`` the identity is stored in the keystore
        (default: :func:`~fieldsync.tls.keystore.default_keystore_path`), which must not already
        hold that alias; without, it lives in memory only.
        """
        if alias is not None:
            validate_alias(alias)
        now = _utc_now()
        not_after = now + DEFAULT_VALIDITY if expiration is None else _as_utc(expiration)
        if not_after <= now:
            raise TLSIdentityError(f"expiration {not_after.isoformat()} is in the past")
        subject = _subject_name(attributes)
        san = _subject_alternative_names(attributes)
        key = _generate_key(key_type)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(key), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), False
            )
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(key, hashes.SHA256())
        identity = cls([cert], key, alias=alias)
        if alias is not None:
            metadata = {"kind": "server" if server else "client", "created": now.isoformat()}
            open_keystore(keystore).store(alias, [cert], key, metadata)
        return identity

    @classmethod
    def import_identity(
        cls,
        pkcs12_bytes: bytes,
        password: str | bytes | None,
        alias: str,
        *,
        keystore: Keystore | str | os.PathLike[str] | None = None,
    ) -> TLSIdentity:
        """Import a PKCS#12 (.p12/.pfx) key and chain and store it under ``alias``.

        Raises :class:`TLSIdentityError` for a wrong password, a damaged or non-PKCS#12 file, a
        file without a private key or certificate, or a key that matches none of its certificates.
        """
        validate_alias(alias)
        certs, key = _load_pkcs12(pkcs12_bytes, password)
        metadata = {"kind": "imported", "created": _utc_now().isoformat()}
        open_keystore(keystore).store(alias, certs, key, metadata)
        return cls(certs, key, alias=alias)

    @classmethod
    def get_identity(
        cls, alias: str, *, keystore: Keystore | str | os.PathLike[str] | None = None
    ) -> TLSIdentity | None:
        """The stored identity ``alias``, or None. A corrupt entry raises KeystoreEntryError."""
        entry = open_keystore(keystore).load(alias)
        if entry is None:
            return None
        return cls(entry.certs, entry.private_key, alias=alias)

    @classmethod
    def delete_identity(
        cls, alias: str, *, keystore: Keystore | str | os.PathLike[str] | None = None
    ) -> bool:
        """Remove the stored identity ``alias``; True if there was one."""
        return open_keystore(keystore).delete(alias)

    @classmethod
    def anonymous_identity(
        cls, label: str, *, keystore: Keystore | str | os.PathLike[str] | None = None
    ) -> TLSIdentity:
        """The self-signed server identity a listener uses when TLS is on and none is configured.

        One per ``label`` (e.g. the listener's or database's name), stored under
        :meth:`anonymous_alias` and reused across restarts; replaced by a new one (RSA-2048, one
        year) when less than :data:`ANONYMOUS_RENEWAL_MARGIN` of validity remains, or when the
        stored entry is corrupt (logged as a warning). Permission and decryption problems raise.
        """
        identity, replaced = cls._anonymous(label, open_keystore(keystore))
        if replaced is not None:
            log.error("%s", replaced)
        return identity

    @classmethod
    def _anonymous(cls, label: str, store: Keystore) -> tuple[TLSIdentity, str | None]:
        """The anonymous identity for ``label`` and, when an unreadable stored one had to be
        replaced (a new fingerprint: pinned phones will refuse it), a sentence saying so."""
        alias = cls.anonymous_alias(label)
        replaced = None
        with store.lock():
            try:
                entry = store.load(alias)
            except KeystoreEntryError as exc:
                replaced = exc.problem
                entry = None
            if entry is not None:
                identity = cls(entry.certs, entry.private_key, alias=alias)
                if identity.expiration - _utc_now() > ANONYMOUS_RENEWAL_MARGIN:
                    return identity, None
                log.info(
                    "renewing anonymous TLS identity %s (expires %s)", alias, identity.expiration
                )
            common_name = f"fieldsync {label}"[:64]
            fresh = cls.create_identity(True, {CERT_ATTR_COMMON_NAME: common_name}, key_type="rsa")
            metadata = {
                "kind": "server",
                "anonymous-label": json.dumps(label, ensure_ascii=True),
                "created": _utc_now().isoformat(),
            }
            store.store(alias, fresh.certs, fresh.private_key, metadata, overwrite=True)
            identity = cls(fresh.certs, fresh.private_key, alias=alias)
        if replaced is not None:
            replaced = (
                f"the anonymous TLS identity {label!r} ({store.entry_path(alias)}) was unreadable "
                f"({replaced}) and has been REPLACED: new certificate SHA-256 "
                f"{identity.fingerprint_sha256}; phones that pinned the old one must pair again"
            )
        return identity, replaced

    @classmethod
    def server_identity(
        cls,
        alias: str = DEFAULT_SERVER_ALIAS,
        *,
        keystore: Keystore | str | os.PathLike[str] | None = None,
        create: bool = True,
        legacy_labels: Iterable[str] = (),
    ) -> ServerIdentity:
        """The identity a listener presents: THE alias rule, shared by ``fieldsync run``, the
        agent and ``URLEndpointListener``.

        1. A stored identity named ``alias`` (created or imported by the operator).
        2. Otherwise, with ``create``, the anonymous identity labelled ``alias`` (self-signed,
           kept across restarts, renewed before it expires). When there is none yet but one
           exists under an older label (``legacy_labels``: how earlier versions named it), that
           one is adopted, so a phone that pinned it keeps working.

        A damaged named identity raises ``KeystoreEntryError``; a damaged anonymous one is
        replaced and the result's ``replaced`` says so (never silently).
        """
        store = open_keystore(keystore)
        entry = store.load(alias)
        if entry is not None:
            return ServerIdentity(cls(entry.certs, entry.private_key, alias=alias))
        if not create:
            raise TLSIdentityError(f"no TLS identity {alias!r} in {store.path}")
        canonical = cls.anonymous_alias(alias)
        if canonical not in store:
            cls._adopt_legacy(store, alias, canonical, legacy_labels)
        identity, replaced = cls._anonymous(alias, store)
        return ServerIdentity(identity, replaced)

    @classmethod
    def _adopt_legacy(
        cls, store: Keystore, label: str, canonical: str, legacy_labels: Iterable[str]
    ) -> None:
        for legacy in legacy_labels:
            try:
                entry = store.load(cls.anonymous_alias(legacy))
            except KeystoreEntryError as exc:
                log.warning("not adopting an older anonymous identity: %s", exc)
                continue
            if entry is None:
                continue
            metadata = dict(entry.metadata)
            metadata["anonymous-label"] = json.dumps(label, ensure_ascii=True)
            metadata["adopted-from"] = json.dumps(legacy, ensure_ascii=True)
            with store.lock():
                if canonical not in store:
                    store.store(canonical, entry.certs, entry.private_key, metadata)
            log.info("TLS identity: adopted the anonymous identity of %r as %r", legacy, label)
            return

    @staticmethod
    def anonymous_alias(label: str) -> str:
        """The keystore alias of the anonymous identity for ``label``."""
        if not isinstance(label, str) or not label:
            raise TLSIdentityError("the anonymous identity needs a non-empty label")
        return _ANONYMOUS_PREFIX + hashlib.sha256(label.encode("utf-8")).hexdigest()[:24]

    @classmethod
    def from_pem(
        cls,
        certificate_pem: bytes | str,
        private_key_pem: bytes | str,
        *,
        password: bytes | str | None = None,
    ) -> TLSIdentity:
        """An in-memory identity from a PEM chain (leaf first) and a PEM private key."""
        cert_data = (
            certificate_pem.encode() if isinstance(certificate_pem, str) else certificate_pem
        )
        key_data = private_key_pem.encode() if isinstance(private_key_pem, str) else private_key_pem
        pw = password.encode("utf-8") if isinstance(password, str) else password
        try:
            certs = x509.load_pem_x509_certificates(cert_data)
        except ValueError as exc:
            raise TLSIdentityError(f"unreadable PEM certificate: {exc}") from None
        try:
            key = serialization.load_pem_private_key(key_data, pw)
        except (ValueError, TypeError) as exc:
            raise TLSIdentityError(f"unreadable PEM private key: {exc}") from None
        return cls(certs, key)  # type: ignore[arg-type]

    # -- properties --------------------------------------------------------------------------

    @property
    def alias(self) -> str | None:
        """The keystore alias, or None for an in-memory identity."""
        return self._alias

    @property
    def certs(self) -> list[x509.Certificate]:
        """The certificate chain, leaf first."""
        return list(self._certs)

    @property
    def leaf(self) -> x509.Certificate:
        """The identity's own certificate."""
        return self._certs[0]

    @property
    def private_key(self) -> PrivateKey:
        """The leaf's private key."""
        return self._key

    @property
    def expiration(self) -> dt.datetime:
        """When the leaf certificate expires (UTC)."""
        return self.leaf.not_valid_after_utc

    @property
    def subject(self) -> str:
        """The leaf's subject, RFC 4514 string form."""
        return self.leaf.subject.rfc4514_string()

    @property
    def fingerprint_sha256_raw(self) -> bytes:
        """SHA-256 of the leaf certificate's DER encoding."""
        return self.leaf.fingerprint(hashes.SHA256())

    @property
    def fingerprint_sha256(self) -> str:
        """SHA-256 fingerprint of the leaf, upper-case hex pairs joined by colons."""
        return self.fingerprint_sha256_raw.hex(":").upper()

    @property
    def key_description(self) -> str:
        """``RSA-2048``, ``EC-secp256r1``, ..."""
        if isinstance(self._key, rsa.RSAPrivateKey):
            return f"RSA-{self._key.key_size}"
        return f"EC-{self._key.curve.name}"

    @property
    def purposes(self) -> frozenset[str]:
        """``{"server"}``, ``{"client"}`` or both, from the leaf's extended key usage."""
        try:
            usages = self.leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            return frozenset({"server", "client"})
        result = set()
        any_usage = ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in usages
        if any_usage or ExtendedKeyUsageOID.SERVER_AUTH in usages:
            result.add("server")
        if any_usage or ExtendedKeyUsageOID.CLIENT_AUTH in usages:
            result.add("client")
        return frozenset(result)

    # -- serialisation -----------------------------------------------------------------------

    def certificate_pem(self, *, chain: bool = True) -> str:
        """The certificate chain (or only the leaf) as PEM text."""
        certs = self._certs if chain else self._certs[:1]
        return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs)

    def private_key_pem(self, password: bytes | None = None) -> bytes:
        """The private key as PKCS#8 PEM, encrypted when ``password`` is given."""
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password)
            if password
            else serialization.NoEncryption()
        )
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    def to_pkcs12(self, password: str | bytes | None) -> bytes:
        """The identity as a PKCS#12 file (for a phone's client identity, say)."""
        pw = password.encode("utf-8") if isinstance(password, str) else password
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(pw) if pw else serialization.NoEncryption()
        )
        name = (self._alias or "fieldsync").encode("utf-8")
        return pkcs12.serialize_key_and_certificates(
            name, self._key, self.leaf, list(self._certs[1:]) or None, encryption
        )

    def ssl_context_server(
        self, *, client_auth: ListenerCertificateAuthenticator | None = None
    ) -> ssl.SSLContext:
        """A server SSLContext presenting this identity; see ``tls.context.server_ssl_context``."""
        return server_ssl_context(self, client_auth=client_auth)

    def __repr__(self) -> str:
        return (
            f"TLSIdentity(alias={self._alias!r}, subject={self.subject!r}, "
            f"expires={self.expiration.isoformat()}, sha256={self.fingerprint_sha256[:23]}...)"
        )


# -- helpers -----------------------------------------------------------------------------------


def _as_utc(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


def _generate_key(key_type: str) -> PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    raise TLSIdentityError(f"key_type must be 'rsa' or 'ec', not {key_type!r}")


def _key_usage(key: PrivateKey) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=isinstance(key, rsa.RSAPrivateKey),
        data_encipherment=False,
        key_agreement=isinstance(key, ec.EllipticCurvePrivateKey),
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _values(key: str, value: object) -> list[AttributeValue]:
    if isinstance(value, str | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address):
        values = [value]
    elif isinstance(value, Iterable):
        values = list(value)
    else:
        raise TLSIdentityError(f"attribute {key!r}: unsupported value {value!r}")
    if not values:
        raise TLSIdentityError(f"attribute {key!r} has no value")
    return values


def _subject_name(attributes: Mapping[str, object]) -> x509.Name:
    known = set(_NAME_ATTRIBUTES) | set(_SAN_ATTRIBUTES)
    unknown = sorted(set(attributes) - known)
    if unknown:
        raise TLSIdentityError(
            f"unknown certificate attribute {unknown[0]!r}; known: {', '.join(sorted(known))}"
        )
    common_name = attributes.get(CERT_ATTR_COMMON_NAME)
    if not isinstance(common_name, str) or not common_name.strip():
        raise TLSIdentityError("the attribute 'CN' (common name) is required")
    rdns = []
    for key, oid in _NAME_ATTRIBUTES.items():
        if key not in attributes:
            continue
        value = attributes[key]
        if not isinstance(value, str) or not value:
            raise TLSIdentityError(f"attribute {key!r} must be a non-empty string")
        try:
            rdns.append(x509.NameAttribute(oid, value))
        except ValueError as exc:
            raise TLSIdentityError(f"attribute {key!r}: {exc}") from None
    return x509.Name(rdns)


def _subject_alternative_names(attributes: Mapping[str, object]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for key in _SAN_ATTRIBUTES:
        if key not in attributes:
            continue
        for value in _values(key, attributes[key]):
            try:
                names.append(_general_name(key, value))
            except ValueError as exc:
                raise TLSIdentityError(f"attribute {key!r}: {value!r} is invalid: {exc}") from None
    return names


def _general_name(key: str, value: AttributeValue) -> x509.GeneralName:
    if key == CERT_ATTR_IP_ADDRESS:  # text, packed bytes (4 or 16) or an ipaddress object
        return x509.IPAddress(ipaddress.ip_address(value))
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    if key == CERT_ATTR_EMAIL_ADDRESS:
        if "@" not in value:
            raise ValueError("not an e-mail address")
        return x509.RFC822Name(value)
    if key == CERT_ATTR_HOSTNAME:
        return x509.DNSName(value)
    if key == CERT_ATTR_URL:
        return x509.UniformResourceIdentifier(value)
    return x509.RegisteredID(ObjectIdentifier(value))


def _load_pkcs12(
    data: bytes, password: str | bytes | None
) -> tuple[list[x509.Certificate], PrivateKey]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TLSIdentityError("the PKCS#12 data must be bytes")
    data = bytes(data)
    if data.lstrip().startswith(b"-----BEGIN"):
        raise TLSIdentityError("this is a PEM file, not PKCS#12 (.p12/.pfx)")
    if not _looks_like_pfx(data):
        raise TLSIdentityError("not a PKCS#12 file: the data is damaged or in another format")
    pw = password.encode("utf-8") if isinstance(password, str) else password
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, pw or None)
    except UnsupportedAlgorithm as exc:
        raise TLSIdentityError(f"the PKCS#12 file uses an unsupported algorithm: {exc}") from None
    except (ValueError, TypeError):
        raise TLSIdentityError(
            "cannot open the PKCS#12 file: wrong password (or damaged contents)"
        ) from None
    if key is None:
        raise TLSIdentityError("the PKCS#12 file contains no private key")
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise TLSIdentityError(
            f"the PKCS#12 private key is {type(key).__name__}; only RSA and EC are supported"
        )
    candidates = ([cert] if cert is not None else []) + list(extra)
    if not candidates:
        raise TLSIdentityError("the PKCS#12 file contains no certificate")
    public = key.public_key()
    leaf = next((c for c in candidates if c.public_key() == public), None)
    if leaf is None:
        raise TLSIdentityError("the PKCS#12 private key matches none of its certificates")
    return _order_chain(leaf, [c for c in candidates if c is not leaf]), key


def _order_chain(leaf: x509.Certificate, others: list[x509.Certificate]) -> list[x509.Certificate]:
    """Leaf, then each issuer found among ``others``; certificates off the path are dropped."""
    chain = [leaf]
    remaining = list(others)
    while remaining:
        current = chain[-1]
        if current.issuer == current.subject:
            break
        issuer = None
        for candidate in remaining:
            if candidate.subject != current.issuer:
                continue
            try:
                current.verify_directly_issued_by(candidate)
            except (ValueError, TypeError, InvalidSignature):
                continue
            issuer = candidate
            break
        if issuer is None:
            break
        chain.append(issuer)
        remaining.remove(issuer)
    return chain


def _looks_like_pfx(data: bytes) -> bool:
    """A cheap DER check: SEQUENCE spanning the data, starting with INTEGER 3 (PFX version)."""
    if len(data) < 8 or data[0] != 0x30:
        return False
    first = data[1]
    if first < 0x80:
        length, offset = first, 2
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or len(data) < 2 + count:
            return False
        length, offset = int.from_bytes(data[2 : 2 + count], "big"), 2 + count
    if offset + length != len(data):
        return False
    return data[offset : offset + 3] == b"\x02\x01\x03"


@dataclass(frozen=True)
class ServerIdentity:
    """What :meth:`TLSIdentity.server_identity` found: the identity, and ``replaced``, a
    sentence when an unreadable anonymous identity had to be replaced by a new one."""

    identity: TLSIdentity
    replaced: str | None = None
