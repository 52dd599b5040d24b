"""Exceptions raised by the BLIP engine."""

from __future__ import annotations

from fieldsync.errors import FieldsyncError

__all__ = ["BLIPConnectionClosed", "BLIPError", "BLIPLimitExceeded", "BLIPProtocolError"]


class BLIPError(FieldsyncError):
    """An error reply (or a local failure) expressed as a BLIP error domain, code and message."""

    def __init__(self, domain: str, code: int, message: str = "") -> None:
        self.domain = domain
        self.code = code
        self.message = message
        super().__init__(f"{domain}/{code}" + (f": {message}" if message else ""))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.domain!r}, {self.code!r}, {self.message!r})"


class BLIPProtocolError(BLIPError):
    """The peer sent bytes that violate the BLIP protocol; the connection must be closed.

    ``close_code`` is the WebSocket close code to close with (1002, protocol error).
    """

    close_code = 1002

    def __init__(self, message: str = "") -> None:
        super().__init__("BLIP", 400, message)

    def __str__(self) -> str:
        return self.message


class BLIPLimitExceeded(BLIPProtocolError):
    """The peer went over one of the connection's :class:`~fieldsync.blip.limits.BLIPLimits`.

    Closes with 1009 (message too big) or 1008 (policy violation).
    """

    def __init__(self, message: str, close_code: int) -> None:
        super().__init__(message)
        self.close_code = close_code


class BLIPConnectionClosed(BLIPError):
    """The connection closed before a reply arrived (or a message was sent on a closed session).

    ``domain`` is ``"WebSocket"``, ``code`` the close code (1006 when unknown) and ``message`` the
    close reason.
    """

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        super().__init__("WebSocket", 1006 if code is None else code, reason or "connection closed")
