"""Salted password hashes for the agent's ``[users]`` table.

The format, its parser and the explanations of a bad hash live in
:mod:`fieldsync.listener.passwords` (one home for ``fieldsync run --users`` files, the agent and
the listener); the agent only refuses an empty password on top.
"""

from __future__ import annotations

from fieldsync.listener import passwords
from fieldsync.listener.passwords import (
    MAX_SCRYPT_N,
    PasswordHashError,
    check_password_hash,
    describe_password_hash_problem,
    verify_password,
)

__all__ = [
    "MAX_SCRYPT_N",
    "PasswordHashError",
    "check_password_hash",
    "describe_password_hash_problem",
    "hash_password",
    "verify_password",
]


def hash_password(password: str) -> str:
    """A new salted scrypt hash of ``password`` (refuses an empty password)."""
    if not password:
        raise PasswordHashError("the password is empty")
    return passwords.hash_password(password)
