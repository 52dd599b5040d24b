"""Listening sockets: bound to an address, or to a network interface by name.

Binding to an interface uses ``SO_BINDTODEVICE`` on the wildcard address, so the listener keeps
working when the interface's addresses change; only a vanished interface needs a new socket.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from dataclasses import dataclass

import netifaces

from fieldsync.errors import FieldsyncError

SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


class InterfaceError(FieldsyncError, OSError):
    """A network interface that does not exist or cannot be bound to."""


@dataclass(frozen=True)
class BindTarget:
    """Where a listener listens: an address, or every address of one interface."""

    address: str | None = None  # None: the wildcard address
    interface: str | None = None

    @classmethod
    def parse(cls, network_interface: str | None) -> BindTarget:
        """``None`` → all interfaces; an IP address → that address; otherwise an interface name."""
        if not network_interface:
            return cls()
        try:
            ipaddress.ip_address(network_interface)
        except ValueError:
            return cls(interface=network_interface)
        return cls(address=network_interface)


def interface_exists(name: str) -> bool:
    return name in netifaces.interfaces()


def bind_socket_to_device(sock: socket.socket, interface: str) -> None:
    """Restrict ``sock`` to packets of ``interface`` (needs CAP_NET_RAW)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode() + b"\0")
    except OSError as exc:
        raise InterfaceError(
            exc.errno, f"cannot bind to interface {interface!r}: {exc.strerror}"
        ) from exc


def open_listening_socket(
    target: BindTarget, port: int, *, reuse_port: bool = False, listen: bool = True
) -> socket.socket:
    """A listening TCP socket for ``target`` (dual-stack IPv6 where possible).

    ``reuse_port``: several processes' sockets share the port and the kernel spreads new
    connections over those listening (``SO_REUSEPORT``: worker processes). ``listen=False``
    only reserves the port (a socket that never listens gets no connections); the port must
    then be free, as without workers: a socket with ``SO_REUSEPORT`` would otherwise join the
    group of another server already on it and take some of its phones."""
    if target.interface is not None and not interface_exists(target.interface):
        raise InterfaceError(f"network interface {target.interface!r} does not exist")
    if reuse_port and not listen and port:
        _bound(target, port, reuse_port=False).close()  # EADDRINUSE if anyone has it
    sock = _bound(target, port, reuse_port=reuse_port)
    try:
        if listen:
            sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _bound(target: BindTarget, port: int, *, reuse_port: bool) -> socket.socket:
    host = target.address
    family = socket.AF_INET
    if host is None:
        family = socket.AF_INET6 if socket.has_ipv6 and _ipv6_enabled() else socket.AF_INET
        host = "::" if family == socket.AF_INET6 else "0.0.0.0"
    elif ":" in host:
        family = socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and target.address is None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if target.interface is not None:
            bind_socket_to_device(sock, target.interface)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _ipv6_enabled() -> bool:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        return True
    return False


def interface_addresses(interface: str) -> list[str]:
    """The usable addresses of one interface (IPv6 link-local left out)."""
    try:
        info = netifaces.ifaddresses(interface)
    except ValueError:
        return []
    result = [a["addr"] for a in info.get(netifaces.AF_INET, []) if a.get("addr")]
    for entry in info.get(netifaces.AF_INET6, []):
        address = entry.get("addr", "").split("%", 1)[0]
        if address and not ipaddress.IPv6Address(address).is_link_local:
            result.append(address)
    return result


def usable_addresses(target: BindTarget) -> list[str]:
    """The addresses a client can reach the listener at, for its ``urls``."""
    if target.address is not None:
        return [target.address]
    if target.interface is not None:
        return interface_addresses(target.interface)
    addresses: list[str] = []
    loopback: list[str] = []
    for name in netifaces.interfaces():
        for address in interface_addresses(name):
            (loopback if ipaddress.ip_address(address).is_loopback else addresses).append(address)
    return addresses or loopback


def format_url(scheme: str, address: str, port: int, database: str) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{scheme}://{host}:{port}/{database}"
