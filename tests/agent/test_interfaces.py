"""Interface lookup and watching: the host's loopback read-only, everything else in namespaces."""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest
from tests.agent.netns import NetnsPair

from fieldsync.agent.interfaces import (
    SO_BINDTODEVICE,
    InterfaceState,
    bind_socket_to_device,
    lookup_interface,
)

pytestmark = pytest.mark.netns


def test_lookup_loopback() -> None:
    state = lookup_interface("lo")
    assert state.exists and state.up
    assert state.index == socket.if_nametoindex("lo")
    assert "127.0.0.1" in state.ipv4
    assert lookup_interface("127.0.0.1").name == "lo"


def test_lookup_missing_interface() -> None:
    state = lookup_interface("fs-nope0")
    assert state == InterfaceState(name="fs-nope0", exists=False)
    assert not state.usable
    assert state.describe() == "fs-nope0 missing"
    assert not lookup_interface("203.0.113.77").exists


def test_bind_socket_to_device() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        bind_socket_to_device(sock, "lo")
        bound = sock.getsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, 16)
        assert bound.rstrip(b"\0") == b"lo"
        with pytest.raises(OSError) as caught:
            bind_socket_to_device(sock, "fs-nope0")
        assert caught.value.errno == errno.ENODEV
        with pytest.raises(ValueError):
            bind_socket_to_device(sock, "x" * 16)


def is_state(**expected: Any) -> Any:
    def check(message: dict[str, Any]) -> bool:
        return message.get("event") == "state" and all(
            message.get(k) == v for k, v in expected.items()
        )

    return check


def test_watcher_follows_wlan0(netns: NetnsPair) -> None:
    watcher = netns.start(netns.device, "watch_interface.py", "wlan0")
    ready = watcher.expect(lambda m: m.get("event") == "ready", what="ready")
    assert ready["udev"] is False  # no udev here: optional and off
    first = watcher.expect(is_state(), what="first state")
    assert first["exists"] is False

    # appears (created, renamed to wlan0, addressed, brought up)
    netns.create_wlan0("10.213.0.1/24")
    up = watcher.expect(is_state(exists=True, up=True, ipv4=["10.213.0.1"]), what="wlan0 up")
    index = up["index"]
    assert index > 0

    # address added, then the old one removed: a DHCP-style change
    netns.ip(netns.device, "addr", "add", "10.213.1.1/24", "dev", "wlan0")
    watcher.expect(is_state(ipv4=["10.213.0.1", "10.213.1.1"]), what="second address")
    netns.ip(netns.device, "addr", "del", "10.213.0.1/24", "dev", "wlan0")
    watcher.expect(is_state(ipv4=["10.213.1.1"], up=True), what="old address gone")

    # link down and up again
    netns.ip(netns.device, "link", "set", "wlan0", "down")
    watcher.expect(is_state(exists=True, up=False), what="link down")
    netns.ip(netns.device, "link", "set", "wlan0", "up")
    watcher.expect(is_state(exists=True, up=True, ipv4=["10.213.1.1"]), what="link up")

    # all addresses removed
    netns.ip(netns.device, "addr", "flush", "dev", "wlan0")
    gone = watcher.expect(is_state(ipv4=[], ipv6=[]), what="no address")
    assert gone["exists"]

    # renamed away (wlan0 "vanishes") and back
    netns.ip(netns.device, "link", "set", "wlan0", "down")
    netns.ip(netns.device, "link", "set", "wlan0", "name", "wlan9")
    watcher.expect(is_state(exists=False), what="renamed away")
    netns.ip(netns.device, "link", "set", "wlan9", "name", "wlan0")
    back = watcher.expect(is_state(exists=True), what="renamed back")
    assert back["index"] == index

    # unplugged: the interface is deleted; a new one gets a new index
    netns.delete_wlan0()
    watcher.expect(is_state(exists=False), what="deleted")
    netns.create_wlan0("10.213.2.1/24")
    again = watcher.expect(is_state(exists=True, up=True, ipv4=["10.213.2.1"]), what="replugged")
    assert again["index"] != index


def test_watcher_by_address(netns: NetnsPair) -> None:
    netns.create_wlan0(None)
    watcher = netns.start(netns.device, "watch_interface.py", "10.213.0.1")
    watcher.expect(lambda m: m.get("event") == "ready", what="ready")
    watcher.expect(is_state(exists=False), what="address absent")
    netns.ip(netns.device, "addr", "add", "10.213.0.1/24", "dev", "wlan0")
    found = watcher.expect(is_state(exists=True, name="wlan0"), what="address present")
    assert "10.213.0.1" in found["ipv4"]
    netns.ip(netns.device, "addr", "del", "10.213.0.1/24", "dev", "wlan0")
    watcher.expect(is_state(exists=False), what="address removed")
