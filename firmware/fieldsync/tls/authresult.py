"""``AuthResult``: the verdict of one authentication, whichever authenticator gave it.

Its own module, without ``cryptography``, so password authentication never loads it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["AuthResult"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuthResult:
    """The outcome of one authentication: ``ok``, who (``username``), and why not (``reason``)."""

    ok: bool
    username: str | None = None
    reason: str = ""

    @classmethod
    def allowed(cls, username: str | None) -> AuthResult:
        return cls(True, username, "")

    @classmethod
    def denied(cls, reason: str, username: str | None = None) -> AuthResult:
        return cls(False, username, reason)

    @classmethod
    def from_callback(
        cls, decide: Callable[[], object], username: str | None, *, kind: str, refusal: str
    ) -> AuthResult:
        """The verdict of an application callback (``kind`` authenticator): True lets the
        client in; False, anything not a bool, or an exception (logged) refuses it."""
        try:
            verdict = decide()
        except Exception:
            log.exception("%s authenticator callback failed for %r", kind, username)
            return cls.denied("authenticator error", username)
        if not isinstance(verdict, bool):
            log.error(
                "%s authenticator callback returned %s, not a bool; refusing",
                kind,
                type(verdict).__name__,
            )
            return cls.denied("authenticator error", username)
        return cls.allowed(username) if verdict else cls.denied(refusal, username)
