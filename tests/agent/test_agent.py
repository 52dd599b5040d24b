"""`fieldsync agent` end to end, in network namespaces: a phone namespace browses, connects and
watches while wlan0 appears, changes address, goes down, is unplugged, and the agent reloads
and stops. Needs the listener and the store; skipped while they are not importable."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.agent.netns import NetnsPair, NsProcess
from tests.support.pki import make_ca, write_pem

from fieldsync.agent.control import ControlError, query_status
from fieldsync.agent.passwords import hash_password
from fieldsync.listener.passwords import verify_password

EXAMPLE = Path(__file__).resolve().parents[2] / "board" / "fieldsync.toml.example"
SERVICE = "_fieldsync._tcp.local."


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: queue.Queue[list[str]] = queue.Queue()
        self.seen: list[list[str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            self.messages.put(data.decode().split("\n"))

    def expect(self, line: str, timeout: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                message = self.messages.get(timeout=remaining)
            except queue.Empty:
                break
            self.seen.append(message)
            if line in message:
                return message
        raise AssertionError(f"no {line!r} from the agent; saw {self.seen[-10:]}")

    def close(self) -> None:
        self.sock.close()


class AgentRun:
    """One ``fieldsync agent`` process in the device namespace, plus ways to look at it."""

    def __init__(self, netns: NetnsPair, workdir: Path, **settings: Any) -> None:
        self.netns = netns
        self.workdir = workdir
        self.config_path = workdir / "fieldsync.toml"
        self.control = workdir / "control.sock"
        self.write_config(**settings)
        self.notify = NotifySocket(workdir / "notify.sock")
        self.process: NsProcess | None = None

    def write_config(
        self,
        *,
        instance: str = "Agent Test",
        extra_listener: str = "",
        port: int = 4984,
        tls: bool = False,
        users: str = "",
        interface: str | None = "wlan0",
        top: str = "",
    ) -> None:
        self.config_path.write_text(
            f'control_socket = "{self.control}"\nlog_level = "debug"\n'
            f'keystore = "{self.workdir / "keys"}"\n{top}'
            "[listener]\n"
            + (f'interface = "{interface}"\n' if interface else "")
            + f"port = {port}\ntls = {'true' if tls else 'false'}\n{extra_listener}"
            f'[databases.inventory]\npath = "{self.workdir / "inventory"}"\n'
            f'[mdns]\ninstance_name = "{instance}"\n' + users
        )

    def start(self, **env: str) -> NsProcess:
        argv = self.netns.exec_argv(
            self.netns.device,
            sys.executable,
            "-m",
            "fieldsync",
            "agent",
            "--config",
            str(self.config_path),
        )
        self.process = NsProcess(argv, env={"NOTIFY_SOCKET": str(self.notify.path), **env})
        self.netns.processes.append(self.process)
        return self.process

    def status(self) -> tuple[int, str, dict[str, Any] | None]:
        """What ``fieldsync status --json`` says: exit code, stderr line, document."""
        result = subprocess.run(
            [sys.executable, "-m", "fieldsync", "status", "--json", "--socket", str(self.control)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        document = json.loads(result.stdout) if result.stdout.strip() else None
        return result.returncode, result.stderr.strip(), document

    def document(self) -> dict[str, Any] | None:
        """The status document, asked in-process (cheaper than the command for polling)."""
        try:
            return query_status(self.control)
        except ControlError:
            return None

    def wait_status(
        self, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float = 20.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        document: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            document = self.document()
            if document is not None and predicate(document):
                return document
            time.sleep(0.05)
        assert self.process is not None
        raise AssertionError(
            f"agent never reached: {what}; last status {document}; log tail:\n"
            + "\n".join(self.process.stderr_lines[-25:])
        )

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.signal(signum)


@pytest.fixture
def agent(netns: NetnsPair, tmp_path: Path) -> Iterator[AgentRun]:
    run = AgentRun(netns, tmp_path)
    try:
        yield run
    finally:
        run.notify.close()


def browse(netns: NetnsPair) -> NsProcess:
    browser = netns.start(netns.phone, "browse.py", SERVICE, "10.213.0.2")
    browser.expect(lambda m: m.get("event") == "ready", what="browser ready")
    return browser


def connect(netns: NetnsPair, address: str) -> NsProcess:
    client = netns.start(netns.phone, "ws_client.py", f"ws://{address}:4984/inventory/_blipsync")
    opened = client.expect(lambda m: m.get("event") in ("open", "error"), what="websocket open")
    assert opened == {"event": "open", "subprotocol": "BLIP_3+CBMobile_3"}
    return client


def fresh_resolve(browser: NsProcess, name: str, timeout: float = 15.0) -> dict[str, Any]:
    """Resolve ``name`` with an empty cache until the device answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        browser.send(json.dumps({"cmd": "fresh_resolve", "name": name}))
        answer = browser.expect(lambda m: m.get("event") in ("resolved", "unresolved"))
        if answer["event"] == "resolved":
            return answer
    raise AssertionError(f"{name} did not answer")


