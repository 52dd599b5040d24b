"""asyncio adapter: runs a :class:`BLIPProtocol` over a WebSocket connection.

The websocket is any object with ``async recv() -> bytes | str``, ``async send(bytes)`` and
``async close(code, reason)`` — e.g. a ``websockets.asyncio`` server or client connection.
One reader loop (:meth:`BLIPSession.run`) feeds received frames to the protocol and dispatches
requests to handlers, each in its own task; one writer task sends the protocol's frames in
multiplexer order.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol

from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from fieldsync import safejson

from .errors import BLIPConnectionClosed, BLIPError, BLIPProtocolError
from .events import RequestReceived, ResponseReceived
from .limits import CLOSE_POLICY_VIOLATION, BLIPLimits
from .message import Message
from .protocol import BLIPProtocol
from .spool import READ_BACK_BUDGET, Spool

__all__ = ["BLIPSession", "Handler", "IncomingRequest", "IncomingResponse", "WebSocketLike"]

log = logging.getLogger("fieldsync.blip")

#: Compressed frames larger than this are inflated in a worker thread: one can inflate to
#: 1,000 times its size (a bomb, or a very repetitive document), which would hold the event
#: loop, and every other connection, for tens of milliseconds.
OFFLOAD_INFLATE_ABOVE = 2048
#: The reader lets the handlers it started run after at most this many messages read without
#: waiting (websockets' ``recv`` returns a buffered message at once).
YIELD_EVERY_MESSAGES = 8
#: How long :meth:`BLIPSession.close` waits for queued frames to go out.
FLUSH_TIMEOUT = 10.0
#: Frames written to the socket with one write (see :func:`_batch_target`).
WRITE_BATCH_FRAMES = 64
_PROTOCOL_ERROR = 1002
_ABNORMAL_CLOSURE = 1006
_INTERNAL_ERROR = 1011
_MAX_REASON_BYTES = 123


class WebSocketLike(Protocol):
    """What :class:`BLIPSession` needs from a WebSocket connection."""

    async def recv(self) -> bytes | str: ...

    async def send(self, message: bytes) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


def _json_body(body: bytes, what: str) -> Any:
    if not body:
        raise ValueError(f"body of {what} is empty, not JSON")
    try:
        return safejson.loads(body)
    except safejson.JSONTooDeep as exc:
        raise safejson.JSONTooDeep(f"body of {what}: {exc}") from None
    except ValueError as exc:  # JSONDecodeError or UnicodeDecodeError
        raise ValueError(f"body of {what} is not valid JSON: {exc}") from None


class IncomingRequest:
    """A request received from the peer, handed to the handler registered for its profile."""

    __slots__ = ("_message", "_session", "responded")

    def __init__(self, session: BLIPSession, message: Message) -> None:
        self._session = session
        self._message = message
        self.responded = False

    @property
    def profile(self) -> str:
        return self._message.profile or ""

    @property
    def properties(self) -> dict[str, str]:
        return self._message.properties

    @property
    def body(self) -> bytes:
        return self._message.body

    @property
    def number(self) -> int:
        return self._message.number

    @property
    def no_reply(self) -> bool:
        return self._message.no_reply

    @property
    def urgent(self) -> bool:
        return self._message.urgent

    @property
    def compressed(self) -> bool:
        return self._message.compressed

    @property
    def message(self) -> Message:
        """The underlying protocol message."""
        return self._message

    def json(self) -> Any:
        """The body parsed as JSON; ``ValueError`` if it is empty or not valid JSON."""
        return _json_body(self.body, f"{self.profile or 'request'} #{self.number}")

    def respond(
        self,
        properties: Mapping[str, str] | None = None,
        body: bytes = b"",
        *,
        compressed: bool = False,
    ) -> None:
        """Queue the reply. A no-op for NoReply requests; ``RuntimeError`` if already answered."""
        if self._check_can_respond():
            self._session._send_reply(self.number, properties, body, compressed)

    def respond_error(self, domain: str, code: int, message: str = "") -> None:
        """Queue an error reply (``Error-Domain``/``Error-Code`` properties, message as body)."""
        if self._check_can_respond():
            self._session._send_error(self.number, domain, code, message)

    def _check_can_respond(self) -> bool:
        if self.no_reply:
            log.debug(
                "%s: not answering NoReply request %s #%d",
                self._session.name,
                self.profile,
                self.number,
            )
            return False
        if self.responded:
            raise RuntimeError(f"request {self.profile!r} #{self.number} was already answered")
        self.responded = True
        return True

    def __repr__(self) -> str:
        return f"<IncomingRequest {self.profile!r} #{self.number} {self.properties!r}>"


class IncomingResponse:
    """The peer's reply to one of our requests (possibly an error reply).

    A large body arrives in a spool file (:attr:`spooled`): a consumer that expects one (a
    blob) reads it from there in chunks, off the event loop. :attr:`body` reads a spooled body
    back only up to ``max_body`` bytes (``BLIPLimits.max_ordinary_body``); beyond, it raises
    :class:`BLIPError` (HTTP 413), so a peer answering a small request with a huge reply costs
    nothing.
    """

    __slots__ = ("_body", "_max_body", "_message")

    def __init__(self, message: Message, max_body: int | None = None) -> None:
        self._message = message
        self._max_body = max_body
        self._body: bytes | None = None if message.spooled is not None else message.body

    @property
    def properties(self) -> dict[str, str]:
        return self._message.properties

    @property
    def spooled(self) -> Spool | None:
        """The body's spool file, if it was too large to keep in memory (else ``None``)."""
        return self._message.spooled

    async def read_body(self) -> bytes:
        """The whole body, however large: a spooled one is read back off the event loop."""
        if self._body is None:
            spool = self._message.spooled
            assert spool is not None
            self._body = await asyncio.to_thread(spool.read)
        return self._body

    @property
    def body(self) -> bytes:
        if self._body is None:
            spool = self._message.spooled
            assert spool is not None
            if self._max_body is not None and spool.size > self._max_body:
                raise BLIPError("HTTP", 413, f"reply body of {spool.size} bytes is too large")
            self._body = spool.read()  # small: a read from the page cache
        return self._body

    @property
    def is_error(self) -> bool:
        return self._message.is_error

    @property
    def error_domain(self) -> str | None:
        return self._message.error_domain

    @property
    def error_code(self) -> int | None:
        return self._message.error_code

    @property
    def error_message(self) -> str:
        return self._message.error_message

    @property
    def message(self) -> Message:
        """The underlying protocol message."""
        return self._message

    def json(self) -> Any:
        """The body parsed as JSON; ``ValueError`` if it is empty or not valid JSON."""
        return _json_body(self.body, f"reply #{self._message.number}")

    def raise_for_error(self) -> None:
        """Raise :class:`BLIPError` if this is an error reply."""
        if self.is_error:
            raise BLIPError(self.error_domain or "BLIP", self.error_code or 0, self.error_message)

    def __repr__(self) -> str:
        if self.is_error:
            return f"<IncomingResponse error {self.error_domain}/{self.error_code}>"
        spool = self._message.spooled
        size = spool.size if spool is not None else len(self._message.body)
        return f"<IncomingResponse {self.properties!r} body={size} bytes>"


