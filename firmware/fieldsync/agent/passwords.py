"""Salted password hashes for the ``[users]`` table, in the listener's format.

A hash reads ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>`` — the format of
:func:`fieldsync.listener.auth.hash_password`, also used by ``fieldsync run --users`` files —
so one hash works everywhere. This module only recognises and explains the format, without
hashing, so a configuration can be checked quickly and a plaintext password is never accepted;
hashing and verification are the listener's.
"""

from __future__ import annotations

import base64
import binascii

MIN_SALT_BYTES = 8
MIN_HASH_BYTES = 16
MAX_SCRYPT_N = 1 << 20
_HOW = "make one with: fieldsync agent --hash-password"


class PasswordHashError(ValueError):
    """A string that is not a usable salted password hash."""


def hash_password(password: str) -> str:
    """A new salted scrypt hash of ``password`` (refuses an empty password)."""
    if not password:
        raise PasswordHashError("the password is empty")
    from fieldsync.listener.auth import hash_password as listener_hash_password

    return listener_hash_password(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether ``password`` matches ``password_hash`` (constant-time comparison)."""
    check_password_hash(password_hash)
    from fieldsync.listener.auth import verify_password as listener_verify_password

    return listener_verify_password(password_hash, password)


def describe_password_hash_problem(text: str) -> str | None:
    """None when ``text`` is a usable hash, else a sentence saying what is wrong with it."""
    try:
        check_password_hash(text)
    except PasswordHashError as exc:
        return str(exc)
    return None


def check_password_hash(text: str) -> None:
    """Raise :class:`PasswordHashError` unless ``text`` is a well-formed salted scrypt hash."""
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
    if not (2 <= n <= MAX_SCRYPT_N and n & (n - 1) == 0):
        raise PasswordHashError(f"has scrypt n={n}; it must be a power of two up to 2^20")
    if not (1 <= r <= 32 and 1 <= p <= 16):
        raise PasswordHashError(f"has scrypt r={r}, p={p}; r must be 1-32 and p 1-16")
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


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise PasswordHashError(f"has a {what} that is not base64") from None
