"""``ssl.SSLContext`` builders for the listener (server) and for peers that connect to it.

Server contexts offer TLS 1.2 and 1.3. Couchbase Lite 3.2 clients speak TLS 1.2 only and
negotiate ECDHE-RSA-AES256-GCM-SHA384 against an RSA certificate (ECDHE-ECDSA-* against an EC
one); the TLS 1.2 cipher list below is ECDHE with AES-GCM or ChaCha20-Poly1305 only.

Client-certificate authentication with the standard ``ssl`` module: a server context can only
request a client certificate and verify it against the CA certificates loaded into it; there is
no verify callback in the Python API. So:

* root-certificate mode (:class:`ListenerCertificateAuthenticator` with ``root_certs``): the
  roots are loaded as the context's only CAs and a certificate is required; OpenSSL checks the
  chain during the handshake and the listener checks it again with
  ``ListenerCertificateAuthenticator.authenticate`` (cryptography's verifier).
* callback mode: OpenSSL must accept any client certificate and leave the decision to the
  callback. CPython (3.11-3.14) has no API for that, so :func:`configure_client_auth` installs
  an accept-any OpenSSL verify callback on the context through ``ctypes``
  (``SSL_CTX_set_verify`` from the libssl that ``_ssl`` is linked against). The handshake still
  proves the client holds the leaf's private key (CertificateVerify is checked regardless). The
  hook checks itself before trusting the context pointer it finds (verify-mode, options and
  session-cache round-trips); where it cannot be installed it raises
  :class:`ClientAuthUnsupported`, unless the authenticator carries ``tls_roots``, in which case
  TLS verifies against those and the callback decides afterwards. Session resumption is turned
  off in this mode (tickets and the server session cache), because a resumed session shows only
  the client's leaf certificate and the callback must always see the whole chain.

In root-certificate mode resumption stays on: the authenticator remembers the intermediate CAs
of chains it has verified and rebuilds a resumed session's chain from the leaf.

After the handshake, :func:`peer_certificate_chain` gives the client's chain, leaf first (via
``get_unverified_chain``: public on Python 3.13+, private ``_sslobj`` method on 3.10-3.12; with
neither, the leaf only).
"""

from __future__ import annotations

import _ssl
import contextlib
import ctypes
import os
import ssl
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fieldsync.errors import FieldsyncError
from fieldsync.tls.client_auth import ListenerCertificateAuthenticator

__all__ = [
    "TLS12_CIPHERS",
    "ClientAuthUnsupported",
    "accept_any_client_certificate",
    "check_pinned_certificate",
    "client_ssl_context",
    "configure_client_auth",
    "peer_certificate_chain",
    "server_ssl_context",
]

#: TLS 1.2 cipher suites (OpenSSL names), strongest first. TLS 1.3 suites are OpenSSL's defaults.
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
    ]
)


class Credentials(Protocol):
    """A certificate chain with its private key (a ``TLSIdentity``), as PEM."""

    def certificate_pem(self, *, chain: bool = True) -> str: ...

    def private_key_pem(self, password: bytes | None = None) -> bytes: ...


class ClientAuthUnsupported(FieldsyncError, RuntimeError):
    """This Python's ``ssl`` cannot be made to accept any client certificate."""


