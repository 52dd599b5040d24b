"""A complete BLIP message as delivered by :class:`~fieldsync.blip.protocol.BLIPProtocol`."""

from __future__ import annotations

from dataclasses import dataclass, field

from .frame import COMPRESSED, NO_REPLY, URGENT, MessageType
from .spool import Spool

__all__ = ["Message"]


@dataclass(slots=True)
class Message:
    """A fully received request, reply or error reply: read-only by convention (not frozen:
    a frozen dataclass costs ~0.5 µs more per message, perf issue 13).

    A large body arrives in a temporary file: then ``body`` is empty and ``spooled`` holds it
    (:class:`~fieldsync.blip.session.BLIPSession` reads it back before a handler sees it).
    """

    type: MessageType
    number: int  #: request number (replies carry the number of the request they answer)
    flags: int  #: message flags of the first frame (MoreComing cleared)
    properties: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    spooled: Spool | None = None

    def read_body(self) -> bytes:
        """The body, read back from its spool file if it was spooled (blocking file I/O)."""
        return self.body if self.spooled is None else self.spooled.read()

    @property
    def urgent(self) -> bool:
        return bool(self.flags & URGENT)

    @property
    def compressed(self) -> bool:
        return bool(self.flags & COMPRESSED)

    @property
    def no_reply(self) -> bool:
        return bool(self.flags & NO_REPLY)

    @property
    def is_error(self) -> bool:
        return self.type == MessageType.ERR

    @property
    def profile(self) -> str | None:
        """The ``Profile`` property (requests name their kind with it)."""
        return self.properties.get("Profile")

    @property
    def error_domain(self) -> str | None:
        """``Error-Domain`` of an error reply (``"BLIP"`` when absent); ``None`` otherwise."""
        if not self.is_error:
            return None
        return self.properties.get("Error-Domain") or "BLIP"

    @property
    def error_code(self) -> int | None:
        """``Error-Code`` of an error reply (0 if absent or not an integer), else ``None``."""
        if not self.is_error:
            return None
        try:
            return int(self.properties.get("Error-Code", "0"), 10)
        except ValueError:
            return 0

    @property
    def error_message(self) -> str:
        """The body of an error reply decoded as UTF-8; ``""`` for other messages."""
        if not self.is_error:
            return ""
        return self.body.decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        props = ", ".join(f"{k}={v!r}" for k, v in self.properties.items())
        return (
            f"<Message {self.type.name} #{self.number} flags=0x{self.flags:02x} {{{props}}} "
            f"body={len(self.body) if self.spooled is None else self.spooled.size} bytes>"
        )
