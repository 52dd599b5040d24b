"""TLS client-certificate authentication: the X.509 chain policy a listener applies.

:class:`ListenerCertificateAuthenticator` (Couchbase Lite's name) decides on a client's chain:
it must lead to one of the given root certificates (the OS trust store is never used), or a
callback decides. The TLS side is set up by :func:`fieldsync.tls.context.configure_client_auth`;
after the handshake the listener passes :func:`fieldsync.tls.context.peer_certificate_chain`
to :meth:`ListenerCertificateAuthenticator.authenticate`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

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

from fieldsync.tls.authresult import AuthResult

__all__ = ["AuthResult", "CertificateCallback", "ListenerCertificateAuthenticator"]

_MAX_REMEMBERED_INTERMEDIATES = 64


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
            callback = self._callback
            return AuthResult.from_callback(
                lambda: callback(list(chain)),
                username,
                kind="certificate",
                refusal="client certificate rejected",
            )

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


# -- the chain policy --------------------------------------------------------------------------


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
