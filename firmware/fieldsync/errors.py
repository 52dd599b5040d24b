"""``FieldsyncError``: the base of every exception fieldsync raises on purpose.

``except FieldsyncError`` catches a refusal, a bad input or a broken file from any package
(store, blip, replication, tls, listener, agent) and never a programming error. Each package
keeps its own subclasses, which often also derive from the built-in they resemble
(``ValueError``, ``KeyError``, ``OSError``) so older ``except`` clauses keep working.
"""

from __future__ import annotations

__all__ = ["FieldsyncError"]


class FieldsyncError(Exception):
    """Something fieldsync refuses or cannot do; the message says what and why."""