Handler = Callable[[IncomingRequest], Awaitable[None] | None]


_MIN_TRIM_INTERVAL = 1.0
_last_trim = 0.0
_trim_scheduled = False


def release_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc's ``malloc_trim``), at most once a second.

    Python returns big freed buffers to the C allocator, which keeps them (fragmented heaps,
    per-thread arenas): without this a closed connection that buffered 64 MB can leave the
    process's RSS 64 MB higher, and an ordinary push's leftovers (~1 MB, fragmented) are not
    what the next connection asks for, so it takes fresh pages. Every closing session calls
    this; a trim takes well under a millisecond. A no-op where there is no glibc.
    """
    global _last_trim, _trim_scheduled
    if _malloc_trim is None:
        return
    now = time.monotonic()
    wait = _last_trim + _MIN_TRIM_INTERVAL - now
    if wait > 0:  # trimmed just now: once more when the interval is over (the last close)
        if not _trim_scheduled:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().call_later(wait, _scheduled_trim)
                _trim_scheduled = True
        return
    _last_trim = now
    _malloc_trim(0)


def _scheduled_trim() -> None:
    global _trim_scheduled
    _trim_scheduled = False
    release_free_memory()


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_malloc_trim = _find_malloc_trim()


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _batch_target(ws: object) -> tuple[Any, Any, Callable[[], Awaitable[None]]] | None:
    """(sans-I/O protocol, transport, drain) of an open ``websockets`` asyncio connection, for
    writing several frames at once; ``None`` for anything else (or a closing connection, so
    that ``send`` raises ``ConnectionClosed`` as usual)."""
    wsproto = getattr(ws, "protocol", None)
    transport = getattr(ws, "transport", None)
    drain = getattr(ws, "drain", None)
    if wsproto is None or transport is None or drain is None:
        return None
    if getattr(wsproto, "state", None) is not State.OPEN or transport.is_closing():
        return None
    return wsproto, transport, drain


#: Bytes counted for a request besides its body (properties, objects).
_REQUEST_OVERHEAD = 256


def _message_size(message: Message) -> int:
    """What a queued request holds in memory, roughly (a spooled body is on disk)."""
    return len(message.body) + _REQUEST_OVERHEAD


def _body_size(message: Message) -> int:
    """The request's body size (a spooled body is read back for its handler)."""
    return message.spooled.size if message.spooled is not None else len(message.body)


