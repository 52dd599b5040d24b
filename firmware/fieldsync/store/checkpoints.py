"""Checkpoint revisions: the MVCC tokens ``"<N>-cc"`` of stored peer checkpoints."""

from __future__ import annotations

SUFFIX = "-cc"


def next_rev(current: str | None) -> str:
    """The revision after ``current`` (``"1-cc"`` after none)."""
    if not current:
        return f"1{SUFFIX}"
    number, _, _ = current.partition("-")
    return f"{int(number) + 1}{SUFFIX}"
