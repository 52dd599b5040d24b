"""Salted password hashes for the agent's users, in PHC string format.

The configuration stores only hashes such as
``$scrypt$ln=15,r=8,p=1$<salt>$<hash>`` or ``$pbkdf2-sha256$i=600000$<salt>$<hash>``
(salt and hash in unpadded standard base64). Both are computed with :mod:`hashlib`, so no extra
package is needed; :func:`hash_password` makes scrypt hashes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re

SCRYPT_LOG2_N = 15
SCRYPT_R = 8
SCRYPT_P = 1
PBKDF2_MIN_ITERATIONS = 10_000
_MIN_SALT_BYTES = 8
_MIN_HASH_BYTES = 16

_PHC = re.compile(
    r"^\$(?P<id>[a-z0-9-]+)\$(?P<params>[a-z0-9=,]+)\$(?P<salt>[A-Za-z0-9+/.]+)"
    r"\$(?P<hash>[A-Za-z0-9+/.]+)$"
)


class PasswordHashError(ValueError):
    """A string that is not a usable salted password hash."""


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A new salted scrypt hash of ``password`` in PHC format."""
    if not password:
        raise PasswordHashError("the password is empty")
    salt = salt if salt is not None else os.urandom(16)
    digest = _scrypt(password, salt, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P)
    params = f"ln={SCRYPT_LOG2_N},r={SCRYPT_R},p={SCRYPT_P}"
    return f"$scrypt${params}${_b64encode(salt)}${_b64encode(digest)}"


def verify_password(password_hash: str, password: str) -> bool:
    """Whether ``password`` matches ``password_hash`` (constant-time comparison)."""
    scheme, params, salt, expected = _parse(password_hash)
    if scheme == "scrypt":
        actual = _scrypt(password, salt, params["ln"], params["r"], params["p"], len(expected))
    else:
        actual = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), salt, params["i"], dklen=len(expected)
        )
    return hmac.compare_digest(actual, expected)


def describe_password_hash_problem(text: str) -> str | None:
    """None when ``text`` is a usable hash, else a sentence saying what is wrong with it."""
    if not text.startswith("$"):
        return (
            "looks like a plaintext password; store a salted hash instead "
            "(make one with: fieldsync agent --hash-password)"
        )
    try:
        _parse(text)
    except PasswordHashError as exc:
        return f"{exc} (make one with: fieldsync agent --hash-password)"
    return None


def _parse(text: str) -> tuple[str, dict[str, int], bytes, bytes]:
    match = _PHC.match(text)
    if not match:
        raise PasswordHashError("is not a salted hash in PHC format ($scheme$params$salt$hash)")
    scheme = match["id"]
    try:
        params = {
            key: int(value)
            for key, value in (item.split("=", 1) for item in match["params"].split(","))
        }
    except ValueError:
        raise PasswordHashError(f"has unreadable {scheme} parameters {match['params']!r}") from None
    salt = _b64decode(match["salt"], "salt")
    digest = _b64decode(match["hash"], "hash")
    if len(salt) < _MIN_SALT_BYTES:
        raise PasswordHashError(f"has a salt of {len(salt)} bytes; use at least {_MIN_SALT_BYTES}")
    if len(digest) < _MIN_HASH_BYTES:
        raise PasswordHashError(f"has a hash of {len(digest)} bytes; expected at least 16")
    if scheme == "scrypt":
        if set(params) != {"ln", "r", "p"}:
            raise PasswordHashError("scrypt hashes need exactly the parameters ln, r and p")
        if not (1 <= params["ln"] <= 24 and 1 <= params["r"] <= 64 and 1 <= params["p"] <= 16):
            raise PasswordHashError("has scrypt parameters out of range")
    elif scheme == "pbkdf2-sha256":
        if set(params) != {"i"}:
            raise PasswordHashError("pbkdf2-sha256 hashes need exactly the parameter i")
        if params["i"] < PBKDF2_MIN_ITERATIONS:
            raise PasswordHashError(
                f"uses {params['i']} pbkdf2 iterations; use at least {PBKDF2_MIN_ITERATIONS}"
            )
    else:
        raise PasswordHashError(
            f"uses the unsupported scheme {scheme!r} (supported: scrypt, pbkdf2-sha256)"
        )
    return scheme, params, salt, digest


def _scrypt(password: str, salt: bytes, ln: int, r: int, p: int, length: int = 32) -> bytes:
    n = 1 << ln
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r + (1 << 20), dklen=length
    )


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.replace(".", "+") + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise PasswordHashError(f"has a {what} that is not base64") from None
