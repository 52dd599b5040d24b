"""sd_notify over a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from fieldsync.agent.notify import SystemdNotifier


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket bound at a path, as systemd's notify socket."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_not_under_systemd_everything_is_a_no_op() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    assert notifier.ready("serving") is False
    assert notifier.watchdog_interval is None


def test_messages(manager: tuple[str, socket.socket]) -> None:
    path, sock = manager
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("serving on wlan0")
    assert received(sock) == ["READY=1", "STATUS=serving on wlan0"]
    assert notifier.status("waiting for interface wlan0\nsecond line")
    assert received(sock) == ["STATUS=waiting for interface wlan0 second line"]
    assert notifier.reloading()
    lines = received(sock)
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
    assert int(lines[1].split("=")[1]) > 0
    assert notifier.stopping()
    assert received(sock) == ["STOPPING=1"]
    assert notifier.watchdog()
    assert received(sock) == ["WATCHDOG=1"]
    assert notifier.notify(ERRNO=5)
    assert received(sock) == ["ERRNO=5"]


def test_abstract_socket_name() -> None:
    name = f"fieldsync-test-{secrets.token_hex(4)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert received(sock) == ["READY=1"]
    finally:
        sock.close()


def test_a_vanished_manager_is_logged_not_raised(tmp_path: Path) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.enabled
    assert notifier.ready() is False


def test_relative_socket_path_is_ignored() -> None:
    assert not SystemdNotifier({"NOTIFY_SOCKET": "notify"}).enabled


def test_watchdog_settings() -> None:
    pid = str(os.getpid())
    assert SystemdNotifier({"WATCHDOG_USEC": "10000000"}).watchdog_interval == 5.0
    assert SystemdNotifier({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": pid}).watchdog_usec
    other = SystemdNotifier({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None  # meant for another process
    assert SystemdNotifier({"WATCHDOG_USEC": "zero"}).watchdog_interval is None
    assert SystemdNotifier({"WATCHDOG_USEC": "0"}).watchdog_interval is None


async def test_watchdog_keep_alives(manager: tuple[str, socket.socket]) -> None:
    path, sock = manager
    sock.setblocking(False)
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "40000"})
    assert notifier.watchdog_interval == 0.02
    task = notifier.start_watchdog()
    assert task is not None
    loop = asyncio.get_running_loop()
    keep_alives = [(await asyncio.wait_for(loop.sock_recv(sock, 64), 5)) for _ in range(3)]
    assert keep_alives == [b"WATCHDOG=1"] * 3
    await notifier.close()
    assert task.done()


async def test_no_watchdog_task_without_watchdog(manager: tuple[str, socket.socket]) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": manager[0]})
    assert notifier.start_watchdog() is None
    await notifier.close()
