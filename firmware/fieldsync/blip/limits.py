"""Resource limits of one BLIP connection: what a hostile or stuck peer may make us hold.

One home for every per-connection bound: the listener and the active replicator pass a
:class:`BLIPLimits` (or take :data:`DEFAULT_LIMITS`) to :class:`~fieldsync.blip.BLIPSession`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_TRY_AGAIN_LATER",
    "DEFAULT_LIMITS",
    "MAX_READ_BACK_BYTES",
    "MAX_SPOOLED_BYTES",
    "MAX_WEBSOCKET_MESSAGE",
    "BLIPLimits",
]

#: Largest WebSocket message (= one BLIP frame) accepted. LiteCore never sends frames larger
#: than 16 KiB (header included); twice that leaves room for other senders' headers.
MAX_WEBSOCKET_MESSAGE = 32 * 1024

#: Bytes of spooled request bodies all connections of a process may hold in memory at once,
#: read back for their handlers (a 50 MB document and then some). A large request that would
#: pass it gets HTTP/503 at once (the phone retries it later) rather than waiting: its handler
#: could be waiting, in turn, for a reply that needs the room.
MAX_READ_BACK_BYTES = 96 * 1024 * 1024

#: The least ``max_incoming_memory``: a message's properties (at most 100 KiB, see
#: ``properties.MAX_PROPERTIES_SIZE``) are always parsed in memory.
MIN_INCOMING_MEMORY = 128 * 1024

#: Bytes of incoming message bodies all connections of a process may keep in temporary files
#: at once (see ``BLIPLimits.max_incoming_memory``): a message that would pass it closes its
#: connection (1009), so hostile peers cannot fill the card with spool files.
MAX_SPOOLED_BYTES = 256 * 1024 * 1024

#: WebSocket close code for a message over a size limit (RFC 6455 "message too big").
CLOSE_MESSAGE_TOO_BIG = 1009
#: WebSocket close code for a failure of ours the peer may retry (RFC 6455 "try again later").
CLOSE_TRY_AGAIN_LATER = 1013
#: WebSocket close code for a peer breaking one of our limits (RFC 6455 "policy violation").
CLOSE_POLICY_VIOLATION = 1008


@dataclass(frozen=True, slots=True)
class BLIPLimits:
    """Bounds on what one connection's peer can make us hold or wait for.

    ``max_message_size``: uncompressed bytes (properties + body) of one incoming message, and
    of every incoming message still being received together. Generous enough for a 50 MB
    document; a message above it closes the connection (WebSocket 1009), checked while
    inflating, so a deflate bomb stops at the limit.

    ``max_incoming_memory``: uncompressed bytes of partly received messages kept in memory.
    Beyond it, the body of the message being received goes to an anonymous temporary file
    (in the session's ``spool_dir``), so a large document, or a peer streaming junk up to
    ``max_message_size``, costs disk, not RAM. A spooled request body is read back only when
    its handler runs, within ``MAX_READ_BACK_BYTES`` for the whole process; a spooled reply
    stays in its file for the requester (``IncomingResponse.spooled``).

    ``max_ordinary_body``: the largest body of a request whose profile was not registered for
    large bodies (``BLIPSession.register(..., large_bodies=True)``); larger ones get HTTP/413.

    ``max_running_request_bytes``: bytes of requests whose handlers run at once (a handler
    holds its request, and what it parses from it, until it finishes); one request larger
    than it runs alone.

    ``max_open_requests``: peer requests whose handlers run at once; more than this many
    partially received requests close the connection (1008). Requests beyond it wait in a
    queue bounded by ``max_queued_requests`` and ``max_queued_request_bytes``; only beyond
    those a request gets HTTP/503 at once. LiteCore's pusher keeps up to 2 MiB of ``rev``
    messages awaiting a reply (kMaxRevBytesAwaitingReply), ~2,000 open requests with 1 KB
    documents, so the queue must hold that window or a normal push gets 503s.

    ``pause_reading_above``: bytes of peer requests waiting in that queue above which the
    session stops reading the WebSocket, as long as none of our own requests awaits a reply
    (whose reply must be read): the peer is then held back by TCP, its frames waiting in its
    own buffers, instead of in this process's memory as Python objects (~2.5 times their size).
    Reading resumes below half of it. 0: never pause (then only the limits above apply).

    ``max_pending_replies``: bytes of our replies waiting to go out. While above it, new peer
    requests wait before their handlers run (replies are built only when there is room), so a
    peer that does not read or ACK cannot make us queue unbounded replies.

    ``send_timeout``: seconds one frame may wait for the socket's write buffer (a peer that
    stopped reading); ``ack_timeout``: seconds a message may wait for the peer's ACK with no
    ACK arriving. Either closes the connection at once, without a closing handshake.
    """

    max_message_size: int = 64 * 1024 * 1024
    max_incoming_memory: int = 2 * 1024 * 1024
    max_ordinary_body: int = 1024 * 1024
    max_running_request_bytes: int = 4 * 1024 * 1024
    max_open_requests: int = 100
    max_queued_requests: int = 10_000
    max_queued_request_bytes: int = 8 * 1024 * 1024
    pause_reading_above: int = 256 * 1024
    max_pending_replies: int = 4 * 1024 * 1024
    send_timeout: float = 60.0
    ack_timeout: float = 120.0

    def __post_init__(self) -> None:
        if self.max_message_size < 1024:
            raise ValueError("max_message_size must be at least 1024 bytes")
        if self.max_incoming_memory < MIN_INCOMING_MEMORY:
            raise ValueError(f"max_incoming_memory must be at least {MIN_INCOMING_MEMORY} bytes")
        if self.max_running_request_bytes < 0:
            raise ValueError("max_running_request_bytes must not be negative")
        if self.max_open_requests < 1:
            raise ValueError("max_open_requests must be at least 1")
        if self.max_queued_requests < 0 or self.max_queued_request_bytes < 0:
            raise ValueError(
                "max_queued_requests and max_queued_request_bytes must not be negative"
            )
        if self.pause_reading_above < 0:
            raise ValueError("pause_reading_above must not be negative")
        if self.max_pending_replies < 0:
            raise ValueError("max_pending_replies must not be negative")
        if self.send_timeout <= 0 or self.ack_timeout <= 0:
            raise ValueError("send_timeout and ack_timeout must be positive")


#: The limits a session uses when none are given.
DEFAULT_LIMITS = BLIPLimits()
