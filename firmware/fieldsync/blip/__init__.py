"""BLIP 3 message engine: a sans-I/O protocol core and a thin asyncio adapter.

Wire format and behaviour follow LiteCore 3.2.4 (the engine inside Couchbase Lite 3.2).
"""

from .errors import BLIPConnectionClosed, BLIPError, BLIPProtocolError
from .events import Event, RequestReceived, ResponseReceived
from .frame import FrameFlags, MessageType
from .message import Message
from .protocol import BLIPProtocol
from .session import BLIPSession, IncomingRequest, IncomingResponse

__all__ = [
    "BLIPConnectionClosed",
    "BLIPError",
    "BLIPProtocol",
    "BLIPProtocolError",
    "BLIPSession",
    "Event",
    "FrameFlags",
    "IncomingRequest",
    "IncomingResponse",
    "Message",
    "MessageType",
    "RequestReceived",
    "ResponseReceived",
]
