"""Deciding on a WebSocket upgrade request: which database, which subprotocol, or which error.

Pure: takes the request path and headers, returns a decision. The listener turns a refusal
into an HTTP response and an acceptance into a replication session.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from fieldsync.replication.messages import LISTENER_SUBPROTOCOLS

BLIPSYNC = "_blipsync"


@dataclass(frozen=True)
class Refusal:
    """An HTTP error answer to an upgrade request."""

    status: int
    message: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Acceptance:
    database_name: str
    subprotocol: str


def database_name_from_path(path: str) -> str | Refusal:
    """``/<db>/_blipsync`` → ``<db>`` (URL-decoded)."""
    parts = [p for p in urlsplit(path).path.split("/") if p]
    if len(parts) != 2 or parts[1] != BLIPSYNC:
        return Refusal(404, f"no such endpoint {path!r}: replicate to /<database>/_blipsync")
    return unquote(parts[0])


def offered_subprotocols(header_values: list[str]) -> list[str]:
    offered: list[str] = []
    for value in header_values:
        offered.extend(item.strip() for item in value.split(",") if item.strip())
    return offered


def choose_subprotocol(offered: list[str]) -> str | Refusal:
    """The first protocol the client offers that we speak (the client's order decides, as in
    Sync Gateway), or a clear refusal. The choice sets the session's wire format."""
    for candidate in offered:
        if candidate in LISTENER_SUBPROTOCOLS:
            return candidate
    if not offered:
        return Refusal(
            400,
            "no Sec-WebSocket-Protocol offered: fieldsync speaks "
            + ", ".join(LISTENER_SUBPROTOCOLS),
        )
    return Refusal(
        406,
        f"unsupported replication protocol {', '.join(offered)}: fieldsync speaks "
        + ", ".join(LISTENER_SUBPROTOCOLS),
    )


def decide(
    path: str, subprotocol_headers: list[str], database_names: Mapping[str, object]
) -> Acceptance | Refusal:
    """Route an upgrade request to a database and a subprotocol."""
    name = database_name_from_path(path)
    if isinstance(name, Refusal):
        return name
    if name not in database_names:
        return Refusal(404, f"no database named {name!r} here")
    chosen = choose_subprotocol(offered_subprotocols(subprotocol_headers))
    if isinstance(chosen, Refusal):
        return chosen
    return Acceptance(name, chosen)
