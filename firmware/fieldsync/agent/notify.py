"""The systemd notification protocol (``sd_notify``) over ``$NOTIFY_SOCKET``.

A service of ``Type=notify`` (or ``notify-reload``) reports ``READY=1`` when it serves,
``STATUS=…`` lines for ``systemctl status``, ``RELOADING=1`` / ``STOPPING=1`` around reloads and
shutdown, and ``WATCHDOG=1`` keep-alives at half of ``$WATCHDOG_USEC`` when ``WatchdogSec=`` is
set. Outside systemd (no ``$NOTIFY_SOCKET``) every call is a harmless no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends state changes to the service manager; a no-op when not run by systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.socket_path = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_usec = _watchdog_usec(env)
        self._sock: socket.socket | None = None
        self._watchdog_task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        """Whether there is a service manager to talk to."""
        return self.socket_path is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between keep-alives (half the watchdog timeout), or None without a watchdog."""
        if not self.watchdog_usec:
            return None
        return self.watchdog_usec / 2_000_000

    def notify(self, *fields: str, **named: object) -> bool:
        """Send ``KEY=value`` lines; returns False when nothing was sent.

        ``notify("READY=1")`` and ``notify(READY=1, STATUS="serving")`` are equivalent forms.
        Failures are logged, never raised: the service keeps running without its manager.
        """
        if self.socket_path is None:
            return False
        lines = [*fields, *(f"{key}={value}" for key, value in named.items())]
        payload = "\n".join(line.replace("\n", " ") for line in lines).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, self.socket_path)
        except OSError as exc:
            log.warning("sd_notify to %r failed: %s", self.socket_path, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """The service is up (also ends a reload)."""
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        """A one-line status shown by ``systemctl status``."""
        return self.notify(f"STATUS={text}")

    def reloading(self, status: str | None = None) -> bool:
        """A configuration reload began; end it with :meth:`ready`."""
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(
            "RELOADING=1",
            f"MONOTONIC_USEC={monotonic_usec}",
            *([f"STATUS={status}"] if status else []),
        )

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown began."""
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        """One keep-alive."""
        return self.notify("WATCHDOG=1")

    def start_watchdog(self) -> asyncio.Task[None] | None:
        """Send keep-alives from the running loop until :meth:`close`; None without a watchdog."""
        interval = self.watchdog_interval
        if interval is None or self.socket_path is None:
            return None
        if self._watchdog_task is None or self._watchdog_task.done():
            self._watchdog_task = asyncio.get_running_loop().create_task(
                self._keep_alive(interval), name="sd-watchdog"
            )
        return self._watchdog_task

    async def close(self) -> None:
        """Stop keep-alives and close the socket."""
        task, self._watchdog_task = self._watchdog_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _keep_alive(self, interval: float) -> None:
        while True:
            self.watchdog()
            await asyncio.sleep(interval)


def _socket_address(value: str) -> str | None:
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    log.warning("ignoring NOTIFY_SOCKET=%r: not a path or @abstract name", value)
    return None


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None  # the watchdog is meant for another process
        except ValueError:
            return None
    return usec