def server_ssl_context(
    identity: Credentials, *, client_auth: ListenerCertificateAuthenticator | None = None
) -> ssl.SSLContext:
    """A server context presenting ``identity`` (its whole chain), TLS 1.2 and 1.3.

    With ``client_auth``, client certificates are requested (see :func:`configure_client_auth`).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= (
        ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    )
    _load_identity(context, identity)
    if client_auth is not None:
        configure_client_auth(context, client_auth)
    return context


def configure_client_auth(
    ssl_context: ssl.SSLContext, authenticator: ListenerCertificateAuthenticator
) -> None:
    """Make a server context ask for a client certificate suited to ``authenticator``.

    Where OpenSSL can be hooked (CPython), the TLS layer asks for a certificate and accepts
    whatever comes, and the listener decides with ``authenticator.authenticate(chain)`` on the
    HTTP request: a refused or missing certificate gets a clear HTTP 401, which Couchbase Lite
    reports as an authentication failure instead of retrying a reset connection forever.
    Elsewhere the authenticator's ``tls_roots`` are the context's only CAs (CERT_REQUIRED),
    and ClientAuthUnsupported is raised in callback mode without them.
    """
    if _accept_any_available():
        accept_any_client_certificate(ssl_context, require=False)
        return
    if not authenticator.tls_roots:
        raise ClientAuthUnsupported(
            "cannot accept arbitrary client certificates in this Python; give tls_roots"
        )
    ssl_context.load_verify_locations(cadata=_pem(authenticator.tls_roots))
    ssl_context.verify_mode = ssl.CERT_REQUIRED


def accept_any_client_certificate(ssl_context: ssl.SSLContext, *, require: bool = True) -> None:
    """Ask for a client certificate (``require``: insist on one) but let OpenSSL accept any
    chain: the caller decides.

    Session resumption is turned off too: a resumed session carries the client's leaf
    certificate only, and the caller must see the whole chain every time.
    Raises :class:`ClientAuthUnsupported` when the OpenSSL hook cannot be installed safely.
    """
    hook = _AcceptAnyHook.get()
    hook.install(ssl_context, require=require)
    ssl_context.options |= ssl.OP_NO_TICKET
    ssl_context.num_tickets = 0
    hook.disable_session_cache(ssl_context)


def peer_certificate_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> list[x509.Certificate]:
    """The certificate chain the peer sent, leaf first (empty when it sent none)."""
    leaf_der = ssl_object.getpeercert(binary_form=True)
    if not leaf_der:
        return []
    getter = getattr(ssl_object, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    ders: list[bytes] = []
    if getter is not None:
        for item in getter() or ():
            ders.append(item if isinstance(item, bytes) else item.public_bytes(_der_encoding()))
    if not ders or ders[0] != leaf_der:
        # OpenSSL leaves the peer's own certificate out of a server's view of the chain.
        ders.insert(0, leaf_der)
    return [x509.load_der_x509_certificate(der) for der in ders]


def client_ssl_context(
    *,
    pinned_certificate: x509.Certificate | None = None,
    root_certs: Sequence[x509.Certificate] | None = None,
    identity: Credentials | None = None,
) -> ssl.SSLContext:
    """A client context for connecting to a listener, as a Couchbase Lite replicator would.

    ``pinned_certificate``: trust exactly that server certificate (no host name check); also call
    :func:`check_pinned_certificate` after the handshake. ``root_certs``: trust chains to these
    (host name not checked either: listeners are reached by IP). ``identity``: present this
    client certificate.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    if pinned_certificate is not None:
        context.load_verify_locations(cadata=_pem([pinned_certificate]))
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    elif root_certs:
        context.load_verify_locations(cadata=_pem(root_certs))
    else:
        raise ValueError("client_ssl_context needs pinned_certificate or root_certs")
    context.verify_mode = ssl.CERT_REQUIRED
    if identity is not None:
        _load_identity(context, identity)
    return context


def check_pinned_certificate(
    ssl_object: ssl.SSLObject | ssl.SSLSocket, pinned_certificate: x509.Certificate
) -> None:
    """Raise ``ssl.SSLCertVerificationError`` unless the peer's leaf is exactly the pinned one."""
    der = ssl_object.getpeercert(binary_form=True)
    if der != pinned_certificate.public_bytes(serialization.Encoding.DER):
        raise ssl.SSLCertVerificationError("the server certificate is not the pinned certificate")


# -- internals ---------------------------------------------------------------------------------


def _pem(certs: Sequence[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs)


def _der_encoding() -> int:
    return int(_ssl.ENCODING_DER)


def _load_identity(context: ssl.SSLContext, identity: Credentials) -> None:
    """``load_cert_chain`` from memory: Linux memfds, else a private temporary directory."""
    cert_pem = identity.certificate_pem().encode("ascii")
    key_pem = identity.private_key_pem()
    with _secret_paths(cert_pem, key_pem) as (cert_path, key_path):
        context.load_cert_chain(cert_path, key_path)


@contextlib.contextmanager
def _secret_paths(*contents: bytes) -> Iterator[list[str]]:
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fds: list[int] = []
        try:
            for data in contents:
                fd = os.memfd_create("fieldsync-tls", os.MFD_CLOEXEC)
                fds.append(fd)
                os.write(fd, data)
            yield [f"/proc/self/fd/{fd}" for fd in fds]
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="fieldsync-tls-") as directory:
        paths = []
        for index, data in enumerate(contents):
            path = Path(directory) / f"{index}.pem"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            paths.append(str(path))
        yield paths


def _accept_any_available() -> bool:
    try:
        _AcceptAnyHook.get()
    except ClientAuthUnsupported:
        return False
    return True


