"""The control socket and `fieldsync status`, against a real Unix socket server."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pty
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fieldsync.agent.control import (
    AgentNotRunning,
    ControlError,
    ControlServer,
    empty_status,
    query_status,
)
from fieldsync.cli.status import (
    default_socket_path,
    format_bytes,
    format_duration,
    format_status,
    not_serving_reason,
)


def serving_document() -> dict[str, Any]:
    document = empty_status()
    document.update(
        state="serving",
        interface="wlan0",
        addresses=["192.168.4.1", "fe80::1"],
        port=4984,
        urls=["wss://192.168.4.1:4984/inventory"],
        tls={"alias": "fieldsync", "fingerprint": "ab" * 32, "expires": "2027-01-01T00:00:00"},
        mdns={
            "enabled": True,
            "name": "pump4",
            "type": "_fieldsync._tcp",
            "addresses": ["192.168.4.1"],
        },
        connections=[
            {
                "peer": "192.168.4.23:50412",
                "user": "surveyor",
                "since": datetime(2025, 5, 1, 10, 2, 3, tzinfo=UTC),
                "docs_in": 12,
                "docs_out": 3,
                "bytes_in": 48_200,
                "bytes_out": 900,
                "busy": True,
            }
        ],
        databases=[
            {
                "name": "inventory",
                "path": "/var/lib/fieldsync/db/inventory",
                "documents": 1234,
                "last_sequence": 5678,
            }
        ],
        uptime=7384.5,
    )
    return document


class ServerThread:
    """A ControlServer on its own event loop in a background thread."""

    def __init__(self, path: Path, provider: Callable[[], Any], **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = ControlServer(path, provider, **kwargs)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def stop(self) -> None:
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def document() -> dict[str, Any]:
    return serving_document()


@pytest.fixture
def control(tmp_path: Path, document: dict[str, Any]) -> Iterator[ServerThread]:
    server = ServerThread(tmp_path / "run" / "control.sock", lambda: document)
    server.call(server.server.start())
    yield server
    server.stop()


def run_status(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fieldsync", "status", *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


# ------------------------------------------------------------------ the socket


def test_query_returns_the_document(control: ServerThread) -> None:
    answer = query_status(control.server.path)
    assert answer["state"] == "serving"
    assert answer["connections"][0]["since"] == "2025-05-01T10:02:03+00:00"
    assert answer["tls"]["fingerprint"] == "ab" * 32
    assert set(empty_status()) <= set(answer)


def test_socket_mode_and_directory(control: ServerThread) -> None:
    info = control.server.path.stat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660


def test_socket_group(tmp_path: Path) -> None:
    try:
        group = grp.getgrnam("daemon")
    except KeyError:
        pytest.skip("no group 'daemon' to hand the socket to")
    server = ServerThread(tmp_path / "c.sock", empty_status, group="daemon")
    try:
        server.call(server.server.start())
        assert (tmp_path / "c.sock").stat().st_gid == group.gr_gid
    finally:
        server.stop()


def test_missing_group_leaves_the_socket_alone(tmp_path: Path) -> None:
    server = ServerThread(tmp_path / "c.sock", empty_status, group="no-such-group-fs")
    try:
        server.call(server.server.start())
        assert (tmp_path / "c.sock").stat().st_gid == os.getegid()
    finally:
        server.stop()


async def test_async_provider_and_unknown_request(tmp_path: Path) -> None:
    async def provider() -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"state": "starting"}

    server = ControlServer(tmp_path / "c.sock", provider)
    await server.start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "c.sock"))
        writer.write(b"status\n")
        assert json.loads(await reader.readline()) == {"state": "starting"}
        writer.close()
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "c.sock"))
        writer.write(b"shutdown\n")
        answer = json.loads(await reader.readline())
        assert "unknown request 'shutdown'" in answer["error"]
        writer.close()
    finally:
        await server.close()
    assert not (tmp_path / "c.sock").exists()


def test_failing_provider_gives_an_error_answer(tmp_path: Path) -> None:
    def provider() -> dict[str, Any]:
        raise RuntimeError("database is locked")

    server = ServerThread(tmp_path / "c.sock", provider)
    try:
        server.call(server.server.start())
        with pytest.raises(ControlError, match="database is locked"):
            query_status(tmp_path / "c.sock")
    finally:
        server.stop()


def test_missing_socket(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    with pytest.raises(AgentNotRunning) as caught:
        query_status(path)
    assert caught.value.strerror == f"fieldsync agent is not running (no control socket at {path})"


def test_stale_socket_is_reported_then_replaced(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()
    with pytest.raises(AgentNotRunning, match="stale control socket"):
        query_status(path)
    server = ServerThread(path, lambda: {"state": "serving"})
    try:
        server.call(server.server.start())
        assert query_status(path) == {"state": "serving"}
    finally:
        server.stop()


def test_a_second_agent_is_refused(control: ServerThread) -> None:
    other = ServerThread(control.server.path, empty_status)
    try:
        with pytest.raises(ControlError, match="another fieldsync agent"):
            other.call(other.server.start())
        assert query_status(control.server.path)["state"] == "serving"  # first one untouched
    finally:
        other.stop()


def test_a_regular_file_is_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    path.write_text("precious")
    server = ServerThread(path, empty_status)
    try:
        with pytest.raises(ControlError, match="not a socket"):
            server.call(server.server.start())
    finally:
        server.stop()
    assert path.read_text() == "precious"


def test_a_silent_server_times_out(tmp_path: Path) -> None:
    path = tmp_path / "silent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    try:
        with pytest.raises(ControlError, match="did not answer"):
            query_status(path, timeout=0.2)
    finally:
        listener.close()


# ------------------------------------------------------------------ fieldsync status


def test_status_summary_when_serving(control: ServerThread) -> None:
    result = run_status("--socket", str(control.server.path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "\x1b[" not in out  # piped: no colour
    assert out.splitlines()[0] == "fieldsync agent: serving, up 2h03m"
    assert "wlan0: 192.168.4.1, fe80::1, port 4984" in out
    assert "wss://192.168.4.1:4984/inventory" in out
    assert "sha256 " + "ab" * 32 in out
    assert '"pump4" _fieldsync._tcp on 192.168.4.1' in out
    assert "inventory  /var/lib/fieldsync/db/inventory  1234 docs, last sequence 5678" in out
    assert "192.168.4.23:50412  surveyor" in out
    assert "in 12 docs/48.2 kB" in out and "busy" in out
    assert result.stderr == ""


def test_status_json(control: ServerThread, document: dict[str, Any]) -> None:
    result = run_status("--socket", str(control.server.path), "--json")
    assert result.returncode == 0
    parsed = json.loads(result.stdout)
    assert parsed == json.loads(
        json.dumps(document, default=str).replace(
            "2025-05-01 10:02:03+00:00", "2025-05-01T10:02:03+00:00"
        )
    )


@pytest.mark.parametrize(
    ("state", "detail", "reason"),
    [
        (
            "waiting-for-interface",
            "waiting for interface wlan0",
            "fieldsync agent is waiting-for-interface: waiting for interface wlan0",
        ),
        ("degraded", "mDNS: no multicast", "fieldsync agent is degraded: mDNS: no multicast"),
        ("starting", "", "fieldsync agent is starting"),
        ("stopping", "stopping", "fieldsync agent is stopping: stopping"),
    ],
)
def test_status_not_serving_exits_1_with_one_line(
    control: ServerThread, document: dict[str, Any], state: str, detail: str, reason: str
) -> None:
    document.update(state=state, detail=detail)
    for extra in ((), ("--json",)):
        result = run_status("--socket", str(control.server.path), *extra)
        assert result.returncode == 1
        assert result.stderr == reason + "\n"
    assert json.loads(result.stdout)["state"] == state


def test_status_without_agent(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    for extra in ((), ("--json",)):
        result = run_status("--socket", str(path), *extra)
        assert result.returncode == 3
        assert result.stdout == ""
        assert result.stderr == f"fieldsync agent is not running (no control socket at {path})\n"


def test_status_socket_from_environment(control: ServerThread) -> None:
    result = run_status(env={"FIELDSYNC_CONTROL_SOCKET": str(control.server.path)})
    assert result.returncode == 0


def test_status_in_a_terminal_uses_colour(control: ServerThread) -> None:
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fieldsync", "status", "--socket", str(control.server.path)],
            stdout=secondary,
            stderr=secondary,
            stdin=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if k != "NO_COLOR"} | {"TERM": "xterm"},
        )
        os.close(secondary)
        secondary = -1
        output = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        assert proc.wait(30) == 0
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    assert b"\x1b[32mserving\x1b[0m" in output


def test_status_watch_repeats_until_interrupted(control: ServerThread) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fieldsync",
            "status",
            "--socket",
            str(control.server.path),
            "--watch",
            "0.05",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    frames = 0
    deadline = time.monotonic() + 30
    while frames < 3 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("fieldsync agent: serving"):
            frames += 1
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert frames == 3
    assert proc.returncode == 0


def test_watch_interval_must_be_positive() -> None:
    result = run_status("--watch", "0")
    assert result.returncode == 2
    assert "more than 0 seconds" in result.stderr


# ------------------------------------------------------------------ formatting helpers


def test_format_status_with_and_without_colour(document: dict[str, Any]) -> None:
    plain = format_status(document)
    coloured = format_status(document, colour=True)
    assert "\x1b[" not in plain
    assert "\x1b[32mserving\x1b[0m" in coloured
    document.update(
        state="degraded",
        tls=None,
        mdns={"enabled": False},
        connections=[],
        recent_errors=[{"time": "2025-05-01T10:00:00+00:00", "message": "boom"}],
    )
    text = format_status(document)
    assert "tls        off" in text
    assert "mdns       off" in text
    assert "2025-05-01T10:00:00+00:00  boom" in text


def test_not_serving_reason() -> None:
    assert not_serving_reason({"state": "serving"}) is None
    assert not_serving_reason({}) == "fieldsync agent is in an unknown state"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (61, "1m01s"), (3600, "1h00m"), (7384.5, "2h03m"), (90000, "1d01h")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_bytes() -> None:
    assert format_bytes(0) == "0 B"
    assert format_bytes(999) == "999 B"
    assert format_bytes(48_200) == "48.2 kB"
    assert format_bytes(3_200_000) == "3.2 MB"
    assert format_bytes(5e12) == "5000.0 GB"
    assert format_bytes(None) == "?"


def test_connections_without_byte_counts(document: dict[str, Any]) -> None:
    document["connections"][0].update(bytes_in=None, bytes_out=None)
    assert "in 12 docs  out 3 docs  busy" in format_status(document)


def test_default_socket_path(tmp_path: Path) -> None:
    config = tmp_path / "fieldsync.toml"
    config.write_text(f'control_socket = "{tmp_path}/c.sock"\n[databases.a]\npath = "a"\n')
    env = {"FIELDSYNC_CONFIG": str(config)}
    assert default_socket_path(env) == f"{tmp_path}/c.sock"
    assert default_socket_path({**env, "FIELDSYNC_CONTROL_SOCKET": "/x.sock"}) == "/x.sock"
    config.write_text("not toml [")
    assert default_socket_path(env) == "/run/fieldsync/control.sock"
    assert default_socket_path({"FIELDSYNC_CONFIG": str(tmp_path / "none")}) == (
        "/run/fieldsync/control.sock"
    )


def test_status_finds_the_socket_through_the_config_file(
    control: ServerThread, tmp_path: Path
) -> None:
    config = tmp_path / "fieldsync.toml"
    config.write_text(f'control_socket = "{control.server.path}"\n[databases.a]\npath = "a"\n')
    env = {k: v for k, v in os.environ.items() if k != "FIELDSYNC_CONTROL_SOCKET"}
    result = subprocess.run(
        [sys.executable, "-m", "fieldsync", "status"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**env, "FIELDSYNC_CONFIG": str(config)},
    )
    assert result.returncode == 0, result.stderr
