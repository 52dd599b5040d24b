"""The salted password hash format, its parser and its checks: the one home for all of them.

A hash reads ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>``. ``fieldsync run --user/--users``,
the agent's ``[users]`` table and ``ListenerPasswordAuthenticator.from_users`` all take it.
Hashing is deliberately slow (tens of milliseconds): call it off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from fieldsync.errors import FieldsyncError

__all__ = [
    "MAX_SCRYPT_N",
    "PasswordHashError",
    "check_password_hash",
    "describe_password_hash_problem",
    "hash_password",
    "parse_password_hash",
    "verify_password",
]

SCRYPT_N = 1 << 14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
MAX_SCRYPT_N = 1 << 20
MIN_SALT_BYTES = 8
MIN_HASH_BYTES = 16
_HOW = "make one with: fieldsync agent --hash-password"


class PasswordHashError(FieldsyncError, ValueError):
    """A string that is not a usable salted password hash; the message says what is wrong."""


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """A salted scrypt hash of ``password``: ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>``."""
    if not isinstance(password, str):
        raise TypeError("password must be a str")
    _check_parameters(n, r, p)
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, n, r, p, HASH_BYTES)
    return "$".join(["scrypt", str(n), str(r), str(p), _b64(salt), _b64(digest)])


def verify_password(stored: str, password: str) -> bool:
    """True if ``password`` matches the hash ``stored`` (constant-time comparison).

    A malformed ``stored`` raises :class:`PasswordHashError` (a ``ValueError``).
    """
    n, r, p, salt, expected = parse_password_hash(stored)
    actual = _scrypt(password, salt, n, r, p, len(expected))
    return hmac.compare_digest(actual, expected)


def parse_password_hash(text: str) -> tuple[int, int, int, bytes, bytes]:
    """``(n, r, p, salt, digest)`` of a well-formed hash, else :class:`PasswordHashError`
    saying what is wrong (a plaintext password is recognised and refused)."""
    if not isinstance(text, str):
        raise PasswordHashError("a password hash must be a string")
    parts = text.split("$")
    if len(parts) == 1 or not text.startswith("scrypt$"):
        if text.startswith("$") or (len(parts) > 1 and parts[0].isalnum()):
            raise PasswordHashError(
                f"is not a fieldsync password hash (scrypt$n$r$p$salt$hash); {_HOW}"
            )
        raise PasswordHashError(
            f"looks like a plaintext password; store a salted hash instead ({_HOW})"
        )
    if len(parts) != 6:
        raise PasswordHashError(f"is not a complete hash (scrypt$n$r$p$salt$hash); {_HOW}")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
    except ValueError:
        raise PasswordHashError("has scrypt parameters n, r, p that are not numbers") from None
    _check_parameters(n, r, p)
    salt = _b64decode(parts[4], "salt")
    digest = _b64decode(parts[5], "hash")
    if len(salt) < MIN_SALT_BYTES:
        raise PasswordHashError(
            f"has a salt of {len(salt)} bytes; at least {MIN_SALT_BYTES} are needed"
        )
    if len(digest) < MIN_HASH_BYTES:
        raise PasswordHashError(
            f"has a hash of {len(digest)} bytes; at least {MIN_HASH_BYTES} are needed"
        )
    return n, r, p, salt, digest


def check_password_hash(text: str) -> None:
    """Raise :class:`PasswordHashError` unless ``text`` is a well-formed salted scrypt hash."""
    parse_password_hash(text)


def describe_password_hash_problem(text: str) -> str | None:
    """None when ``text`` is a usable hash, else a sentence saying what is wrong with it."""
    try:
        parse_password_hash(text)
    except PasswordHashError as exc:
        return str(exc)
    return None


def _check_parameters(n: int, r: int, p: int) -> None:
    if not (2 <= n <= MAX_SCRYPT_N and n & (n - 1) == 0):
        raise PasswordHashError(f"has scrypt n={n}; it must be a power of two up to 2^20")
    if not (1 <= r <= 32 and 1 <= p <= 16):
        raise PasswordHashError(f"has scrypt r={r}, p={p}; r must be 1-32 and p 1-16")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise PasswordHashError(f"has a {what} that is not base64") from None


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
