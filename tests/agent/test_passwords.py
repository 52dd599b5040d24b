"""Salted password hashes: what the [users] table holds and what the authenticator checks."""

from __future__ import annotations

import base64
import hashlib

import pytest

from fieldsync.agent.passwords import (
    PasswordHashError,
    describe_password_hash_problem,
    hash_password,
    verify_password,
)


def test_hash_and_verify() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("$scrypt$ln=15,r=8,p=1$")
    assert describe_password_hash_problem(stored) is None
    assert verify_password(stored, "correct horse")
    assert not verify_password(stored, "correct hors")
    assert not verify_password(stored, "")


def test_salts_differ() -> None:
    assert hash_password("same") != hash_password("same")


def test_pbkdf2_hashes_made_elsewhere_verify() -> None:
    salt = b"sixteen byte salt"
    digest = hashlib.pbkdf2_hmac("sha256", b"pw", salt, 20_000)
    b64 = lambda raw: base64.b64encode(raw).decode().rstrip("=")  # noqa: E731
    stored = f"$pbkdf2-sha256$i=20000${b64(salt)}${b64(digest)}"
    assert describe_password_hash_problem(stored) is None
    assert verify_password(stored, "pw")
    assert not verify_password(stored, "pW")


def test_empty_password_is_refused() -> None:
    with pytest.raises(PasswordHashError):
        hash_password("")


@pytest.mark.parametrize(
    "text",
    ["hunter2", "", "$", "$scrypt$", "$scrypt$ln=15,r=8,p=1$!!!!$????", "scrypt$ln=1$a$b"],
)
def test_non_hashes_are_described(text: str) -> None:
    assert describe_password_hash_problem(text)
    if text.startswith("$"):
        with pytest.raises(PasswordHashError):
            verify_password(text, "x")
