"""Following one network interface: its addresses now, and every change to it from rtnetlink.

:func:`lookup_interface` reads an interface's state (addresses through ``netifaces``, link flags
through ``SIOCGIFFLAGS``). :class:`InterfaceWatcher` subscribes a raw ``NETLINK_ROUTE`` socket to
link and address notifications, decodes them with the pure :func:`parse_netlink_messages`, and
after a short quiet period re-reads the interface and emits an :class:`InterfaceState` snapshot
whenever something relevant changed (link up/down, addresses added or removed, renames, the
interface appearing or vanishing). Where udev runs, hot-plug events from ``pyudev`` also trigger a
re-read; without udev that part is simply off.

The watched *target* is an interface name (``wlan0``), an IP address (whichever interface holds
it), or None (every interface but loopback).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

import netifaces
import pyudev

from fieldsync.listener.sockets import SO_BINDTODEVICE

log = logging.getLogger(__name__)

# rtnetlink constants (linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h)
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
IFLA_IFNAME = 3
IFLA_OPERSTATE = 16
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_LABEL = 3
IFA_FLAGS = 8
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_RUNNING = 0x40
SIOCGIFFLAGS = 0x8913

OPERSTATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")
ALL_INTERFACES = "*"

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")


# --------------------------------------------------------------------------- pure parsing


@dataclass(frozen=True)
class LinkMessage:
    """An RTM_NEWLINK / RTM_DELLINK notification."""

    deleted: bool
    index: int
    name: str | None
    flags: int
    operstate: str | None = None

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP) and bool(self.flags & IFF_RUNNING)


@dataclass(frozen=True)
class AddressMessage:
    """An RTM_NEWADDR / RTM_DELADDR notification."""

    deleted: bool
    index: int
    family: int
    prefixlen: int
    address: str | None
    label: str | None = None
    flags: int = 0


@dataclass(frozen=True)
class OverrunMessage:
    """The kernel dropped notifications (or sent an error): state must be re-read."""

    reason: str


NetlinkMessage = LinkMessage | AddressMessage | OverrunMessage


def parse_netlink_messages(data: bytes) -> list[NetlinkMessage]:
    """Decode one datagram from a NETLINK_ROUTE socket; messages of other types are skipped.

    Truncated or malformed input never raises: what cannot be read becomes an
    :class:`OverrunMessage`, which tells the reader to re-read the interface.
    """
    messages: list[NetlinkMessage] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            messages.append(OverrunMessage(f"truncated netlink message at byte {offset}"))
            break
        payload = data[offset + _NLMSGHDR.size : offset + length]
        offset += _align(length)
        if kind in (RTM_NEWLINK, RTM_DELLINK):
            message: NetlinkMessage | None = _parse_link(payload, kind == RTM_DELLINK)
        elif kind in (RTM_NEWADDR, RTM_DELADDR):
            message = _parse_address(payload, kind == RTM_DELADDR)
        elif kind == NLMSG_OVERRUN:
            message = OverrunMessage("netlink overrun")
        elif kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", payload) if len(payload) >= 4 else (0,)
            message = OverrunMessage(f"netlink error {-code}") if code else None
        else:
            message = None
        if message is not None:
            messages.append(message)
    if offset < len(data) and not messages:
        messages.append(OverrunMessage("short netlink datagram"))
    return messages


def parse_rtattrs(data: bytes) -> dict[int, bytes]:
    """Route attributes (type → value) from ``data``; a later duplicate wins."""
    attrs: dict[int, bytes] = {}
    offset = 0
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size or offset + length > len(data):
            break
        attrs[kind & 0x3FFF] = data[offset + _RTATTR.size : offset + length]
        offset += _align(length)
    return attrs


def _parse_link(payload: bytes, deleted: bool) -> NetlinkMessage:
    if len(payload) < _IFINFOMSG.size:
        return OverrunMessage("short ifinfomsg")
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(payload)
    attrs = parse_rtattrs(payload[_IFINFOMSG.size :])
    name = _cstring(attrs[IFLA_IFNAME]) if IFLA_IFNAME in attrs else None
    operstate = None
    if attrs.get(IFLA_OPERSTATE):
        code = attrs[IFLA_OPERSTATE][0]
        operstate = OPERSTATES[code] if code < len(OPERSTATES) else str(code)
    return LinkMessage(deleted=deleted, index=index, name=name, flags=flags, operstate=operstate)


def _parse_address(payload: bytes, deleted: bool) -> NetlinkMessage:
    if len(payload) < _IFADDRMSG.size:
        return OverrunMessage("short ifaddrmsg")
    family, prefixlen, flags, _scope, index = _IFADDRMSG.unpack_from(payload)
    attrs = parse_rtattrs(payload[_IFADDRMSG.size :])
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    address = None
    if raw is not None and len(raw) in (4, 16):
        address = str(ipaddress.ip_address(raw))
    if IFA_FLAGS in attrs and len(attrs[IFA_FLAGS]) >= 4:
        (flags,) = struct.unpack_from("=I", attrs[IFA_FLAGS])
    label = _cstring(attrs[IFA_LABEL]) if IFA_LABEL in attrs else None
    return AddressMessage(
        deleted=deleted,
        index=index,
        family=family,
        prefixlen=prefixlen,
        address=address,
        label=label,
        flags=flags,
    )


def _cstring(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _align(length: int) -> int:
    return (length + 3) & ~3


# --------------------------------------------------------------------------- snapshots


@dataclass(frozen=True)
class InterfaceState:
    """What the watched interface looks like right now."""

    name: str
    exists: bool
    up: bool = False
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    index: int = 0

    @property
    def addresses(self) -> tuple[str, ...]:
        """IPv4 then IPv6 addresses."""
        return self.ipv4 + self.ipv6

    @property
    def usable(self) -> bool:
        """Present, up and holding at least one address: something can listen on it."""
        return self.exists and self.up and bool(self.ipv4 or self.ipv6)

    def describe(self) -> str:
        """A short human phrase: ``wlan0 up 192.168.4.1``, ``wlan0 missing``."""
        if not self.exists:
            return f"{self.name} missing"
        if not self.up:
            return f"{self.name} down"
        return f"{self.name} up {' '.join(self.addresses) or '(no address)'}"


def lookup_interface(target: str | None) -> InterfaceState:
    """Read the current state of ``target`` (interface name, IP address, or None for all)."""
    if target is None or target == ALL_INTERFACES:
        return _lookup_all()
    try:
        ipaddress.ip_address(target)
    except ValueError:
        return _lookup_name(target)
    for name in netifaces.interfaces():
        state = _lookup_name(name)
        if target in state.addresses:
            return state
    return InterfaceState(name=target, exists=False)


def _lookup_name(name: str) -> InterfaceState:
    try:
        index = socket.if_nametoindex(name)
        flags = interface_flags(name)
        addrs = netifaces.ifaddresses(name)
    except (OSError, ValueError):
        return InterfaceState(name=name, exists=False)
    ipv4 = tuple(entry["addr"] for entry in addrs.get(netifaces.AF_INET, []) if entry.get("addr"))
    ipv6 = tuple(
        entry["addr"].split("%", 1)[0]
        for entry in addrs.get(netifaces.AF_INET6, [])
        if entry.get("addr")
    )
    up = bool(flags & IFF_UP) and bool(flags & IFF_RUNNING)
    return InterfaceState(name=name, exists=True, up=up, ipv4=ipv4, ipv6=ipv6, index=index)


def _lookup_all() -> InterfaceState:
    ipv4: list[str] = []
    ipv6: list[str] = []
    any_up = False
    for name in netifaces.interfaces():
        try:
            if interface_flags(name) & IFF_LOOPBACK:
                continue
        except OSError:
            continue
        state = _lookup_name(name)
        if state.up:
            any_up = True
            ipv4.extend(state.ipv4)
            ipv6.extend(state.ipv6)
    return InterfaceState(
        name=ALL_INTERFACES, exists=True, up=any_up, ipv4=tuple(ipv4), ipv6=tuple(ipv6)
    )


def interface_flags(name: str) -> int:
    """The ``IFF_*`` flags of interface ``name`` (OSError when it does not exist)."""
    request = struct.pack("16sH22x", name.encode()[:15], 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        result = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, request)
    return struct.unpack_from("16sH", result)[1]


def bind_socket_to_device(sock: socket.socket, ifname: str) -> None:
    """Restrict ``sock`` to interface ``ifname`` (``SO_BINDTODEVICE``; needs CAP_NET_RAW).

    A socket bound this way keeps working across address changes on the interface; only an
    interface that vanished and came back needs a new socket.
    """
    encoded = ifname.encode()
    if not encoded or len(encoded) > 15 or b"\0" in encoded:
        raise ValueError(f"{ifname!r} is not an interface name")
    sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, encoded + b"\0")


# --------------------------------------------------------------------------- watching


def open_rtnetlink_socket() -> socket.socket:
    """A non-blocking NETLINK_ROUTE socket subscribed to link and address changes."""
    sock = socket.socket(
        socket.AF_NETLINK,
        socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
        socket.NETLINK_ROUTE,
    )
    try:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
    except OSError:
        sock.close()
        raise
    return sock


StateCallback = Callable[[InterfaceState], Any]


@dataclass
class _Subscription:
    queue: asyncio.Queue[InterfaceState] = field(default_factory=asyncio.Queue)


class InterfaceWatcher:
    """Emits debounced :class:`InterfaceState` snapshots of one target as it changes.

    ``await start()`` opens the netlink socket and returns the first snapshot. Changes reach
    callbacks added with :meth:`add_callback` and every ``async for state in watcher`` loop
    (which first yields the current state). ``debounce`` is the quiet time after the last
    relevant event before the interface is re-read; a stream of events delays a re-read by at
    most four times that.
    """

    def __init__(
        self,
        target: str | None,
        *,
        debounce: float = 0.25,
        lookup: Callable[[str | None], InterfaceState] = lookup_interface,
        use_udev: bool | None = None,
    ) -> None:
        self.target = target
        self.debounce = debounce
        self._lookup = lookup
        self._use_udev = use_udev
        self._state: InterfaceState | None = None
        self._sock: socket.socket | None = None
        self._udev_monitor: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._first_pending: float | None = None
        self._callbacks: list[StateCallback] = []
        self._subscriptions: list[_Subscription] = []
        self._closed = False

    @property
    def state(self) -> InterfaceState:
        """The latest snapshot (RuntimeError before :meth:`start`)."""
        if self._state is None:
            raise RuntimeError("InterfaceWatcher.start() has not been awaited")
        return self._state

    @property
    def latest(self) -> InterfaceState | None:
        """The latest snapshot, or None before :meth:`start`."""
        return self._state

    @property
    def udev_active(self) -> bool:
        """Whether udev hot-plug events are being followed."""
        return self._udev_monitor is not None

    async def start(self) -> InterfaceState:
        """Subscribe to rtnetlink (before reading, so no change is missed) and read the state."""
        self._loop = asyncio.get_running_loop()
        self._sock = open_rtnetlink_socket()
        self._loop.add_reader(self._sock.fileno(), self._on_netlink_readable)
        if self._use_udev is not False:
            self._udev_monitor = _open_udev_monitor(required=bool(self._use_udev))
            if self._udev_monitor is not None:
                self._loop.add_reader(self._udev_monitor.fileno(), self._on_udev_readable)
        self._state = await self._read()
        log.debug("watching %s: %s", self._target_text, self._state.describe())
        return self._state

    async def close(self) -> None:
        """Stop watching; iterators end."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._loop is not None and self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        if self._loop is not None and self._udev_monitor is not None:
            self._loop.remove_reader(self._udev_monitor.fileno())
        self._udev_monitor = None
        for subscription in self._subscriptions:
            subscription.queue.put_nowait(_CLOSED)

    def add_callback(self, callback: StateCallback) -> Callable[[], None]:
        """Call ``callback(state)`` on every change; returns a function that removes it."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    async def __aiter__(self) -> AsyncGenerator[InterfaceState, None]:
        subscription = _Subscription()
        self._subscriptions.append(subscription)
        try:
            yield self.state
            while True:
                state = await subscription.queue.get()
                if state is _CLOSED:
                    return
                yield state
        finally:
            self._subscriptions.remove(subscription)

    async def wait_for(
        self, predicate: Callable[[InterfaceState], bool], timeout: float | None = None
    ) -> InterfaceState:
        """The first snapshot (the current one included) for which ``predicate`` holds."""

        async def first() -> InterfaceState:
            async with contextlib.aclosing(self.__aiter__()) as states:
                async for state in states:
                    if predicate(state):
                        return state
            raise RuntimeError("the interface watcher was closed")

        return await asyncio.wait_for(first(), timeout)

    def refresh(self) -> None:
        """Re-read the interface soon (debounced), as if a relevant event had arrived."""
        if self._closed or self._loop is None:
            return
        now = self._loop.time()
        if self._first_pending is None:
            self._first_pending = now
        delay = min(self.debounce, max(0.0, self._first_pending + 4 * self.debounce - now))
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(delay, self._on_timer)

    # ----------------------------------------------------------------- internals

    @property
    def _target_text(self) -> str:
        return self.target or "all interfaces"

    def _on_netlink_readable(self) -> None:
        assert self._sock is not None
        relevant = False
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    log.debug("rtnetlink overrun; re-reading %s", self._target_text)
                    relevant = True
                    continue
                log.warning("rtnetlink read failed: %s", exc)
                break
            if not data:
                break
            if any(self._is_relevant(message) for message in parse_netlink_messages(data)):
                relevant = True
        if relevant:
            self.refresh()

    def _on_udev_readable(self) -> None:
        monitor = self._udev_monitor
        if monitor is None:
            return
        while True:
            try:
                device = monitor.poll(timeout=0)
            except Exception as exc:
                log.debug("udev monitor read failed: %s", exc)
                break
            if device is None:
                break
            log.debug("udev %s %s", device.action, device.sys_name)
            self.refresh()

    def _is_relevant(self, message: NetlinkMessage) -> bool:
        if isinstance(message, OverrunMessage):
            return True
        target = self.target
        if target is None or target == ALL_INTERFACES:
            return True
        current = self._state
        index = current.index if current is not None and current.exists else None
        if message.index == index:
            return True
        if isinstance(message, LinkMessage):
            return message.name == target
        return message.address == target

    def _on_timer(self) -> None:
        self._timer = None
        self._first_pending = None
        if self._loop is not None and not self._closed:
            self._loop.create_task(self._reread())

    async def _read(self) -> InterfaceState:
        # getifaddrs and one ioctl: fast, and done on this thread so it sees this thread's
        # network namespace.
        return self._lookup(self.target)

    async def _reread(self) -> None:
        try:
            state = await self._read()
        except Exception:
            log.exception("reading %s failed", self._target_text)
            return
        if self._closed or state == self._state:
            return
        log.info("interface %s", state.describe())
        self._state = state
        for callback in list(self._callbacks):
            try:
                callback(state)
            except Exception:
                log.exception("interface callback %r failed", callback)
        for subscription in self._subscriptions:
            subscription.queue.put_nowait(state)


_CLOSED: Any = object()


def udev_available() -> bool:
    """Whether udev runs here (its runtime directory exists)."""
    return os.path.isdir("/run/udev")


def _open_udev_monitor(*, required: bool) -> Any:
    if not udev_available():
        if required:
            raise RuntimeError("udev is not running here (/run/udev does not exist)")
        return None
    try:
        monitor = pyudev.Monitor.from_netlink(pyudev.Context())
        monitor.filter_by(subsystem="net")
        monitor.start()
    except Exception as exc:
        if required:
            raise
        log.info("udev hot-plug events unavailable (%s); relying on rtnetlink", exc)
        return None
    return monitor
