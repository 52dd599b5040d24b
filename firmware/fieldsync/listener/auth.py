"""Listener authenticators, as in Couchbase Lite: HTTP Basic passwords and TLS client certificates.

* :class:`ListenerPasswordAuthenticator` — a ``(username, password) -> bool`` callback, or stored
  scrypt hashes (:func:`hash_password`, :meth:`ListenerPasswordAuthenticator.from_users`,
  :func:`load_users_file`). :func:`check_basic_auth` turns an ``Authorization`` header into an
  :class:`AuthResult` and never raises.
* :class:`ListenerCertificateAuthenticator` — the client's certificate chain must lead to one of
  the given root certificates (the OS trust store is never used), or a callback decides. The TLS
  side is set up by :func:`fieldsync.tls.context.configure_client_auth`; after the handshake the
  listener passes :func:`fieldsync.tls.context.peer_certificate_chain` to
  :meth:`ListenerCertificateAuthenticator.authenticate`.

:func:`authenticate_request` does the right check for whichever authenticator is configured.
Password hashing is deliberately slow (tens of milliseconds): call it off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

__all__ = [
    "BASIC_CHALLENGE",
    "AuthResult",
    "ListenerCertificateAuthenticator",
    "ListenerPasswordAuthenticator",
    "authenticate_request",
    "check_basic_auth",
    "hash_password",
    "load_users_file",
    "verify_password",
]

log = logging.getLogger(__name__)

#: The ``WWW-Authenticate`` value of a 401 answer (what Couchbase Lite's own listener sends).
BASIC_CHALLENGE = 'Basic charset="UTF-8"'

_SCRYPT_N = 1 << 14
_SCRYPT_R = 8
_SCRYPT_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32
_MAX_SCRYPT_N = 1 << 20
_MAX_REMEMBERED_INTERMEDIATES = 64


@dataclass(frozen=True)
class AuthResult:
    """The outcome of one authentication: ``ok``, who (``username``), and why not (``reason``)."""

    ok: bool
    username: str | None = None
    reason: str = ""

    @classmethod
    def allowed(cls, username: str | None) -> AuthResult:
        return cls(True, username, "")

    @classmethod
    def denied(cls, reason: str, username: str | None = None) -> AuthResult:
        return cls(False, username, reason)


# -- passwords ---------------------------------------------------------------------------------


def hash_password(
    password: str, *, n: int = _SCRYPT_N, r: int = _SCRYPT_R, p: int = _SCRYPT_P
) -> str:
    """A salted scrypt hash of ``password``: ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>``."""
    if not isinstance(password, str):
        raise TypeError("password must be a str")
    _check_scrypt_parameters(n, r, p)
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(password, salt, n, r, p, _HASH_BYTES)
    return "$".join(["scrypt", str(n), str(r), str(p), _b64(salt), _b64(digest)])


def verify_password(stored: str, password: str) -> bool:
    """True if ``password`` matches the :func:`hash_password` string ``stored``.

    The comparison is constant-time. A malformed ``stored`` raises ValueError.
    """
    n, r, p, salt, expected = _parse_hash(stored)
    actual = _scrypt(password, salt, n, r, p, len(expected))
    return hmac.compare_digest(actual, expected)


def load_users_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read ``name:hash`` lines (blank lines and ``#`` comments ignored) into a dict.

    Raises ValueError naming the file and line for a malformed line, a bad hash or a duplicate.
    """
    users: dict[str, str] = {}
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{source}: not UTF-8 text") from None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, stored = line.partition(":")
        name, stored = name.strip(), stored.strip()
        if not sep or not name or not stored:
            raise ValueError(f"{source}:{number}: expected 'name:hash'")
        if name in users:
            raise ValueError(f"{source}:{number}: user {name!r} is listed twice")
        try:
            _parse_hash(stored)
        except ValueError as exc:
            raise ValueError(f"{source}:{number}: user {name!r}: {exc}") from None
        users[name] = stored
    return users


