"""Salted password hashes: what the [users] table accepts, in the listener's format."""

from __future__ import annotations

import pytest

from fieldsync.agent.passwords import hash_password
from fieldsync.listener.auth import ListenerPasswordAuthenticator
from fieldsync.listener.passwords import (
    PasswordHashError,
    check_password_hash,
    describe_password_hash_problem,
    verify_password,
)

SALT = "c2FsdHNhbHRzYWx0c2FsdA"  # 16 bytes
DIGEST = "A" * 43  # 32 bytes


def test_hash_and_verify() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("scrypt$")
    assert describe_password_hash_problem(stored) is None
    assert verify_password(stored, "correct horse")
    assert not verify_password(stored, "correct hors")
    assert not verify_password(stored, "")


def test_hashes_are_salted() -> None:
    assert hash_password("same") != hash_password("same")


def test_the_listener_accepts_what_the_agent_accepts() -> None:
    stored = hash_password("pw")
    authenticator = ListenerPasswordAuthenticator.from_users({"alice": stored})
    assert authenticator.authenticate("alice", "pw").ok
    assert not authenticator.authenticate("alice", "pW").ok
    assert not authenticator.authenticate("bob", "pw").ok


def test_empty_password_is_refused() -> None:
    with pytest.raises(PasswordHashError):
        hash_password("")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("hunter2", "plaintext"),
        ("", "plaintext"),
        ("correct horse battery staple", "plaintext"),
        ("pa$$word", "not a fieldsync password hash"),
        ("$2b$12$abcdefghijklmnopqrstuv", "not a fieldsync password hash"),
        ("$scrypt$ln=15,r=8,p=1$c2FsdA$AAAA", "not a fieldsync password hash"),
        ("scrypt$16384$8$1$" + SALT, "not a complete hash"),
        (f"scrypt$lots$8$1${SALT}${DIGEST}", "not numbers"),
        (f"scrypt$1000$8$1${SALT}${DIGEST}", "power of two"),
        (f"scrypt$16384$64$1${SALT}${DIGEST}", "r must be 1-32"),
        (f"scrypt$16384$8$1$c2FsdA${DIGEST}", "salt of 4 bytes"),
        (f"scrypt$16384$8$1${SALT}$AAAA", "hash of 3 bytes"),
        (f"scrypt$16384$8$1$!!!!${DIGEST}", "salt that is not base64"),
    ],
)
def test_non_hashes_are_explained(text: str, words: str) -> None:
    problem = describe_password_hash_problem(text)
    assert problem is not None and words in problem
    with pytest.raises(PasswordHashError):
        check_password_hash(text)
    with pytest.raises(PasswordHashError):
        verify_password(text, "x")


def test_well_formed_hash() -> None:
    assert describe_password_hash_problem(f"scrypt$16384$8$1${SALT}${DIGEST}") is None
