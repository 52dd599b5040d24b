"""Progress lines (fieldsync.progress), and the commands that use them or print pairing codes:
``fieldsync run`` (QR code of its URLs), ``fieldsync sync`` (documents, bytes and rate), and
``fieldsync identity export --qr FILE.png`` — with real processes, sockets and files."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from fieldsync.cli.main import main
from fieldsync.pairing import decode
from fieldsync.progress import Progress, format_bytes, format_progress
from fieldsync.store import Database
from fieldsync.tls.identity import TLSIdentity


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_format_progress():
    assert format_progress("pull", 1200, 3_400_000, 4.0) == (
        "pull: 1.2k docs, 3.4 MB, 300 docs/s, 850.0 kB/s, 4s"
    )
    assert format_progress("compact", 5, None, 0.0, unit="pages", total=20) == (
        "compact: 5/20 pages (25%), 0s"
    )
    assert format_bytes(999) == "999 B" and format_bytes(1_500_000_000) == "1.5 GB"


def test_progress_into_a_log_writes_a_line_per_interval_and_the_final_one():
    clock, out = FakeClock(), io.StringIO()
    progress = Progress("push", out=out, log_interval=5, clock=clock)
    for step in range(1, 21):
        clock.now += 1
        progress.update(step * 10, step * 1000)
    progress.finish()
    lines = out.getvalue().splitlines()
    assert lines == [
        "push: 50 docs, 5.0 kB, 10 docs/s, 1.0 kB/s, 5s",
        "push: 100 docs, 10.0 kB, 10 docs/s, 1.0 kB/s, 10s",
        "push: 150 docs, 15.0 kB, 10 docs/s, 1.0 kB/s, 15s",
        "push: 200 docs, 20.0 kB, 10 docs/s, 1.0 kB/s, 20s",
        "push: 200 docs, 20.0 kB, 10 docs/s, 1.0 kB/s, 20s",
    ]


def test_progress_on_a_terminal_rewrites_one_line():
    clock, out = FakeClock(), Tty()
    progress = Progress("pull", out=out, interval=0.25, clock=clock)
    progress.update(1, 10)
    clock.now += 1
    progress.update(1000, 10_000)
    progress.finish()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert text.split("\r")[1:] == [
        "pull: 1 docs, 10 B, 0s",
        "pull: 1.0k docs, 10.0 kB, 1.0k docs/s, 10.0 kB/s, 1s",
        "pull: 1.0k docs, 10.0 kB, 1.0k docs/s, 10.0 kB/s, 1s\n",
    ]


def _fieldsync(*argv: str, **kw) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "fieldsync", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kw,
    )


def test_run_prints_a_pairing_code_and_sync_shows_progress(tmp_path):
    served = tmp_path / "farm"
    local = tmp_path / "phone"
    with Database.open(local, create=True) as db:
        for i in range(300):
            db.default_collection.save_document(f"doc-{i}", {"n": i, "pad": "x" * 200})
    server = _fieldsync(
        "run", "--db", str(served), "--name", "farm", "--no-tls", "--port", "0",
        "--interface", "127.0.0.1",
    )  # fmt: skip
    try:
        assert server.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = server.stdout.readline()
            assert line, "fieldsync run ended:\n" + "".join(lines) + server.stderr.read()
            lines.append(line)
            if line.startswith('{"fieldsync":1'):
                break
        payload = lines[-1].strip()
        info = decode(payload)
        assert info.databases == ("farm",) and info.sha256 is None
        (url,) = info.urls
        assert re.fullmatch(r"ws://127\.0\.0\.1:\d+/farm", url), url
        text = "".join(lines)
        assert "pairing code" in text and "\u2588" in text  # the QR code drawn above it

        sync = _fieldsync("sync", "push", url, "--db", str(local))
        out, err = sync.communicate(timeout=120)
        assert sync.returncode == 0, out + err
        assert "300 pushed" in out
        # not a terminal: progress lines (at most one per 5 s) and always the final one
        final = err.strip().splitlines()[-1]
        assert re.fullmatch(r"push: 300 docs, [\d.]+ [kM]?B, [\d.]+k? docs/s, .*/s, \d+s", final)
    finally:
        server.terminate()
        server.wait(timeout=30)
    with Database.open(served, create=False) as db:
        assert db.default_collection.count() == 300


def test_identity_export_qr_png(tmp_path, capsys):
    if shutil.which("zbarimg") is None:
        pytest.skip("needs zbarimg (apt-get install zbar-tools; listed in .ci/system-packages)")
    keystore = tmp_path / "keys"
    argv = ["identity", "create", "--keystore", str(keystore), "--alias", "dev", "--cn", "dev"]
    assert main([*argv, "--key-type", "ec"]) == 0
    capsys.readouterr()
    png = tmp_path / "pair.png"
    url = "wss://192.168.4.1:4984/farm"
    status = main(
        ["identity", "export", "dev", "--keystore", str(keystore), "--qr", str(png), "--url", url]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    identity = TLSIdentity.get_identity("dev", keystore=keystore)
    assert identity is not None
    decoded = (
        subprocess.run(
            ["zbarimg", "--quiet", "--raw", "-Sbinary", str(png)], capture_output=True, check=True
        )
        .stdout.decode()
        .removesuffix("\n")
    )
    info = decode(decoded)
    assert info.urls == (url,) and info.databases == ("farm",)
    assert info.sha256 == identity.fingerprint_sha256_raw.hex()
    assert decoded in out


def test_identity_export_qr_without_urls_says_what_to_do(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FIELDSYNC_CONTROL_SOCKET", str(tmp_path / "no-agent.sock"))
    keystore = tmp_path / "keys"
    argv = ["identity", "create", "--keystore", str(keystore), "--alias", "dev", "--cn", "dev"]
    assert main([*argv, "--key-type", "ec"]) == 0
    capsys.readouterr()
    png = tmp_path / "pair.png"
    status = main(["identity", "export", "dev", "--keystore", str(keystore), "--qr", str(png)])
    captured = capsys.readouterr()
    assert status == 1
    assert "give --url" in captured.out + captured.err
    assert not png.exists()