class ListenerPasswordAuthenticator:
    """Couchbase Lite's ``ListenerPasswordAuthenticator``: HTTP Basic checked by a callback.

    The callback gets ``(username, password)`` and returns True to let the client in; anything
    else (including an exception, logged) refuses it.
    """

    def __init__(self, callback: Callable[[str, str], bool]) -> None:
        if not callable(callback):
            raise TypeError("ListenerPasswordAuthenticator needs a callable (username, password)")
        self._callback = callback

    @classmethod
    def from_users(cls, users: Mapping[str, str]) -> ListenerPasswordAuthenticator:
        """Check against stored :func:`hash_password` hashes, ``{username: hash}``.

        Hashes are checked up front (ValueError names the user). Unknown users cost the same
        hashing work as known ones, so timing does not reveal which names exist.
        """
        table = dict(users)
        for name, stored in table.items():
            try:
                _parse_hash(stored)
            except ValueError as exc:
                raise ValueError(f"user {name!r}: {exc}") from None
        decoy = hash_password(secrets.token_urlsafe(16))

        def check(username: str, password: str) -> bool:
            stored = table.get(username)
            if stored is None:
                verify_password(decoy, password)
                return False
            return verify_password(stored, password)

        return cls(check)

    @classmethod
    def from_users_file(cls, path: str | os.PathLike[str]) -> ListenerPasswordAuthenticator:
        """:meth:`from_users` over :func:`load_users_file`."""
        return cls.from_users(load_users_file(path))

    def authenticate(self, username: str, password: str) -> AuthResult:
        """Run the callback; never raises."""
        try:
            verdict = self._callback(username, password)
        except Exception:
            log.exception("password authenticator callback failed for user %r", username)
            return AuthResult.denied("authenticator error", username)
        if not isinstance(verdict, bool):
            log.error(
                "password authenticator callback returned %s, not a bool; refusing",
                type(verdict).__name__,
            )
            return AuthResult.denied("authenticator error", username)
        if verdict:
            return AuthResult.allowed(username)
        return AuthResult.denied("incorrect user name or password", username)

    def validate(self, disable_tls: bool) -> None:
        """Nothing to check (Basic auth works without TLS, though in clear text)."""


