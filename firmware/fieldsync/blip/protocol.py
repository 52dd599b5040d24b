"""Sans-I/O BLIP 3 connection engine.

:class:`BLIPProtocol` turns received frames (one WebSocket binary message each) into
:mod:`events <fieldsync.blip.events>` and queued messages into frames to send. It does no I/O
and keeps no clock: feed it with :meth:`~BLIPProtocol.receive_frame`, send what
:meth:`~BLIPProtocol.next_frame` returns, in order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .compression import Deflater, Inflater
from .errors import BLIPLimitExceeded, BLIPProtocolError
from .events import Event, RequestReceived, ResponseReceived
from .frame import (
    BIG_FRAME_SIZE,
    COMPRESSED,
    DEFAULT_FRAME_SIZE,
    NO_REPLY,
    URGENT,
    MessageType,
    decode_header,
)
from .incoming import ACK_INTERVAL, MessageAssembler
from .limits import CLOSE_POLICY_VIOLATION, DEFAULT_LIMITS, BLIPLimits
from .outbox import Outbox
from .outgoing import OutgoingMessage
from .properties import encode_properties
from .varint import decode_uvarint

__all__ = ["BLIPProtocol", "PreparedFrame"]

log = logging.getLogger("fieldsync.blip")

#: zlib level of compressed messages. LiteCore uses 6 and lets it be configured
#: (``BLIPCompressionLevel``); on the device CPU is scarcer than bytes: for 1 KB JSON documents
#: level 3 costs ~2/3 of level 6's time for ~4 % more bytes (perf, issue 13).
DEFAULT_COMPRESSION_LEVEL = 3

Buffer = bytes | bytearray | memoryview
Properties = Mapping[str, str] | Iterable[tuple[str, str]]


@dataclass(slots=True)
class PreparedFrame:
    """A received message frame with its assembler and the budgets it may use; see
    :meth:`BLIPProtocol.prepare_frame`."""

    assembler: MessageAssembler
    flags: int
    payload: memoryview
    size_before: int
    memory_before: int
    limit: int  #: uncompressed bytes the message may reach
    memory: int  #: bytes of it that may stay in memory; the rest goes to a spool file
    complete: bool | None = None  #: set by :meth:`BLIPProtocol.add_prepared`


class BLIPProtocol:
    """State of one BLIP connection: numbering, multiplexing, compression, CRCs, flow control.

    Any :class:`BLIPProtocolError` raised by :meth:`receive_frame` is fatal: the connection must
    be closed (WebSocket code ``exc.close_code``: 1002, or 1008/1009 for a broken
    :class:`~fieldsync.blip.limits.BLIPLimits` bound), and later calls to :meth:`receive_frame`
    raise it again.
    """

    def __init__(
        self,
        *,
        compression_level: int = DEFAULT_COMPRESSION_LEVEL,
        limits: BLIPLimits | None = None,
        spool_dir: str | None = None,
        shared_strings: Mapping[str, str] | None = None,
    ) -> None:
        self.limits = limits if limits is not None else DEFAULT_LIMITS
        self.spool_dir = spool_dir
        #: Property names and values every message carries: received messages share these
        #: strings (see ``decode_properties``).
        self.shared_strings = shared_strings
        self._deflater = Deflater(compression_level)
        self._inflater = Inflater()
        self._outbox = Outbox()
        self._icebox: dict[tuple[int, bool], OutgoingMessage] = {}
        # Unsent bytes of our replies, queued or paused (kept as frames are cut, not summed).
        self._reply_bytes = 0
        self._last_request_number = 0
        self._requests_received = 0
        # Peer requests still arriving, by number:
        self._incoming_requests: dict[int, MessageAssembler] = {}
        # Our fully sent requests awaiting a reply: number -> reply assembler once it has begun.
        self._awaiting_replies: dict[int, MessageAssembler | None] = {}
        # Peer requests delivered and not yet answered: number -> urgent flag of the request.
        self._unanswered: dict[int, bool] = {}
        self._failure: str | None = None  # a message only: an exception would hold a frame cycle
        # Uncompressed bytes held by incoming messages still being received.
        self._incoming_bytes = 0
        # Of those, bytes kept in memory (the rest is in spool files).
        self._incoming_memory = 0
        #: Most of them ever kept in memory at once.
        self.peak_incoming_memory = 0
        #: ACK frames received (a peer that stops ACKing leaves this unchanged).
        self.acks_received = 0
        self.bytes_received = 0
        self.bytes_sent = 0

    # ----------------------------------------------------------------- sending

    def send_request(
        self,
        properties: Properties | None = None,
        body: Buffer = b"",
        *,
        urgent: bool = False,
        compressed: bool = False,
        no_reply: bool = False,
    ) -> int:
        """Queue a request; return its number (1, 2, ... per connection).

        ``body`` is sent without being copied: do not modify it until it is sent.
        """
        encoded = encode_properties(properties or {})
        _check_body(body)
        self._last_request_number += 1
        number = self._last_request_number
        flags = _flags(urgent=urgent, compressed=compressed, no_reply=no_reply)
        self._outbox.push(OutgoingMessage.build(MessageType.MSG, number, flags, encoded, body))
        return number

    def send_response(
        self,
        request_number: int,
        properties: Properties | None = None,
        body: Buffer = b"",
        *,
        compressed: bool = False,
        urgent: bool | None = None,
    ) -> None:
        """Queue the reply to peer request ``request_number``.

        ``urgent=None`` (default) makes the reply urgent iff the request was, as LiteCore does.
        Raises ``ValueError`` if that request is unknown, was NoReply or was already answered.
        """
        self._queue_reply(MessageType.RPY, request_number, properties, body, compressed, urgent)

    def send_error(
        self,
        request_number: int,
        domain: str,
        code: int,
        message: str = "",
        *,
        urgent: bool | None = None,
    ) -> None:
        """Queue an error reply (properties ``Error-Domain``, ``Error-Code``; body = message)."""
        props = (("Error-Domain", domain), ("Error-Code", str(int(code))))
        body = message.encode("utf-8")
        self._queue_reply(MessageType.ERR, request_number, props, body, False, urgent)

    def _queue_reply(
        self,
        msg_type: MessageType,
        number: int,
        properties: Properties | None,
        body: Buffer,
        compressed: bool,
        urgent: bool | None,
    ) -> None:
        if number not in self._unanswered:
            raise ValueError(
                f"no peer request #{number} awaiting a reply (unknown, NoReply or already answered)"
            )
        encoded = encode_properties(properties) if properties else b""
        _check_body(body)
        request_urgent = self._unanswered.pop(number)
        flags = _flags(urgent=request_urgent if urgent is None else urgent, compressed=compressed)
        msg = OutgoingMessage.build(msg_type, number, flags, encoded, body)
        self._reply_bytes += msg.bytes_unsent
        self._outbox.push(msg)

    def is_awaiting_reply(self, request_number: int) -> bool:
        """True if the peer's request ``request_number`` was delivered and not yet answered."""
        return request_number in self._unanswered

    # ------------------------------------------------------------ frame output

    @property
    def has_frames_to_send(self) -> bool:
        """True if :meth:`next_frame` would return a frame now."""
        return bool(self._outbox)

    @property
    def has_pending_output(self) -> bool:
        """True if any message is unsent, including ones paused waiting for an ACK."""
        return bool(self._outbox) or bool(self._icebox)

    @property
    def waiting_for_ack(self) -> bool:
        """True if some message is paused until the peer acknowledges what it received."""
        return bool(self._icebox)

    @property
    def pending_reply_bytes(self) -> int:
        """Unsent bytes of our replies to the peer's requests (queued or paused for an ACK)."""
        return self._reply_bytes

    @property
    def unanswered_count(self) -> int:
        """Peer requests delivered and not answered yet."""
        return len(self._unanswered)

    def release(self) -> None:
        """Drop every buffered message, in and out (the connection is gone)."""
        self._outbox = Outbox()
        self._icebox.clear()
        self._reply_bytes = 0
        for assembler in (*self._incoming_requests.values(), *self._awaiting_replies.values()):
            if assembler is not None:
                assembler.discard()  # closes its spool file at once
        self._incoming_requests.clear()
        self._awaiting_replies.clear()
        self._unanswered.clear()
        self._incoming_bytes = self._incoming_memory = 0
        if self._failure is None:
            self._failure = "connection released"

    def next_frame(self) -> bytes | None:
        """Return the next frame to send, or None if nothing can be sent now.

        Messages paused by flow control come back once the peer's ACK arrives.
        """
        msg = self._outbox.pop()
        if msg is None:
            return None
        head = self._outbox.peek()
        if msg.urgent or head is None or not head.urgent:
            max_size = BIG_FRAME_SIZE
        else:
            max_size = DEFAULT_FRAME_SIZE  # a normal message yields to the urgent one behind it
        unsent = msg.bytes_unsent
        frame = msg.next_frame(self._deflater, max_size)
        if msg.is_response:
            self._reply_bytes -= unsent - msg.bytes_unsent
        self.bytes_sent += len(frame)
        if msg.has_more_data:
            if msg.needs_ack:
                self._icebox[(msg.number, msg.is_response)] = msg
            else:
                self._outbox.push(msg)
        elif msg.type == MessageType.MSG and not msg.no_reply:
            self._awaiting_replies[msg.number] = None
        return frame

    def frames_to_send(self) -> list[bytes]:
        """Return every frame that can be sent now (see :meth:`next_frame`)."""
        frames = []
        while (frame := self.next_frame()) is not None:
            frames.append(frame)
        return frames

    # ------------------------------------------------------------------ input

    def receive_frame(self, data: Buffer, *, prepared: PreparedFrame | None = None) -> list[Event]:
        """Process one received frame; return the messages it completed.

        ``prepared``: the frame as :meth:`prepare_frame` returned it, after
        :meth:`add_prepared` ran (so the CPU-heavy part can run elsewhere). Raises
        :class:`BLIPProtocolError` on any malformed or unexpected frame.
        """
        if self._failure is not None:
            raise BLIPProtocolError(f"connection already failed: {self._failure}")
        try:
            return self._receive(memoryview(data).cast("B"), prepared)
        except BLIPProtocolError as exc:
            self._failure = str(exc)
            raise

    def prepare_frame(self, data: Buffer) -> PreparedFrame | None:
        """For a compressed message frame: its assembler and budgets, for :meth:`add_prepared`
        to inflate it off the event loop; ``None`` for any other frame."""
        if self._failure is not None:
            raise BLIPProtocolError(f"connection already failed: {self._failure}")
        view = memoryview(data).cast("B")
        try:
            header = decode_header(view)
            if not header.compressed or header.type.is_ack:
                return None
            assembler = self._assembler(header.number, header.type, header.flags)
        except BLIPProtocolError as exc:
            self._failure = str(exc)
            raise
        return self._budgets(assembler, header.flags, view[header.size :])

    def add_prepared(self, frame: PreparedFrame) -> None:
        """Inflate a prepared frame into its message. Touches only the incoming codec and that
        message's assembler: it may run in a worker thread while nothing else receives on this
        connection. Then pass ``frame`` to :meth:`receive_frame`."""
        try:
            frame.complete = frame.assembler.add_frame(
                frame.payload, frame.flags, self._inflater, frame.limit, frame.memory
            )
        except BLIPProtocolError as exc:
            self._failure = str(exc)
            raise

    def _budgets(
        self, assembler: MessageAssembler, flags: int, payload: memoryview
    ) -> PreparedFrame:
        limit, memory = self._room(assembler)
        return PreparedFrame(
            assembler, flags, payload, assembler.size, assembler.memory, limit, memory
        )

    def _room(self, assembler: MessageAssembler) -> tuple[int, int]:
        """(size limit, memory allowance) of ``assembler``'s message. Every message in progress
        shares one budget, so many partial messages cannot multiply the single-message limit;
        likewise for the bytes they keep in memory."""
        limits = self.limits
        return (
            limits.max_message_size - (self._incoming_bytes - assembler.size),
            limits.max_incoming_memory - (self._incoming_memory - assembler.memory),
        )

    def _receive(self, frame: memoryview, prepared: PreparedFrame | None) -> list[Event]:
        self.bytes_received += len(frame)
        if prepared is None:
            header = decode_header(frame)
            if header.type.is_ack:
                payload = frame[header.size :]
                self._receive_ack(header.number, header.type == MessageType.ACKRPY, payload)
                return []
            assembler = self._assembler(header.number, header.type, header.flags)
            # What add_prepared does, without a PreparedFrame per frame (perf, issue 13).
            size_before, memory_before = assembler.size, assembler.memory
            limit, memory = self._room(assembler)
            try:
                complete = assembler.add_frame(
                    frame[header.size :], header.flags, self._inflater, limit, memory
                )
            finally:
                self._account(assembler, size_before, memory_before)
        else:
            assembler = prepared.assembler
            self._account(assembler, prepared.size_before, prepared.memory_before)
            if prepared.complete is None:
                raise BLIPProtocolError("receive_frame got a prepared frame that was not added")
            complete = prepared.complete
        if assembler.unacked_bytes >= ACK_INTERVAL:
            received = assembler.raw_bytes_received
            self._outbox.push(OutgoingMessage.ack(assembler.type, assembler.number, received))
            assembler.unacked_bytes = 0
        if not complete:
            return []
        self._incoming_bytes -= assembler.size
        self._incoming_memory -= assembler.memory
        message = assembler.finish()
        if assembler.type == MessageType.MSG:
            self._incoming_requests.pop(assembler.number, None)
            if not message.no_reply:
                self._unanswered[message.number] = message.urgent
            return [RequestReceived(message)]
        del self._awaiting_replies[assembler.number]
        return [ResponseReceived(assembler.number, message)]

    def _account(self, assembler: MessageAssembler, size_before: int, memory_before: int) -> None:
        self._incoming_bytes += assembler.size - size_before
        self._incoming_memory += assembler.memory - memory_before
        if self._incoming_memory > self.peak_incoming_memory:
            self.peak_incoming_memory = self._incoming_memory

    def _assembler(self, number: int, msg_type: MessageType, flags: int) -> MessageAssembler:
        if msg_type == MessageType.MSG:
            return self._request_assembler(number, flags)
        return self._reply_assembler(number, msg_type, flags)

    def _request_assembler(self, number: int, flags: int) -> MessageAssembler:
        assembler = self._incoming_requests.get(number)
        if assembler is not None:
            return assembler
        if number != self._requests_received + 1:
            state = "already finished" if number <= self._requests_received else "too high"
            raise BLIPProtocolError(f"bad incoming request #{number} ({state})")
        if len(self._incoming_requests) >= self.limits.max_open_requests:
            raise BLIPLimitExceeded(
                f"more than {self.limits.max_open_requests} incoming requests in progress",
                CLOSE_POLICY_VIOLATION,
            )
        self._requests_received = number
        assembler = MessageAssembler(
            MessageType.MSG, number, flags, self.spool_dir, self.shared_strings
        )
        self._incoming_requests[number] = assembler
        return assembler

    def _reply_assembler(self, number: int, msg_type: MessageType, flags: int) -> MessageAssembler:
        if number not in self._awaiting_replies:
            state = "no request waiting" if number <= self._last_request_number else "too high"
            raise BLIPProtocolError(f"bad incoming reply #{number} ({state})")
        assembler = self._awaiting_replies[number]
        if assembler is None:
            assembler = MessageAssembler(
                msg_type, number, flags, self.spool_dir, self.shared_strings
            )
            self._awaiting_replies[number] = assembler
        return assembler

    def _receive_ack(self, number: int, on_reply: bool, payload: memoryview) -> None:
        byte_count, _ = decode_uvarint(payload, 0, what="ACK byte count")
        self.acks_received += 1
        key = (number, on_reply)
        msg = self._icebox.get(key)
        if msg is not None:
            msg.received_ack(byte_count)
            if not msg.needs_ack:
                del self._icebox[key]
                self._outbox.push(msg)
            return
        msg = self._outbox.find(number, on_reply)
        if msg is not None:
            msg.received_ack(byte_count)
        else:
            kind = "RPY" if on_reply else "MSG"
            log.debug("ignoring ACK for %s #%d, which is not being sent", kind, number)


def _flags(*, urgent: bool = False, compressed: bool = False, no_reply: bool = False) -> int:
    return (
        (URGENT if urgent else 0)
        | (COMPRESSED if compressed else 0)
        | (NO_REPLY if no_reply else 0)
    )


def _check_body(body: object) -> None:
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError(f"BLIP message body must be bytes-like, not {type(body).__name__}")
