"""``fieldsync run`` and the agent present the same certificate for the same database, and
keystore problems are one clear line and exit status 1 (issue 10, issue 11 row 6).

Real processes, real keystores, real TLS handshakes on loopback: the fingerprint compared is
the one the server actually presents, read from the TLS handshake.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.waiting import wait_for

from fieldsync.agent.control import ControlError, query_status
from fieldsync.tls.identity import DEFAULT_SERVER_ALIAS, TLSIdentity
from fieldsync.tls.keystore import Keystore, generate_kek_file

pytestmark = pytest.mark.slow

TIMEOUT = 30.0
RUN = [sys.executable, "-m", "fieldsync", "run", "--port", "0", "--interface", "127.0.0.1"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def presented_fingerprint(port: int) -> str:
    """The SHA-256 of the certificate a TLS server on 127.0.0.1:port presents."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def same(fingerprint: str, other: str) -> bool:
    def norm(text: str) -> str:
        return text.replace(":", "").lower()

    return norm(fingerprint) == norm(other)


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    """Stop ``process`` (SIGTERM, then SIGKILL) and return its exit status and stderr."""
    if process.poll() is None:
        process.terminate()
    try:
        _out, err = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        _out, err = process.communicate()
    return process.returncode, err


class RunProcess:
    """``fieldsync run`` on loopback with an OS-chosen port."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [*RUN, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []

    def port(self) -> int:
        assert self.process.stdout is not None
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if "listening on port" in line:
                return int(line.rsplit(" ", 1)[1])
        raise AssertionError(f"fieldsync run did not start: {self.finish()}")

    def finish(self) -> tuple[int, str]:
        return finish(self.process)


@contextlib.contextmanager
def running(*args: str) -> Iterator[RunProcess]:
    run = RunProcess(*args)
    try:
        yield run
    finally:
        run.finish()


def run_fingerprint(db: Path, keystore: Path, *extra: str) -> str:
    with running("--db", str(db), "--keystore", str(keystore), *extra) as run:
        return presented_fingerprint(run.port())


def run_fails(*args: str) -> tuple[int, str]:
    result = subprocess.run(
        [*RUN, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    return result.returncode, result.stderr


class AgentProcess:
    """``fieldsync agent`` serving one database on 127.0.0.1 (no mDNS, no netns needed)."""

    def __init__(self, workdir: Path, db: Path, keystore: Path, top: str = "") -> None:
        self.control = workdir / "control.sock"
        self.config = workdir / "fieldsync.toml"
        self.config.write_text(
            f'control_socket = "{self.control}"\nkeystore = "{keystore}"\n{top}'
            f'[listener]\ninterface = "127.0.0.1"\nport = {free_port()}\ntls = true\n'
            f'[databases.{db.name}]\npath = "{db}"\n'
            "[mdns]\nenabled = false\n"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fieldsync", "agent", "--config", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def status(self) -> dict[str, object]:
        def serving() -> dict[str, object] | None:
            if self.process.poll() is not None:
                raise AssertionError(f"agent exited: {self.finish()}")
            with contextlib.suppress(ControlError):
                document = query_status(self.control)
                if document.get("state") in ("serving", "degraded") and document.get("tls"):
                    return document
            return None

        return wait_for(serving, timeout=TIMEOUT, what="the agent serving with TLS")

    def finish(self) -> tuple[int, str]:
        return finish(self.process)


def agent_fingerprint(workdir: Path, db: Path, keystore: Path, top: str = "") -> str:
    agent = AgentProcess(workdir, db, keystore, top)
    try:
        document = agent.status()
        port = document["port"]
        assert isinstance(port, int)
        presented = presented_fingerprint(port)
        tls = document["tls"]
        assert isinstance(tls, dict)
        assert same(str(tls["fingerprint"]), presented)
        return presented
    finally:
        code, err = agent.finish()
        assert code == 0, err


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Path]:
    """A database folder ``farm`` and a keystore folder (0700)."""
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    return tmp_path / "farm", keys


# -- one certificate, whoever serves ---------------------------------------------------------


def test_run_then_agent_present_the_same_certificate(tmp_path: Path, site: tuple[Path, Path]):
    db, keys = site
    first = run_fingerprint(db, keys)
    assert same(agent_fingerprint(tmp_path, db, keys), first)
    assert same(run_fingerprint(db, keys), first)


def test_agent_then_run_present_the_same_certificate(tmp_path: Path, site: tuple[Path, Path]):
    db, keys = site
    first = agent_fingerprint(tmp_path, db, keys)
    assert same(run_fingerprint(db, keys), first)


def test_a_keystore_from_an_older_run_keeps_its_certificate(
    tmp_path: Path, site: tuple[Path, Path]
):
    """Earlier ``fieldsync run`` labelled its identity ``listener-<db>``: it is adopted by
    both, not replaced (phones that pinned it keep working)."""
    db, keys = site
    old = TLSIdentity.anonymous_identity("listener-farm", keystore=keys)
    assert same(agent_fingerprint(tmp_path, db, keys), old.fingerprint_sha256)
    assert same(run_fingerprint(db, keys), old.fingerprint_sha256)


def test_a_keystore_from_an_older_agent_keeps_its_certificate(site: tuple[Path, Path]):
    """Earlier agents used the anonymous identity of their alias (``fieldsync``)."""
    db, keys = site
    old = TLSIdentity.anonymous_identity(DEFAULT_SERVER_ALIAS, keystore=keys)
    assert same(run_fingerprint(db, keys), old.fingerprint_sha256)


def test_server_identity_prefers_a_named_identity_and_adopts_once(tmp_path: Path) -> None:
    keys = Keystore(tmp_path / "keys")
    legacy = TLSIdentity.anonymous_identity("listener-a-b", keystore=keys)
    found = TLSIdentity.server_identity(keystore=keys, legacy_labels=["listener-a-b"])
    assert found.identity.fingerprint_sha256 == legacy.fingerprint_sha256
    assert found.replaced is None
    named = TLSIdentity.create_identity(
        True, {"CN": "site"}, alias=DEFAULT_SERVER_ALIAS, keystore=keys
    )
    again = TLSIdentity.server_identity(keystore=keys, legacy_labels=["listener-a-b"])
    assert again.identity.fingerprint_sha256 == named.fingerprint_sha256


# -- keystore problems: one line, exit 1 -----------------------------------------------------


def assert_one_line(stderr: str, *words: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    for word in words:
        assert word in lines[0], stderr


def test_run_refuses_an_unsafe_keystore_in_one_line(site: tuple[Path, Path]) -> None:
    db, keys = site
    keys.chmod(0o755)
    code, err = run_fails("--db", str(db), "--keystore", str(keys))
    assert code == 1
    assert_one_line(err, "fieldsync run: keystore:", "0755")


def test_run_refuses_a_keystore_owned_by_someone_else(site: tuple[Path, Path]) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the keystore away")
    db, keys = site
    os.chown(keys, 4242, 4242)
    code, err = run_fails("--db", str(db), "--keystore", str(keys))
    assert code == 1
    assert_one_line(err, "owned by uid 4242")


def test_run_refuses_a_symlinked_or_damaged_named_identity(
    tmp_path: Path, site: tuple[Path, Path]
) -> None:
    db, keys = site
    store = Keystore(keys)
    TLSIdentity.create_identity(True, {"CN": "device"}, alias="device", keystore=store)
    entry = store.entry_path("device")
    real = tmp_path / "elsewhere.entry"
    entry.rename(real)
    entry.symlink_to(real)
    code, err = run_fails("--db", str(db), "--keystore", str(keys), "--identity", "device")
    assert code == 1
    assert_one_line(err, "fieldsync run:", "device")

    entry.unlink()
    data = bytearray(real.read_bytes())
    data[len(data) // 2] ^= 0x40  # one flipped bit in the middle of the entry
    entry.write_bytes(bytes(data))
    entry.chmod(0o600)
    code, err = run_fails("--db", str(db), "--keystore", str(keys), "--identity", "device")
    assert code == 1
    assert_one_line(err, "fieldsync run:", "device")


def test_agent_refuses_an_unsafe_keystore_and_exits_1(tmp_path: Path, site: tuple[Path, Path]):
    db, keys = site
    keys.chmod(0o750)
    agent = AgentProcess(tmp_path, db, keys)
    try:
        code = agent.process.wait(timeout=TIMEOUT)
    finally:
        _code, err = agent.finish()
    assert code == 1
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "0750" in errors[0], err


def test_identity_command_reports_a_truncated_entry_in_one_line(site: tuple[Path, Path]):
    _db, keys = site
    store = Keystore(keys)
    TLSIdentity.create_identity(True, {"CN": "device"}, alias="device", keystore=store)
    entry = store.entry_path("device")
    entry.write_bytes(entry.read_bytes()[:100])
    for command in (["show", "device"], ["export", "device"]):
        result = subprocess.run(
            [sys.executable, "-m", "fieldsync", "identity", *command, "--keystore", str(keys)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert result.returncode == 1
        assert_one_line(result.stderr, "fieldsync identity", "device")


# -- encrypted keys ------------------------------------------------------------------------


def test_encrypted_identity_is_served_with_the_kek_file(tmp_path: Path, site: tuple[Path, Path]):
    db, keys = site
    kek = generate_kek_file(tmp_path / "kek")
    store = Keystore(keys, kek_file=kek)
    identity = TLSIdentity.create_identity(True, {"CN": "device"}, alias="device", keystore=store)
    assert b"ENCRYPTED" in store.entry_path("device").read_bytes()

    code, err = run_fails("--db", str(db), "--keystore", str(keys), "--identity", "device")
    assert code == 1
    assert_one_line(err, "fieldsync run:", "device")

    presented = run_fingerprint(db, keys, "--identity", "device", "--kek-file", str(kek))
    assert same(presented, identity.fingerprint_sha256)


def test_agent_serves_an_encrypted_named_identity(tmp_path: Path, site: tuple[Path, Path]):
    db, keys = site
    kek = generate_kek_file(tmp_path / "kek")
    identity = TLSIdentity.create_identity(
        True, {"CN": "device"}, alias=DEFAULT_SERVER_ALIAS, keystore=Keystore(keys, kek_file=kek)
    )
    presented = agent_fingerprint(tmp_path, db, keys, top=f'kek_file = "{kek}"\n')
    assert same(presented, identity.fingerprint_sha256)


# -- a replaced anonymous identity is never silent -------------------------------------------


def truncate_default_identity(keys: Path) -> None:
    store = Keystore(keys)
    TLSIdentity.anonymous_identity(DEFAULT_SERVER_ALIAS, keystore=store)
    entry = store.entry_path(TLSIdentity.anonymous_alias(DEFAULT_SERVER_ALIAS))
    entry.write_bytes(entry.read_bytes()[:200])


def test_run_says_loudly_that_it_replaced_the_identity(site: tuple[Path, Path]) -> None:
    db, keys = site
    truncate_default_identity(keys)
    with running("--db", str(db), "--keystore", str(keys)) as run:
        run.port()
        _code, err = run.finish()
    assert "ERROR" in err and "REPLACED" in err, err
    assert "Traceback" not in err


def test_status_shows_a_replaced_identity(tmp_path: Path, site: tuple[Path, Path]) -> None:
    db, keys = site
    truncate_default_identity(keys)
    agent = AgentProcess(tmp_path, db, keys)
    try:
        document = agent.status()
        tls = document["tls"]
        assert isinstance(tls, dict) and "REPLACED" in str(tls.get("replaced")), document
        assert document["state"] == "degraded"
        assert any("REPLACED" in str(e) for e in document["recent_errors"])  # type: ignore[union-attr]
        text = subprocess.run(
            [sys.executable, "-m", "fieldsync", "status", "--socket", str(agent.control)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        ).stdout
        assert "REPLACED" in text, text
        as_json = subprocess.run(
            [sys.executable, "-m", "fieldsync", "status", "--json", "--socket", str(agent.control)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        ).stdout
        assert "REPLACED" in json.loads(as_json)["tls"]["replaced"]
    finally:
        agent.finish()


def test_identity_command_refuses_an_unsafe_keystore_in_one_line(site: tuple[Path, Path]):
    _db, keys = site
    keys.chmod(0o755)
    result = subprocess.run(
        [sys.executable, "-m", "fieldsync", "identity", "list", "--keystore", str(keys)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 1
    assert_one_line(result.stderr, "fieldsync identity list", "0755")
