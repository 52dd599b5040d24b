"""Password hashes for the agent's ``[users]`` table.

The format, its parser and the explanations of a bad hash live in
:mod:`fieldsync.listener.passwords` (one home for ``fieldsync run --users`` files, the agent and
the listener). The agent adds one rule: ``fieldsync agent --hash-password`` refuses an empty
password.
"""

from __future__ import annotations

from fieldsync.listener import passwords
from fieldsync.listener.passwords import PasswordHashError


def hash_password(password: str) -> str:
    """A new salted scrypt hash of ``password`` (refuses an empty password)."""
    if not password:
        raise PasswordHashError("the password is empty")
    return passwords.hash_password(password)
