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
import logging
import os
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard

from fieldsync.listener.passwords import hash_password, parse_password_hash, verify_password
from fieldsync.tls.authresult import AuthResult

if TYPE_CHECKING:
    from cryptography import x509

    from fieldsync.tls.client_auth import CertificateCallback, ListenerCertificateAuthenticator

__all__ = [
    "BASIC_CHALLENGE",
    "AuthResult",
    "CertificateCallback",
    "ListenerCertificateAuthenticator",
    "ListenerPasswordAuthenticator",
    "authenticate_request",
    "check_basic_auth",
    "hash_password",
    "is_certificate_authenticator",
    "load_users_file",
    "verify_password",
]

log = logging.getLogger(__name__)

#: The ``WWW-Authenticate`` value of a 401 answer (what Couchbase Lite's own listener sends).
BASIC_CHALLENGE = 'Basic charset="UTF-8"'

#: What this module offers from ``fieldsync.tls.client_auth``, loaded when first asked for.
_CERTIFICATE_NAMES = frozenset({"CertificateCallback", "ListenerCertificateAuthenticator"})


def __getattr__(name: str) -> object:
    # The certificate authenticator needs ``cryptography`` (~9 MB of memory): a listener with
    # passwords or no authentication never loads it (PEP 562).
    if name in _CERTIFICATE_NAMES:
        from fieldsync.tls import client_auth

        return getattr(client_auth, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_certificate_authenticator(
    authenticator: object,
) -> TypeGuard[ListenerCertificateAuthenticator]:
    """Whether ``authenticator`` checks client certificates (and so needs TLS).

    Asks without loading ``cryptography``: until its module is loaded, no such authenticator
    can exist."""
    client_auth = sys.modules.get("fieldsync.tls.client_auth")
    return client_auth is not None and isinstance(
        authenticator, client_auth.ListenerCertificateAuthenticator
    )


# -- passwords ---------------------------------------------------------------------------------


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
            parse_password_hash(stored)
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
                parse_password_hash(stored)
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
        return AuthResult.from_callback(
            lambda: self._callback(username, password),
            username,
            kind="password",
            refusal="incorrect user name or password",
        )

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


def authenticate_request(
    authenticator: ListenerPasswordAuthenticator | ListenerCertificateAuthenticator | None,
    *,
    authorization_header: str | None = None,
    peer_chain: Sequence[x509.Certificate] | None = None,
) -> AuthResult:
    """Apply whichever authenticator is configured to one incoming connection; never raises."""
    if authenticator is None:
        return AuthResult.allowed(None)
    if is_certificate_authenticator(authenticator):
        return authenticator.authenticate(list(peer_chain or ()))
    if isinstance(authenticator, ListenerPasswordAuthenticator):
        return check_basic_auth(authenticator, authorization_header)
    return AuthResult.denied(f"unsupported authenticator {type(authenticator).__name__}")


# -- internals ---------------------------------------------------------------------------------
