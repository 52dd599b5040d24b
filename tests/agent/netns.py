"""Throw-away network namespaces for agent tests, and helper processes running inside them.

Everything happens inside namespaces made here: the veth pair is created inside the device
namespace with its peer placed straight into the phone namespace, so the host's own interfaces and
multicast traffic are never touched. ``NetnsPair.close()`` deletes both namespaces (and with them
every interface and process socket inside).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HELPERS = Path(__file__).parent / "helpers"
DEVICE_SUBNET = "10.213.{}.{}"


def netns_unavailable_reason() -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing"
    return None


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=30)


class NetnsPair:
    """Namespace ``device`` (where wlan0 lives) and ``phone`` (the other end of the veth)."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.device = f"fs-test-{tag}-d"
        self.phone = f"fs-test-{tag}-p"
        self.peer = "phone0"
        self.processes: list[NsProcess] = []
        run("ip", "netns", "add", self.device)
        try:
            run("ip", "netns", "add", self.phone)
            for ns in (self.device, self.phone):
                run("ip", "-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ interface plumbing

    def ip(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ip", "-n", ns, *args, check=check)

    def create_wlan0(self, address: str | None = "10.213.0.1/24", *, up: bool = True) -> None:
        """A veth pair: ``wlan0`` in the device namespace, ``phone0`` in the phone namespace.

        ``phone0`` holds 10.213.N.2/24 for N in 0..3, so the device may move between those
        subnets and stay reachable.
        """
        self.ip(
            self.device,
            "link",
            "add",
            "fsveth0",
            "type",
            "veth",
            "peer",
            "name",
            self.peer,
            "netns",
            self.phone,
        )
        self.ip(self.device, "link", "set", "fsveth0", "name", "wlan0")
        for subnet in range(4):  # the phone can reach the device in 10.213.0-3.0/24
            self.ip(self.phone, "addr", "add", f"10.213.{subnet}.2/24", "dev", self.peer)
        self.ip(self.phone, "link", "set", self.peer, "up")
        if address:
            self.ip(self.device, "addr", "add", address, "dev", "wlan0")
        if up:
            self.ip(self.device, "link", "set", "wlan0", "up")

    def delete_wlan0(self) -> None:
        self.ip(self.device, "link", "del", "wlan0")

    def exec_argv(self, ns: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def start(
        self, ns: str, script: str, *args: str, env: dict[str, str] | None = None
    ) -> NsProcess:
        """Run ``helpers/<script>`` with this Python inside namespace ``ns``."""
        argv = self.exec_argv(ns, sys.executable, str(HELPERS / script), *args)
        process = NsProcess(argv, env=env)
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in self.processes:
            process.kill()
        for ns in (self.device, self.phone):
            run("ip", "netns", "del", ns, check=False)


class NsProcess:
    """A helper process speaking JSON lines on stdout; commands go to its stdin."""

    def __init__(self, argv: list[str], *, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
            start_new_session=True,
        )
        self.lines: queue.Queue[Any] = queue.Queue()
        self.seen: list[Any] = []
        self.stderr_lines: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                self.lines.put(json.loads(line))
            except json.JSONDecodeError:
                self.lines.put({"raw": line})
        self.lines.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip())

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(
        self, predicate: Callable[[Any], bool], timeout: float = 15.0, what: str = ""
    ) -> Any:
        """The first new message matching ``predicate``; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                message = self.lines.get(timeout=remaining)
            except queue.Empty:
                break
            if message is None:
                self.lines.put(None)
                break
            self.seen.append(message)
            if predicate(message):
                return message
        raise AssertionError(
            f"no message {what or 'matching'} from {self.argv[-1]!r} within {timeout} s; "
            f"saw {self.seen[-8:]}; exit={self.proc.poll()}; stderr tail: "
            + "\n".join(self.stderr_lines[-15:])
        )

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signum)

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(Exception):
                if stream:
                    stream.close()


AVAHI_TOOLS = ("avahi-daemon", "avahi-browse", "dbus-daemon")

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""

_AVAHI_CONFIG = """[server]
host-name=fs-test-phone
use-ipv4=yes
use-ipv6=no
allow-interfaces={interface}
enable-dbus=yes
ratelimit-interval-usec=1000000
ratelimit-burst=1000
[publish]
publish-addresses=no
publish-hinfo=no
publish-workstation=no
publish-domain=no
"""


def avahi_unavailable_reason() -> str | None:
    missing = [tool for tool in AVAHI_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install avahi-daemon avahi-utils dbus)"
    return None


class Avahi:
    """A private D-Bus system bus and an avahi-daemon inside the phone namespace."""

    def __init__(self, pair: NetnsPair, workdir: Path) -> None:
        self.pair = pair
        self.bus_socket = workdir / "system_bus_socket"
        (workdir / "bus.conf").write_text(_BUS_CONFIG.format(socket=self.bus_socket))
        (workdir / "avahi.conf").write_text(_AVAHI_CONFIG.format(interface=pair.peer))
        self.env = {"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={self.bus_socket}"}
        self.dbus = NsProcess(
            pair.exec_argv(
                pair.phone,
                "dbus-daemon",
                f"--config-file={workdir / 'bus.conf'}",
                "--nofork",
                "--print-address",
            )
        )
        pair.processes.append(self.dbus)
        self.dbus.expect(
            lambda m: "raw" in m and "unix:path" in m["raw"], timeout=15, what="dbus address"
        )
        # A tmpfs over /run inside this mount namespace (ip netns exec makes its mounts private)
        # keeps avahi's pid file away from the host's /run.
        script = (
            "mount -t tmpfs fs-test-run /run && mkdir -p /run/avahi-daemon && "
            f"exec avahi-daemon -f {workdir / 'avahi.conf'} --no-drop-root --no-chroot "
            "--no-rlimits"
        )
        self.daemon = NsProcess(pair.exec_argv(pair.phone, "sh", "-c", script), env=self.env)
        pair.processes.append(self.daemon)
        deadline = time.monotonic() + 20
        while not any("Server startup complete" in line for line in self.daemon.stderr_lines):
            if self.daemon.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "avahi-daemon did not start: " + "\n".join(self.daemon.stderr_lines[-10:])
                )
            time.sleep(0.05)

    def browse(self, service_type: str) -> list[dict[str, Any]]:
        """One ``avahi-browse -rpt`` run: the resolved services it knows now."""
        result = subprocess.run(
            self.pair.exec_argv(self.pair.phone, "avahi-browse", "-rpt", service_type),
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, **self.env},
        )
        services = []
        for line in result.stdout.splitlines():
            fields = line.split(";")
            if fields[0] != "=" or len(fields) < 10:
                continue
            services.append(
                {
                    "interface": fields[1],
                    "name": _avahi_unescape(fields[3]),
                    "type": fields[4],
                    "host": fields[6],
                    "address": fields[7],
                    "port": int(fields[8]),
                    "txt": sorted(t.strip('"') for t in fields[9].split('" "') if t),
                }
            )
        return services

    def wait_for(
        self,
        service_type: str,
        predicate: Callable[[list[dict[str, Any]]], bool],
        timeout: float = 20.0,
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        services: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            services = self.browse(service_type)
            if predicate(services):
                return services
            time.sleep(0.3)
        raise AssertionError(f"avahi-browse never saw what was expected; last: {services}")


def _avahi_unescape(text: str) -> str:
    import re

    return re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1))), text).replace("\\.", ".")