def serving(document: dict[str, Any]) -> bool:
    return document["state"] == "serving"


def v4(addresses: list[str]) -> list[str]:
    return [a for a in addresses if ":" not in a]


def event(kind: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m.get("event") == kind and all(m.get(k) == v for k, v in fields.items())


@pytest.mark.netns
def test_agent_waits_for_wlan0_follows_it_and_stops_cleanly(
    netns: NetnsPair, agent: AgentRun
) -> None:
    process = agent.start(WATCHDOG_USEC="200000")  # keep-alives every 0.1 s
    ready = agent.notify.expect("READY=1")
    agent.notify.expect("WATCHDOG=1")
    assert "STATUS=waiting-for-interface: waiting for interface wlan0" in ready
    code, reason, document = agent.status()
    assert code == 1
    assert reason == "fieldsync agent is waiting-for-interface: waiting for interface wlan0"
    assert document is not None and document["urls"] == []

    # wlan0 appears: the agent binds and advertises
    netns.create_wlan0("10.213.0.1/24")
    browser = browse(netns)
    document = agent.wait_status(
        lambda d: serving(d) and d["mdns"]["addresses"], "serving and advertised"
    )
    assert document["urls"] == ["ws://10.213.0.1:4984/inventory"]
    assert document["interface"] == "wlan0" and "10.213.0.1" in document["addresses"]
    assert document["tls"] is None
    assert document["databases"][0]["name"] == "inventory"
    assert document["databases"][0]["documents"] == 0
    assert agent.status()[0] == 0
    added = browser.expect(event("added"), what="service added")
    assert added["name"] == f"Agent Test.{SERVICE}"
    assert v4(added["addresses"]) == ["10.213.0.1"]
    assert added["port"] == 4984
    assert added["txt"] == {
        "dbs": "inventory",
        "tls": "0",
        "proto": "BLIP_3+CBMobile_4,BLIP_3+CBMobile_3,BLIP_3+CBMobile_2",
        "port": "4984",
    }
    client = connect(netns, "10.213.0.1")
    document = agent.wait_status(lambda d: len(d["connections"]) == 1, "one connection")
    assert document["connections"][0]["peer"].startswith("10.213.0.2:")

    # the address changes: URLs and the advertisement follow (the client leaves first: once
    # its server address is gone it could not even say goodbye)
    client.kill()
    agent.wait_status(lambda d: not d["connections"], "client gone")
    netns.ip(netns.device, "addr", "add", "10.213.1.1/24", "dev", "wlan0")
    netns.ip(netns.device, "addr", "del", "10.213.0.1/24", "dev", "wlan0")
    document = agent.wait_status(
        lambda d: (
            d["urls"] == ["ws://10.213.1.1:4984/inventory"]
            and v4(d["mdns"]["addresses"]) == ["10.213.1.1"]
        ),
        "rebound to 10.213.1.1",
    )
    assert serving(document)
    client = connect(netns, "10.213.1.1")

    # link down: advertisement withdrawn (no goodbye can cross a downed link); up again: back
    netns.ip(netns.device, "link", "set", "wlan0", "down")
    document = agent.wait_status(lambda d: d["state"] == "waiting-for-interface", "waiting")
    assert document["detail"] == "waiting for interface wlan0 (it is down)"
    assert document["mdns"]["addresses"] == []
    assert agent.status()[:2] == (
        1,
        "fieldsync agent is waiting-for-interface: waiting for interface wlan0 (it is down)",
    )
    netns.ip(netns.device, "link", "set", "wlan0", "up")
    agent.wait_status(lambda d: serving(d) and d["mdns"]["addresses"], "serving after up")
    answer = fresh_resolve(browser, f"Agent Test.{SERVICE}")
    assert v4(answer["addresses"]) == ["10.213.1.1"]

    # unplugged and plugged back in: a new interface, so a new listening socket
    client.kill()
    agent.wait_status(lambda d: not d["connections"], "client gone")
    netns.delete_wlan0()
    document = agent.wait_status(lambda d: d["state"] == "waiting-for-interface", "waiting (gone)")
    assert document["detail"] == "waiting for interface wlan0"
    assert document["urls"] == [] and document["mdns"]["addresses"] == []
    netns.create_wlan0("10.213.2.1/24")
    browser.kill()
    browser = browse(netns)  # the phone's interface was unplugged too
    agent.wait_status(
        lambda d: serving(d) and d["urls"] == ["ws://10.213.2.1:4984/inventory"],
        "serving on the new wlan0",
    )
    browser.expect(event("added"), what="service on the new wlan0")
    client = connect(netns, "10.213.2.1")
    agent.wait_status(lambda d: len(d["connections"]) == 1, "connection on the new wlan0")

    # SIGTERM: clients see 1001, the service says goodbye, exit 0
    agent.signal(signal.SIGTERM)
    assert client.expect(event("closed"), what="websocket closed")["code"] == 1001
    assert process.wait(20) == 0
    browser.expect(event("removed"), what="goodbye on stop")
    agent.notify.expect("STOPPING=1")
    assert not agent.control.exists()
    code, reason, _ = agent.status()
    assert code == 3 and "not running" in reason
    log = "\n".join(process.stderr_lines)
    assert "Traceback" not in log, log


@pytest.mark.netns
def test_agent_reload_restarts_only_what_changed(netns: NetnsPair, agent: AgentRun) -> None:
    netns.create_wlan0("10.213.0.1/24")
    browser = browse(netns)
    process = agent.start()
    agent.notify.expect("READY=1")
    agent.wait_status(lambda d: serving(d) and d["mdns"]["addresses"], "serving")
    browser.expect(event("added", name=f"Agent Test.{SERVICE}"), what="first name")
    client = connect(netns, "10.213.0.1")

    # a second agent on the same control socket is refused and changes nothing
    second = subprocess.run(
        netns.exec_argv(
            netns.device,
            sys.executable,
            "-m",
            "fieldsync",
            "agent",
            "--config",
            str(agent.config_path),
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert "another fieldsync agent" in second.stderr
    assert agent.status()[0] == 0

    # only the mDNS name changes: the listener (and the client's connection) stay
    agent.write_config(instance="Renamed Device")
    agent.signal(signal.SIGHUP)
    reloading = agent.notify.expect("RELOADING=1")
    assert any(line.startswith("MONOTONIC_USEC=") for line in reloading)
    agent.notify.expect("READY=1")
    browser.expect(event("added", name=f"Renamed Device.{SERVICE}"), what="renamed service")
    document = agent.wait_status(lambda d: d["mdns"]["name"] == "Renamed Device", "renamed")
    assert len(document["connections"]) == 1
    assert client.proc.poll() is None and not any(m.get("event") == "closed" for m in client.seen)

    # a broken file is reported and the running configuration kept
    agent.config_path.write_text(agent.config_path.read_text().replace("port = 4984", "port = 0"))
    agent.signal(signal.SIGHUP)
    agent.notify.expect("READY=1")
    document = agent.wait_status(lambda d: d["recent_errors"], "reload error recorded")
    assert "listener.port" in document["recent_errors"][-1]["message"]
    assert "keeping the running configuration" in document["recent_errors"][-1]["message"]
    assert serving(document) and len(document["connections"]) == 1

    # a listener setting changes: the listener restarts (clients see 1001) and serves again
    agent.write_config(instance="Renamed Device", extra_listener="read_only = true\n")
    agent.signal(signal.SIGHUP)
    assert client.expect(event("closed"), what="closed by restart")["code"] == 1001
    agent.notify.expect("READY=1")
    agent.wait_status(serving, "serving after the restart")
    connect(netns, "10.213.0.1")

    agent.signal(signal.SIGTERM)
    assert process.wait(20) == 0
    log = "\n".join(process.stderr_lines)
    assert "Traceback" not in log, log


@pytest.mark.netns
def test_agent_with_tls_advertises_the_fingerprint(netns: NetnsPair, agent: AgentRun) -> None:
    agent.write_config(tls=True)
    netns.create_wlan0("10.213.0.1/24")
    browser = browse(netns)
    process = agent.start()
    document = agent.wait_status(lambda d: serving(d) and d["mdns"]["addresses"], "serving")
    assert document["urls"] == ["wss://10.213.0.1:4984/inventory"]
    fingerprint = document["tls"]["fingerprint"]
    assert document["tls"]["alias"] == "fieldsync" and fingerprint and document["tls"]["expires"]
    added = browser.expect(event("added"), what="service added")
    assert added["txt"]["tls"] == "1"
    assert added["txt"]["fp"] == fingerprint.replace(":", "").lower()
    client = netns.start(
        netns.phone, "ws_client.py", "wss://10.213.0.1:4984/inventory/_blipsync", "--insecure"
    )
    assert client.expect(lambda m: "event" in m, what="open")["event"] == "open"
    agent.signal(signal.SIGTERM)
    assert process.wait(20) == 0


@pytest.mark.netns
def test_agent_checks_passwords(netns: NetnsPair, agent: AgentRun) -> None:
    stored = hash_password("s3cret")
    agent.write_config(users=f'[users]\nsurveyor = "{stored}"\n')
    netns.create_wlan0("10.213.0.1/24")
    process = agent.start()
    agent.wait_status(serving, "serving")
    refused = netns.start(netns.phone, "ws_client.py", "ws://10.213.0.1:4984/inventory/_blipsync")
    assert "401" in refused.expect(event("error"), what="refused")["error"]
    allowed = netns.start(
        netns.phone, "ws_client.py", "ws://surveyor:s3cret@10.213.0.1:4984/inventory/_blipsync"
    )
    assert allowed.expect(lambda m: "event" in m, what="open")["event"] == "open"
    agent.signal(signal.SIGTERM)
    assert process.wait(20) == 0


def write_ca(path: Path) -> None:
    """A self-signed CA certificate, PEM, as a field CA for client certificates."""
    write_pem(path, make_ca("fieldsync test CA", key_usage=False))


@pytest.mark.netns
def test_agent_on_all_interfaces_reports_a_bad_setting_until_reloaded(
    netns: NetnsPair, agent: AgentRun, tmp_path: Path
) -> None:
    roots = tmp_path / "field-ca.pem"
    agent.write_config(interface=None, tls=True, top=f'client_cert_roots = ["{roots}"]\n')
    netns.create_wlan0("10.213.0.1/24")
    process = agent.start()
    agent.notify.expect("READY=1")
    document = agent.wait_status(lambda d: d["state"] == "degraded", "degraded")
    assert f"client_cert_roots: cannot load {roots}" in document["detail"]
    assert document["urls"] == [] and document["interface"] is None
    code, reason, _ = agent.status()
    assert code == 1 and reason.startswith("fieldsync agent is degraded: listener not running:")

    write_ca(roots)
    agent.signal(signal.SIGHUP)
    document = agent.wait_status(serving, "serving after the fix")
    assert document["urls"] == ["wss://10.213.0.1:4984/inventory"]  # every interface
    assert document["tls"]["fingerprint"]
    # a client that trusts the server but has no certificate is turned away
    client = netns.start(
        netns.phone, "ws_client.py", "wss://10.213.0.1:4984/inventory/_blipsync", "--insecure"
    )
    refusal = client.expect(lambda m: "event" in m, what="refusal")
    assert refusal["event"] == "error", refusal
    assert "CERTIFICATE_VERIFY_FAILED" not in refusal["error"]  # the server refused, not us
    agent.signal(signal.SIGTERM)
    assert process.wait(20) == 0


# ------------------------------------------------------------------ the command itself


def run_agent_command(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fieldsync", "agent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
        env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"},
    )


def test_check_config_on_the_example() -> None:
    result = run_agent_command("--config", str(EXAMPLE), "--check-config")
    assert result.returncode == 0, result.stderr
    assert "listener  wlan0 port 4984, tls on (identity fieldsync)" in result.stdout


def test_invalid_configuration_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "fieldsync.toml"
    path.write_text('[listener]\nport = 99999\n[databases.a]\npath = "a"\n')
    for extra in ((), ("--check-config",)):
        result = run_agent_command("--config", str(path), *extra)
        assert result.returncode == 2
        assert f"{path}: listener.port: must be between 1 and 65535, not 99999" in result.stderr


def test_missing_configuration_file(tmp_path: Path) -> None:
    result = run_agent_command("--config", str(tmp_path / "none.toml"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_hash_password_from_stdin() -> None:
    result = run_agent_command("--hash-password", stdin="tr0ub4dor&3\n")
    assert result.returncode == 0, result.stderr
    stored = result.stdout.strip()
    assert verify_password(stored, "tr0ub4dor&3")
    assert not verify_password(stored, "tr0ub4dor&3\n")
    assert run_agent_command("--hash-password", stdin="\n").returncode == 1
