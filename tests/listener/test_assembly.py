"""The composition root turns `fieldsync run` options and the agent's settings into the same
listener configuration (here: the free-space reserve that guards pushes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fieldsync.agent.config import parse_config
from fieldsync.agent.service import Agent
from fieldsync.cli.main import build_parser
from fieldsync.cli.run import _settings
from fieldsync.listener.assembly import MIB, assemble
from fieldsync.store import Database


@pytest.fixture
def db(tmp_path: Path):
    with Database.open(tmp_path / "db") as database:
        yield database


def test_run_option_reaches_the_listener_configuration(db: Database) -> None:
    args = build_parser().parse_args(["run", "--no-tls", "--reserve-free-mb", "5"])
    built = assemble({"db": db}, _settings(args))
    assert built.configuration.min_free_bytes == 5 * MIB
    default = assemble({"db": db}, _settings(build_parser().parse_args(["run", "--no-tls"])))
    assert default.configuration.min_free_bytes is None  # the replicator's default reserve


def test_run_refuses_a_negative_reserve(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--reserve-free-mb", "-1"])
    assert "0 or more" in capsys.readouterr().err


def test_agent_setting_reaches_the_listener_configuration(db: Database, tmp_path: Path) -> None:
    config = parse_config(
        '[listener]\ntls = false\nreserve_free_mb = 0\n[databases.db]\npath = "db"\n',
        base_dir=tmp_path,
    )
    settings = Agent(config)._serve_settings()
    assert assemble({"db": db}, settings).configuration.min_free_bytes == 0  # no reserve


def _modules_after_build_parser(argv: list[str]) -> set[str]:
    """The modules a fresh interpreter holds after building the parser for ``argv``."""
    script = (
        "import json, sys\n"
        "from fieldsync.cli.main import build_parser\n"
        f"build_parser({argv!r})\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(done.stdout))


def test_a_subcommand_loads_only_its_own_module() -> None:
    """``fieldsync run`` does not carry the agent's mDNS library (memory, issue 13); without a
    subcommand every one is loaded, so ``fieldsync --help`` still lists them all."""
    run_only = _modules_after_build_parser(["-v", "run", "--no-tls"])
    assert "fieldsync.cli.run" in run_only
    assert "fieldsync.cli.agent" not in run_only
    assert "zeroconf" not in run_only
    every = _modules_after_build_parser([])
    assert {"fieldsync.cli.agent", "fieldsync.cli.status", "zeroconf"} <= every
    assert "status" in build_parser([]).format_help()


_SERVE_WITHOUT_TLS = """
import asyncio, json, sys
from pathlib import Path
from fieldsync.cli.main import build_parser
from fieldsync.cli.run import _settings
from fieldsync.listener import URLEndpointListener
from fieldsync.listener.assembly import assemble
from fieldsync.listener.auth import authenticate_request
from fieldsync.store import Database

async def serve(database):
    argv = ["run", "--no-tls", "--port", "0"]
    args = build_parser(argv).parse_args(argv)  # as `fieldsync run` builds it
    built = assemble({"db": database}, _settings(args))
    async with URLEndpointListener(built.configuration) as listener:
        assert listener.port
    authenticate_request(None)

with Database.open(Path(sys.argv[1])) as database:
    asyncio.run(serve(database))
print(json.dumps(sorted(sys.modules)))
"""


def test_a_listener_without_tls_never_loads_cryptography(tmp_path: Path) -> None:
    """``cryptography`` is ~9 MB of a ~45 MB process (issue 13): only TLS and client
    certificates load it, so a listener without TLS, started and stopped, holds no part of it."""
    done = subprocess.run(
        [sys.executable, "-c", _SERVE_WITHOUT_TLS, str(tmp_path / "db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    modules = set(json.loads(done.stdout))
    assert "fieldsync.listener.listener" in modules
    assert not {m for m in modules if m.split(".")[0] == "cryptography"}
    assert "fieldsync.tls.identity" not in modules


def test_the_certificate_authenticator_still_comes_from_the_auth_module() -> None:
    """Loaded on first use (PEP 562), it is the TLS package's class, and it is recognised."""
    from fieldsync.listener import auth
    from fieldsync.tls import client_auth

    assert auth.ListenerCertificateAuthenticator is client_auth.ListenerCertificateAuthenticator
    assert auth.CertificateCallback is client_auth.CertificateCallback
    authenticator = auth.ListenerCertificateAuthenticator(lambda chain: True)
    assert auth.is_certificate_authenticator(authenticator)
    assert not auth.is_certificate_authenticator(
        auth.ListenerPasswordAuthenticator(lambda user, password: True)
    )
    with pytest.raises(AttributeError):
        _ = auth.NoSuchName  # type: ignore[attr-defined]
