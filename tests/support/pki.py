"""A test PKI: certificate authorities and client/server identities, built with cryptography.

One factory for every test that needs certificates (TLS handshakes, client-certificate
authentication, the agent's ``client_cert_roots``, interop). Keys are EC P-256 unless asked
for RSA (Couchbase Lite 3.2 clients negotiate ECDHE-RSA with an RSA server key).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fieldsync.tls.identity import TLSIdentity
from fieldsync.tls.keystore import PrivateKey

__all__ = ["CA", "NOW", "TestPKI", "issue", "make_ca", "name", "write_pem"]

NOW = dt.datetime.now(dt.UTC)


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key(kind: str) -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(65537, 2048)
    return ec.generate_private_key(ec.SECP256R1())


@dataclass
class CA:
    """A certificate authority: its certificate, its key, and the CAs above it (root excluded)."""

    cert: x509.Certificate
    key: PrivateKey
    chain: list[x509.Certificate] = field(default_factory=list)

    @property
    def is_root(self) -> bool:
        return self.cert.issuer == self.cert.subject

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def make_ca(
    cn: str,
    parent: CA | None = None,
    *,
    key_type: str = "ec",
    days: int = 30,
    key_usage: bool = True,
) -> CA:
    """A root CA, or an intermediate signed by ``parent``."""
    key = _key(key_type)
    signer = parent.key if parent else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(parent.cert.subject if parent else name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    if key_usage:
        builder = (
            builder.add_extension(
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
        )
    cert = builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]
    above = [] if parent is None or parent.is_root else [parent.cert, *parent.chain]
    return CA(cert, key, above)


def issue(
    ca: CA,
    cn: str,
    *,
    eku: list[x509.ObjectIdentifier] | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    key_type: str = "ec",
    expired: bool = False,
    with_chain: bool = True,
) -> TLSIdentity:
    """An identity signed by ``ca`` (clientAuth by default); its chain carries ``ca`` and the
    CAs above it unless ``ca`` is a root (or ``with_chain`` is false)."""
    key = _key(key_type)
    if expired:
        not_before = not_before or NOW - dt.timedelta(days=10)
        not_after = not_after or NOW - dt.timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(cn))
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
        .sign(ca.key, hashes.SHA256())  # type: ignore[arg-type]
    )
    chain = [cert]
    if with_chain and not ca.is_root:
        chain += [ca.cert, *ca.chain]
    return TLSIdentity(chain, key)


def write_pem(path: Path, *cas: CA) -> Path:
    """Write the CA certificates to ``path`` (PEM), e.g. for ``client_cert_roots``."""
    path.write_bytes(b"".join(ca.pem() for ca in cas))
    return path


class TestPKI:
    """root → intermediate, plus an unrelated root."""

    __test__ = False

    def __init__(self) -> None:
        self.root = make_ca("Test Root")
        self.intermediate = make_ca("Test Intermediate", self.root)
        self.other_root = make_ca("Other Root")
