"""Events returned by :meth:`BLIPProtocol.receive_frame`."""

from __future__ import annotations

from dataclasses import dataclass

from .message import Message

__all__ = ["Event", "RequestReceived", "ResponseReceived"]


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """The peer's request is complete. Answer it unless ``message.no_reply``."""

    message: Message


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """The reply (RPY or ERR) to one of our requests is complete."""

    request_number: int
    message: Message


Event = RequestReceived | ResponseReceived