async def _read_spooled(message: Message) -> Message:
    spool = message.spooled
    assert spool is not None
    try:
        body = await asyncio.to_thread(spool.read)
    finally:
        spool.close()
    return replace(message, body=body, spooled=None)


def _not_found(request: IncomingRequest) -> None:
    request.respond_error("BLIP", 404, "no handler for profile")


class BLIPSession:
    """One BLIP connection over a WebSocket: requests out, handlers for requests in.

    ``limits`` bounds what the peer can make this session hold (see
    :class:`~fieldsync.blip.limits.BLIPLimits`); large incoming messages wait in anonymous
    temporary files in ``spool_dir`` (the system's temporary directory if ``None``).
    ``shared_strings``: property names and values the application's messages all carry, which
    received messages then share (a 1 KB revision waits in the queue with ~0.5 KB of property
    strings otherwise).

    Once closed, the session drops its handlers, queued messages and buffers at once, so
    nothing waits for the cyclic garbage collector.
    """

    def __init__(
        self,
        websocket: WebSocketLike,
        *,
        name: str = "",
        limits: BLIPLimits | None = None,
        spool_dir: str | None = None,
        shared_strings: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.closed = False
        self.close_code: int | None = None
        self.close_reason = ""
        #: Called with the session once it has closed.
        self.on_close: list[Callable[[BLIPSession], object]] = []
        self._ws = websocket
        self._protocol = BLIPProtocol(
            limits=limits, spool_dir=spool_dir, shared_strings=shared_strings
        )
        self._limits = self._protocol.limits
        # Peer requests received, waiting for room in the reply budget before their handler runs.
        self._queued: deque[Message] = deque()
        self._queued_bytes = 0
        # run() waits on _read_room while the queue holds more than pause_reading_above bytes
        # (and none of our requests awaits a reply); set again below half of it.
        self._read_paused = False
        self._read_room = asyncio.Event()
        self._refusals_logged = False
        self._handlers: dict[str, Handler] = {}
        self._large_profiles: set[str] = set()
        self._running_bytes = 0
        self._fallback: Handler = _not_found
        self._pending: dict[int, asyncio.Future[IncomingResponse]] = {}
        # Requests whose handler has not finished: its task, or the future it returned.
        self._handler_tasks: set[asyncio.Future[Any]] = set()
        self._writer_task: asyncio.Task[None] | None = None
        # The loop run() reads on: handler tasks are made on it directly (asyncio.create_task
        # asks for the running loop, a getpid() system call per request in Python 3.11).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._closed_event = asyncio.Event()
        self._closing = False
        self._local_close: tuple[int, str] | None = None
        self._sending = False

    @property
    def protocol(self) -> BLIPProtocol:
        """The sans-I/O engine (for inspection and statistics)."""
        return self._protocol

    # ------------------------------------------------------------- handlers

    def register(self, profile: str, handler: Handler, *, large_bodies: bool = False) -> None:
        """Handle requests whose ``Profile`` is ``profile`` (sync or async callable).

        Only profiles registered with ``large_bodies`` accept a body larger than
        ``BLIPLimits.max_ordinary_body``; for others such a request gets HTTP/413 without its
        body ever being read back from its spool file.
        """
        self._handlers[profile] = handler
        if large_bodies:
            self._large_profiles.add(profile)
        else:
            self._large_profiles.discard(profile)

    def set_fallback_handler(self, handler: Handler) -> None:
        """Handle requests with no registered profile (default: ERR BLIP/404)."""
        self._fallback = handler

    # ------------------------------------------------------------- requests

    async def request(
        self,
        profile: str,
        properties: Mapping[str, str] | None = None,
        body: bytes = b"",
        *,
        urgent: bool = False,
        compressed: bool = False,
        no_reply: bool = False,
    ) -> IncomingResponse | None:
        """Send a request and wait for its reply (``None`` for NoReply requests).

        Raises :class:`BLIPConnectionClosed` if the connection closes first. An error reply is
        returned, not raised (see :meth:`IncomingResponse.raise_for_error`).
        """
        future = self.send_nowait(
            profile, properties, body, urgent=urgent, compressed=compressed, no_reply=no_reply
        )
        if future is None:
            return None
        return await future

    def send_nowait(
        self,
        profile: str,
        properties: Mapping[str, str] | None = None,
        body: bytes = b"",
        *,
        urgent: bool = False,
        compressed: bool = False,
        no_reply: bool = False,
    ) -> asyncio.Future[IncomingResponse] | None:
        """Queue a request; return a future for its reply (``None`` for NoReply requests)."""
        if self.closed or self._closing:
            raise BLIPConnectionClosed(self.close_code, self.close_reason or "session is closing")
        props = [("Profile", profile)]
        if properties:
            props.extend((k, v) for k, v in properties.items() if k != "Profile")
        number = self._protocol.send_request(
            props, body, urgent=urgent, compressed=compressed, no_reply=no_reply
        )
        future: asyncio.Future[IncomingResponse] | None = None
        if not no_reply:
            future = asyncio.get_running_loop().create_future()
            self._pending[number] = future
            if self._read_paused:  # its reply must be read
                self._read_room.set()
        self._wake()
        return future

    def _send_reply(
        self, number: int, properties: Mapping[str, str] | None, body: bytes, compressed: bool
    ) -> None:
        if self.closed:
            log.debug("%s: connection closed; dropping reply to #%d", self.name, number)
            return
        self._protocol.send_response(number, properties, body, compressed=compressed)
        self._wake()

    def _send_error(self, number: int, domain: str, code: int, message: str) -> None:
        if self.closed:
            log.debug("%s: connection closed; dropping error reply to #%d", self.name, number)
            return
        self._protocol.send_error(number, domain, code, message)
        self._wake()

    # ---------------------------------------------------------------- input

    async def run(self) -> None:
        """Read and dispatch frames until the connection closes (or a protocol error closes it)."""
        self._loop = asyncio.get_running_loop()
        self._ensure_writer()
        unyielded = 0
        pause_above = self._limits.pause_reading_above
        try:
            while not self.closed:
                if (
                    pause_above
                    and self._queued_bytes > pause_above
                    and not self._pending
                    and not self._closing  # the peer's closing frame must be read
                ):
                    self._read_paused = True
                    self._read_room.clear()
                    await self._read_room.wait()
                    self._read_paused = False
                    continue
                try:
                    data = await self._ws.recv()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._connection_lost(exc)
                    return
                try:
                    if isinstance(data, str):
                        raise BLIPProtocolError("text WebSocket message received (BLIP is binary)")
                    prepared = None
                    if len(data) > OFFLOAD_INFLATE_ABOVE:
                        prepared = self._protocol.prepare_frame(data)
                        if prepared is not None:  # a big compressed frame: inflate off the loop
                            await asyncio.to_thread(self._protocol.add_prepared, prepared)
                    events = self._protocol.receive_frame(data, prepared=prepared)
                    del prepared
                except BLIPProtocolError as exc:
                    log.error("%s: BLIP protocol error: %s", self.name, exc)
                    await self._abort(exc.close_code, str(exc))
                    return
                del data
                for event in events:
                    if isinstance(event, RequestReceived):
                        self._dispatch_request(event.message)
                    elif isinstance(event, ResponseReceived):
                        self._dispatch_response(event.request_number, event.message)
                if self._protocol.has_frames_to_send:  # ACKs, or messages resumed by an ACK
                    self._wake()
                if events:
                    # Let the handlers just started build their replies before more frames are
                    # read, so the reply budget sees them (recv() need not yield): after every
                    # few messages, not each one, as a loop turn per 1 KB rev cost ~5 % of a
                    # push (perf, issue 13).
                    unyielded += len(events)
                    if unyielded >= YIELD_EVERY_MESSAGES:
                        unyielded = 0
                        await asyncio.sleep(0)
        finally:
            if not self.closed:
                self._finish(*self._closed_status(None))

    def _dispatch_request(self, message: Message) -> None:
        limits = self._limits
        size = _message_size(message)
        if self._queued and (
            len(self._queued) >= limits.max_queued_requests
            or self._queued_bytes + size > limits.max_queued_request_bytes
        ):
            if not self._refusals_logged:
                self._refusals_logged = True
                log.warning(
                    "%s: more than %d requests (%d bytes) waiting; refusing more with 503",
                    self.name,
                    len(self._queued),
                    self._queued_bytes,
                )
            if not message.no_reply:
                self._protocol.send_error(
                    message.number, "HTTP", 503, "too many requests in progress; retry later"
                )
                self._wake()
            return
        self._queued.append(message)
        self._queued_bytes += size
        self._start_handlers()

    def _start_handlers(self) -> None:
        """Run queued requests' handlers while fewer than ``max_open_requests`` run and our
        unsent replies fit the reply budget."""
        queued = self._queued
        limits = self._limits
        budget = limits.max_pending_replies
        running = limits.max_open_requests
        while queued and not self.closed:
            if len(self._handler_tasks) >= running:
                return  # resumed when a handler finishes
            if self._protocol.pending_reply_bytes > budget:
                return  # resumed when replies have gone out or a handler finishes
            body_size = _body_size(queued[0])
            size = body_size + _REQUEST_OVERHEAD
            if (
                self._handler_tasks
                and self._running_bytes + size > limits.max_running_request_bytes
            ):
                return  # resumed when a handler finishes
            message = queued.popleft()
            self._queued_bytes -= _message_size(message)
            if self._read_paused and self._queued_bytes <= limits.pause_reading_above // 2:
                self._read_room.set()
            profile = message.profile or ""
            if body_size > limits.max_ordinary_body and profile not in self._large_profiles:
                if message.spooled is not None:
                    message.spooled.close()
                if not message.no_reply:
                    self._send_error(
                        message.number, "HTTP", 413, f"{profile or 'request'} body too large"
                    )
                continue
            handler = self._handlers.get(profile, self._fallback)
            request: IncomingRequest | None = None
            pending: asyncio.Future[Any] | None
            if message.spooled is None:
                request = IncomingRequest(self, message)
                pending = self._run_inline(handler, request)
                if pending is None:
                    continue  # answered without waiting
            else:
                loop = self._loop or asyncio.get_running_loop()
                pending = loop.create_task(
                    self._run_spooled(handler, message), name=f"blip-{profile}-{message.number}"
                )
            self._running_bytes += size
            self._handler_tasks.add(pending)
            pending.add_done_callback(
                functools.partial(self._handler_done, size=size, request=request)
            )

    def _run_inline(self, handler: Handler, request: IncomingRequest) -> asyncio.Future[Any] | None:
        """Call ``handler`` now. One that answers at once needs nothing more (no task: a task
        per 1 KB request was ~15 % of the session's work, perf issue 13); the future one
        returns (a revision waiting for its commit) counts as running until it resolves; a
        coroutine gets a task."""
        try:
            result = handler(request)
        except Exception:
            self._handler_failed(request)
            return None
        if result is None:
            return None
        if isinstance(result, asyncio.Future):
            return result
        loop = self._loop or asyncio.get_running_loop()
        return loop.create_task(
            self._await_handler(result, request), name=f"blip-{request.profile}-{request.number}"
        )

    def _handler_done(
        self, pending: asyncio.Future[Any], size: int, request: IncomingRequest | None
    ) -> None:
        self._handler_tasks.discard(pending)
        self._running_bytes -= size
        if request is not None and not pending.cancelled():
            failure = pending.exception()  # a future's failure not answered by its handler
            if failure is not None and not request.responded:
                self._handler_failed(request, failure)
        if self._queued:
            self._start_handlers()

    def _handler_failed(self, request: IncomingRequest, exc: BaseException | None = None) -> None:
        """A handler raised: log it and answer 500 (unless it answered already)."""
        log.error(
            "%s: handler for %r #%d failed",
            self.name,
            request.profile,
            request.number,
            exc_info=exc if exc is not None else True,
        )
        if not request.responded and not request.no_reply and not self.closed:
            request.respond_error("BLIP", 500, "unexpected exception in request handler")

    async def _await_handler(self, awaitable: Awaitable[None], request: IncomingRequest) -> None:
        try:
            await awaitable
        except Exception:
            self._handler_failed(request)

    async def _run_spooled(self, handler: Handler, message: Message) -> None:
        spool = message.spooled
        assert spool is not None
        # Read back for its handler, within the process's budget. Never waiting for room: a
        # handler may itself wait for replies (a blob), and those must never wait for it.
        size = spool.size
        if self.closed or not READ_BACK_BUDGET.try_take(size):
            spool.close()
            if not message.no_reply and not self.closed:
                self._send_error(message.number, "HTTP", 503, "too busy for a body this large")
            return
        try:
            try:
                message = await _read_spooled(message)
            except OSError as exc:
                number = message.number
                log.error("%s: cannot read back spooled request #%d: %s", self.name, number, exc)
                if not message.no_reply and not self.closed:
                    self._send_error(message.number, "HTTP", 507, "cannot read request body")
                return
            request = IncomingRequest(self, message)
            try:
                result = handler(request)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self._handler_failed(request)
        finally:
            READ_BACK_BUDGET.give_back(size)

    def _dispatch_response(self, number: int, message: Message) -> None:
        future = self._pending.pop(number, None)
        if future is None or future.done():
            if message.spooled is not None:
                message.spooled.close()
        else:  # a spooled body stays in its file: see IncomingResponse.spooled
            future.set_result(IncomingResponse(message, self._limits.max_ordinary_body))

    # --------------------------------------------------------------- output

    def _ensure_writer(self) -> None:
        if self._writer_task is None and not self.closed:
            self._writer_task = asyncio.create_task(
                self._write_loop(), name=f"blip-writer-{self.name}"
            )

    def _wake(self) -> None:
        self._drained.clear()
        self._wakeup.set()
        self._ensure_writer()

    async def _write_loop(self) -> None:
        protocol = self._protocol
        limits = self._limits
        try:
            while True:
                frame = protocol.next_frame()
                if frame is None:
                    if self._queued:
                        self._start_handlers()
                    if not protocol.has_pending_output:
                        self._drained.set()
                    self._wakeup.clear()
                    if not protocol.waiting_for_ack:
                        await self._wakeup.wait()
                        continue
                    acks = protocol.acks_received
                    try:
                        async with asyncio.timeout(limits.ack_timeout):
                            await self._wakeup.wait()
                        continue
                    except TimeoutError:
                        pass
                    if protocol.acks_received == acks and protocol.waiting_for_ack:
                        self._kill(
                            CLOSE_POLICY_VIOLATION,
                            f"no ACK from the peer for {limits.ack_timeout:g} s",
                        )
                        return
                    continue
                drain = self._write_frames(frame)
                if drain is not None and not getattr(self._ws, "paused", True):
                    del frame  # the transport takes more: nothing to wait for
                    if self._queued:
                        self._start_handlers()
                    continue
                self._sending = True
                try:
                    async with asyncio.timeout(limits.send_timeout):
                        if drain is not None:
                            await drain()
                        else:
                            await self._ws.send(frame)
                except TimeoutError:
                    self._kill(
                        CLOSE_POLICY_VIOLATION,
                        f"peer not reading: a frame waited {limits.send_timeout:g} s to be sent",
                    )
                    return
                finally:
                    self._sending = False
                del frame
                if self._queued:
                    self._start_handlers()
        except asyncio.CancelledError:
            raise
        except ConnectionClosed:
            self._drained.set()  # the reader loop sees the close and finishes the session
        except Exception:
            log.exception("%s: sending a BLIP frame failed", self.name)
            self._drained.set()
            with contextlib.suppress(Exception):
                await self._ws.close(_INTERNAL_ERROR, "BLIP send failed")

    def _write_frames(self, frame: bytes) -> Callable[[], Awaitable[None]] | None:
        """Write ``frame`` and the frames ready behind it (one WebSocket message each) to the
        transport, without waiting, and return the connection's ``drain``; ``None`` if the
        connection is not a ``websockets`` one (then the caller sends ``frame`` with ``send``).

        On a ``websockets`` connection the frames are framed by its sans-I/O protocol and
        written with ONE write; the caller waits for flow control (with its timeout) only when
        the transport is paused: a write, a ``send`` call and a timeout context per 1 KB frame
        were the largest costs of a pull and a push (profiles, issue 13).
        """
        target = _batch_target(self._ws)
        if target is None:
            return None
        wsproto, transport, drain = target
        protocol = self._protocol
        wsproto.send_binary(frame)
        for _ in range(WRITE_BATCH_FRAMES - 1):
            more = protocol.next_frame()
            if more is None:
                break
            wsproto.send_binary(more)
        chunks = wsproto.data_to_send()
        if all(chunks):
            transport.write(b"".join(chunks))
        else:  # pragma: no cover - an EOF marker: only after a close frame
            for chunk in chunks:
                if chunk:
                    transport.write(chunk)
        return drain

    # ---------------------------------------------------------------- close

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send the frames already queued (up to :data:`FLUSH_TIMEOUT` s), then close."""
        if self.closed:
            return
        self._closing = True
        self._read_room.set()
        if self._protocol.has_pending_output or self._sending:
            self._wake()
            try:
                await asyncio.wait_for(self._drained.wait(), FLUSH_TIMEOUT)
            except TimeoutError:
                log.warning("%s: closing with unsent BLIP frames", self.name)
        self._local_close = (code, reason)
        with contextlib.suppress(Exception):
            await self._ws.close(code, reason)
        self._finish(code, reason)

    async def wait_closed(self) -> None:
        """Wait until the connection is closed."""
        await self._closed_event.wait()

    async def _abort(self, code: int, reason: str) -> None:
        reason = reason.encode("utf-8")[:_MAX_REASON_BYTES].decode("utf-8", "ignore")
        self._closing = True
        self._local_close = (code, reason)
        self._finish(code, reason)
        with contextlib.suppress(Exception):
            await self._ws.close(code, reason)

    def _kill(self, code: int, reason: str) -> None:
        """Close at once, without a closing handshake: the peer is stuck, and a close frame
        would wait behind the full write buffer (as websockets' keepalive ping does)."""
        if self.closed:
            return
        log.warning("%s: closing: %s", self.name, reason)
        self._local_close = (code, reason)
        transport = getattr(self._ws, "transport", None)
        self._finish(code, reason)
        if transport is not None:
            transport.abort()
        else:  # pragma: no cover - every websockets connection has a transport
            asyncio.get_running_loop().create_task(self._ws.close(code, reason))

    def _connection_lost(self, exc: BaseException) -> None:
        if not isinstance(exc, ConnectionClosed):
            log.warning("%s: WebSocket receive failed: %r", self.name, exc)
        self._finish(*self._closed_status(exc))

    def _closed_status(self, exc: BaseException | None) -> tuple[int, str]:
        if self._local_close is not None:
            return self._local_close
        for frame in (getattr(exc, "rcvd", None), getattr(exc, "sent", None)):
            if frame is not None:
                return int(frame.code), str(frame.reason)
        code = getattr(self._ws, "close_code", None)
        reason = getattr(self._ws, "close_reason", None) or ""
        return (int(code) if code is not None else _ABNORMAL_CLOSURE), str(reason)

    def _finish(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self._closing = True
        self.close_code = code
        self.close_reason = reason
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(BLIPConnectionClosed(code, reason))
        writer, self._writer_task = self._writer_task, None  # its traceback would hold us
        if writer is not None and writer is not _current_task():
            writer.cancel()
        self._drained.set()
        self._closed_event.set()
        self._read_room.set()
        callbacks, self.on_close = self.on_close, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("%s: on_close callback failed", self.name)
        # Release at once what the connection held: buffered messages, and the handlers (bound
        # methods of the replicator, which holds this session: without this the pair and
        # everything they hold would live until the cyclic garbage collector runs).
        for message in self._queued:
            if message.spooled is not None:
                message.spooled.close()
        self._queued.clear()
        self._queued_bytes = 0
        self._handlers.clear()
        self._fallback = _not_found
        self._protocol.release()
        release_free_memory()

    def __repr__(self) -> str:
        state = f"closed {self.close_code}" if self.closed else "open"
        return f"<BLIPSession {self.name!r} {state}>"