def check_basic_auth(
    authenticator: ListenerPasswordAuthenticator | None, authorization_header: str | None
) -> AuthResult:
    """Check an HTTP ``Authorization: Basic`` header; never raises.

    ``authenticator`` None means no authentication is required (always ok).
    """
    if authenticator is None:
        return AuthResult.allowed(None)
    if not authorization_header or not authorization_header.strip():
        return AuthResult.denied("no credentials (Authorization header missing)")
    scheme, _, token = authorization_header.strip().partition(" ")
    if scheme.lower() != "basic":
        return AuthResult.denied(f"unsupported authorization scheme {scheme[:20]!r}")
    token = token.strip()
    if not token:
        return AuthResult.denied("malformed Basic credentials (empty)")
    try:
        decoded = base64.b64decode(token.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return AuthResult.denied("malformed Basic credentials (bad base64)")
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        return AuthResult.denied("malformed Basic credentials (not UTF-8)")
    username, sep, password = text.partition(":")
    if not sep:
        return AuthResult.denied("malformed Basic credentials (no ':' after the user name)")
    if not username:
        return AuthResult.denied("malformed Basic credentials (empty user name)")
    return authenticator.authenticate(username, password)


# -- client certificates -----------------------------------------------------------------------


CertificateCallback = Callable[[list[x509.Certificate]], bool]


class ListenerCertificateAuthenticator:
    """Couchbase Lite's ``ListenerCertificateAuthenticator``: TLS client-certificate auth.

    ``ListenerCertificateAuthenticator(root_certs)``: the client's chain must lead to one of
    these certificates (a client certificate equal to one of them is accepted as is); the OS
    trust store is ignored; validity periods, CA basic constraints/key usage and the leaf's
    extended key usage (clientAuth when present) are checked.

    ``ListenerCertificateAuthenticator(callback)``: the callback gets the client's chain (leaf
    first) and takes full responsibility for accepting it (as in Couchbase Lite, nothing else is
    checked except that the client holds the leaf's private key, which TLS proves).
    ``tls_roots`` is only a fallback for Pythons where the TLS layer cannot be told to accept any
    client certificate (see ``fieldsync.tls.context.configure_client_auth``).
    """

    def __init__(
        self,
        root_certs_or_callback: Sequence[x509.Certificate] | CertificateCallback,
        /,
        *,
        tls_roots: Sequence[x509.Certificate] | None = None,
    ) -> None:
        self._callback: CertificateCallback | None = None
        self._roots: tuple[x509.Certificate, ...] = ()
        self._tls_roots: tuple[x509.Certificate, ...] = tuple(tls_roots or ())
        if callable(root_certs_or_callback):
            self._callback = root_certs_or_callback
        else:
            roots = tuple(root_certs_or_callback)
            if not roots:
                raise ValueError("ListenerCertificateAuthenticator needs at least one root cert")
            if not all(isinstance(c, x509.Certificate) for c in roots):
                raise TypeError("root certificates must be cryptography x509.Certificate objects")
            self._roots = roots
            self._store = Store(list(roots))
            self._root_ders = {c.public_bytes(serialization.Encoding.DER) for c in roots}
        # Intermediate CAs seen in verified chains: a resumed TLS session shows only the
        # client's leaf, and these let its chain be rebuilt (they are not trusted by themselves).
        self._intermediates: dict[bytes, x509.Certificate] = {}

    @property
    def root_certs(self) -> list[x509.Certificate]:
        """The trusted roots (empty in callback mode)."""
        return list(self._roots)

    @property
    def callback(self) -> CertificateCallback | None:
        """The deciding callback (None in root-certificate mode)."""
        return self._callback

    @property
    def tls_roots(self) -> list[x509.Certificate]:
        """Certificates the TLS layer verifies client chains against: the roots, or the
        fallback ``tls_roots`` in callback mode."""
        return list(self._roots or self._tls_roots)

    def validate(self, disable_tls: bool) -> None:
        """Raise ValueError if the listener has TLS disabled (client certificates need TLS)."""
        if disable_tls:
            raise ValueError("client-certificate authentication needs TLS (disable_tls is set)")

    def authenticate(
        self, chain: Sequence[x509.Certificate], *, now: dt.datetime | None = None
    ) -> AuthResult:
        """Decide on the client's certificate chain (leaf first); never raises."""
        if not chain:
            return AuthResult.denied("the client presented no certificate")
        leaf = chain[0]
        username = _common_name(leaf)
        if self._callback is not None:
            try:
                verdict = self._callback(list(chain))
            except Exception:
                log.exception("certificate authenticator callback failed for %s", username)
                return AuthResult.denied("authenticator error", username)
            if not isinstance(verdict, bool):
                log.error(
                    "certificate authenticator callback returned %s, not a bool; refusing",
                    type(verdict).__name__,
                )
                return AuthResult.denied("authenticator error", username)
            if verdict:
                return AuthResult.allowed(username)
            return AuthResult.denied("client certificate rejected", username)

        moment = now or dt.datetime.now(dt.UTC)
        if leaf.public_bytes(serialization.Encoding.DER) in self._root_ders:
            if not leaf.not_valid_before_utc <= moment <= leaf.not_valid_after_utc:
                return AuthResult.denied("client certificate is expired or not yet valid", username)
            return AuthResult.allowed(username)
        verifier = (
            PolicyBuilder()
            .store(self._store)
            .time(moment)
            .extension_policies(ca_policy=_CA_POLICY, ee_policy=_CLIENT_POLICY)
            .build_client_verifier()
        )
        presented = list(chain[1:])
        candidates = presented + [c for c in self._intermediates.values() if c not in presented]
        try:
            verified = verifier.verify(leaf, candidates)
        except VerificationError as exc:
            return AuthResult.denied(f"client certificate not trusted: {exc}", username)
        except Exception as exc:  # a malformed certificate the verifier chokes on
            return AuthResult.denied(f"client certificate unusable: {exc}", username)
        for ca in verified.chain[1:-1]:
            if len(self._intermediates) < _MAX_REMEMBERED_INTERMEDIATES:
                self._intermediates.setdefault(ca.fingerprint(hashes.SHA256()), ca)
        return AuthResult.allowed(username)


def authenticate_request(
    authenticator: ListenerPasswordAuthenticator | ListenerCertificateAuthenticator | None,
    *,
    authorization_header: str | None = None,
    peer_chain: Sequence[x509.Certificate] | None = None,
) -> AuthResult:
    """Apply whichever authenticator is configured to one incoming connection; never raises."""
    if authenticator is None:
        return AuthResult.allowed(None)
    if isinstance(authenticator, ListenerCertificateAuthenticator):
        return authenticator.authenticate(list(peer_chain or ()))
    if isinstance(authenticator, ListenerPasswordAuthenticator):
        return check_basic_auth(authenticator, authorization_header)
    return AuthResult.denied(f"unsupported authenticator {type(authenticator).__name__}")


# -- internals ---------------------------------------------------------------------------------


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if names and isinstance(names[0].value, str):
        return names[0].value
    return cert.subject.rfc4514_string()


def _require_ca(_policy: object, _cert: x509.Certificate, value: x509.BasicConstraints) -> None:
    if not value.ca:
        raise ValueError("issuer is not a CA (basicConstraints CA:FALSE)")


def _ca_key_usage(_policy: object, _cert: x509.Certificate, value: x509.KeyUsage | None) -> None:
    if value is not None and not value.key_cert_sign:
        raise ValueError("issuer's key usage does not allow signing certificates")


def _client_eku(
    _policy: object, _cert: x509.Certificate, value: x509.ExtendedKeyUsage | None
) -> None:
    if value is None:
        return
    if ExtendedKeyUsageOID.CLIENT_AUTH not in value and (
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in value
    ):
        raise ValueError("extended key usage does not allow TLS client authentication")


def _client_key_usage(
    _policy: object, _cert: x509.Certificate, value: x509.KeyUsage | None
) -> None:
    if value is not None and not (value.digital_signature or value.key_agreement):
        raise ValueError("key usage does not allow digital signatures")


# Roughly what OpenSSL checks for an SSL client (so the TLS layer and this agree), rather than
# the Web PKI profile, which demands subject alternative names that client certificates
# (Couchbase Lite's own included) do not carry.
_CA_POLICY = (
    ExtensionPolicy.permit_all()
    .require_present(x509.BasicConstraints, Criticality.AGNOSTIC, _require_ca)
    .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _ca_key_usage)
)
_CLIENT_POLICY = (
    ExtensionPolicy.permit_all()
    .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _client_eku)
    .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, _client_key_usage)
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _check_scrypt_parameters(n: int, r: int, p: int) -> None:
    if not (2 <= n <= _MAX_SCRYPT_N and n & (n - 1) == 0):
        raise ValueError(f"scrypt n must be a power of two between 2 and {_MAX_SCRYPT_N}")
    if not 1 <= r <= 32 or not 1 <= p <= 16:
        raise ValueError("scrypt r must be 1-32 and p 1-16")


def _parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    if not isinstance(stored, str):
        raise ValueError("a password hash must be a string")
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not a password hash (expected scrypt$n$r$p$salt$hash)")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
    except (ValueError, binascii.Error):
        raise ValueError("malformed password hash") from None
    _check_scrypt_parameters(n, r, p)
    if len(salt) < 8 or len(digest) < 16:
        raise ValueError("password hash salt or digest too short")
    return n, r, p, salt, digest


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=128 * r * (n + p + 2) + (1 << 20),
        dklen=length,
    )