_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
_SSL_VERIFY_PEER = 0x01
_SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 0x02
_SSL_CTRL_SET_SESS_CACHE_MODE = 44
_SSL_CTRL_GET_SESS_CACHE_MODE = 45
_SSL_SESS_CACHE_OFF = 0


@_VERIFY_CALLBACK
def _accept_any_verify_callback(_preverify_ok: int, _store_context: Any) -> int:
    return 1


class _AcceptAnyHook:
    """Installs :func:`_accept_any_verify_callback` on an SSLContext's ``SSL_CTX``."""

    _instance: _AcceptAnyHook | None = None
    _failure: str | None = None

    @classmethod
    def get(cls) -> _AcceptAnyHook:
        if cls._instance is None and cls._failure is None:
            try:
                cls._instance = cls()
            except (OSError, AttributeError, ImportError) as exc:
                cls._failure = str(exc)
        if cls._instance is None:
            raise ClientAuthUnsupported(
                f"cannot hook OpenSSL client verification in this Python: {cls._failure}"
            )
        return cls._instance

    def __init__(self) -> None:
        if sys.implementation.name != "cpython":
            raise ImportError("needs CPython's _ssl module")
        library = ctypes.CDLL(_ssl.__file__)  # symbols resolve through its libssl dependency
        self._set_verify = library.SSL_CTX_set_verify
        self._set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VERIFY_CALLBACK]
        self._set_verify.restype = None
        self._get_mode = library.SSL_CTX_get_verify_mode
        self._get_mode.argtypes = [ctypes.c_void_p]
        self._get_mode.restype = ctypes.c_int
        self._get_callback = library.SSL_CTX_get_verify_callback
        self._get_callback.argtypes = [ctypes.c_void_p]
        self._get_callback.restype = ctypes.c_void_p
        self._get_options = library.SSL_CTX_get_options
        self._get_options.argtypes = [ctypes.c_void_p]
        self._get_options.restype = ctypes.c_uint64
        self._ctrl = library.SSL_CTX_ctrl
        self._ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        self._ctrl.restype = ctypes.c_long
        self._callback_address = ctypes.cast(_accept_any_verify_callback, ctypes.c_void_p).value

    def install(self, context: ssl.SSLContext, *, require: bool = True) -> None:
        pointer = self._pointer(context)
        context.verify_mode = ssl.CERT_OPTIONAL
        optional_ok = self._get_mode(pointer) == _SSL_VERIFY_PEER
        context.verify_mode = ssl.CERT_REQUIRED
        required = _SSL_VERIFY_PEER | _SSL_VERIFY_FAIL_IF_NO_PEER_CERT
        if not optional_ok or self._get_mode(pointer) != required:
            raise ClientAuthUnsupported("OpenSSL context self-check failed (verify mode)")
        if not require:
            context.verify_mode = ssl.CERT_OPTIONAL
        mode = required if require else _SSL_VERIFY_PEER
        self._set_verify(pointer, mode, _accept_any_verify_callback)
        if self._get_callback(pointer) != self._callback_address:
            raise ClientAuthUnsupported("OpenSSL context self-check failed (callback)")

    def disable_session_cache(self, context: ssl.SSLContext) -> None:
        pointer = self._pointer(context)
        before = self._ctrl(pointer, _SSL_CTRL_GET_SESS_CACHE_MODE, 0, None)
        previous = self._ctrl(pointer, _SSL_CTRL_SET_SESS_CACHE_MODE, _SSL_SESS_CACHE_OFF, None)
        after = self._ctrl(pointer, _SSL_CTRL_GET_SESS_CACHE_MODE, 0, None)
        if previous != before or after != _SSL_SESS_CACHE_OFF:
            raise ClientAuthUnsupported("cannot turn off the OpenSSL session cache")

    def _pointer(self, context: ssl.SSLContext) -> int:
        """The ``SSL_CTX *`` of ``context``, checked against OpenSSL's view of its options."""
        if not isinstance(context, ssl.SSLContext):
            raise ClientAuthUnsupported("not an ssl.SSLContext")
        # PySSLContext starts with PyObject_HEAD followed by the SSL_CTX pointer.
        pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
        if not pointer:
            raise ClientAuthUnsupported("cannot locate the OpenSSL context")
        if self._get_options(pointer) != int(context.options):
            raise ClientAuthUnsupported("OpenSSL context self-check failed (options)")
        return pointer
