"""Pairing payload and QR codes: the payload round-trips, bad payloads are refused, and the QR
codes (PNG from ``identity export --qr``, terminal from ``status --qr``) decode back to the exact
payload with a real decoder (zbarimg, Debian's zbar-tools)."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest

from fieldsync.pairing import (
    PairingError,
    decode,
    encode,
    from_status,
    pairing_info,
    print_terminal,
    write_png,
)

FINGERPRINT = ":".join(["AB", "0F"] * 16)  # the 95-character form of the status document
STATUS = {
    "state": "serving",
    "urls": ["wss://192.168.4.1:4984/farm", "wss://[fe80::1%25wlan0]:4984/farm"],
    "databases": [{"name": "farm", "path": "/var/lib/fieldsync/db/farm.sqlite"}],
    "tls": {"alias": "fieldsync", "fingerprint": FINGERPRINT},
}


def zbarimg(path: Path) -> str:
    if shutil.which("zbarimg") is None:
        pytest.skip("needs zbarimg (apt-get install zbar-tools; listed in .ci/system-packages)")
    result = subprocess.run(
        ["zbarimg", "--quiet", "--raw", "-Sbinary", str(path)], capture_output=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.decode("utf-8").removesuffix("\n")


def test_payload_from_status_is_compact_json_and_round_trips():
    info = from_status(STATUS)
    payload = encode(info)
    assert payload == (
        '{"fieldsync":1,"urls":["wss://192.168.4.1:4984/farm","wss://[fe80::1%25wlan0]:4984/farm"],'
        '"db":["farm"],"sha256":"' + "ab0f" * 16 + '"}'
    )
    assert decode(payload) == info
    assert len(payload.encode()) < 200  # small enough for a terminal QR code


def test_payload_without_tls_has_null_fingerprint():
    info = pairing_info(["ws://10.0.0.2:4984/db"], ["db"], None)
    assert '"sha256":null' in encode(info)
    assert decode(encode(info)).sha256 is None


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"fieldsync":2,"urls":[],"db":[],"sha256":null}',
        '{"fieldsync":1,"urls":"wss://x/db","db":[],"sha256":null}',
        '{"fieldsync":1,"urls":["https://x/db"],"db":[],"sha256":null}',
        '{"fieldsync":1,"urls":[],"db":[],"sha256":"AB:CD"}',
        '{"fieldsync":1,"urls":[],"db":[1],"sha256":null}',
    ],
)
def test_bad_payloads_are_refused(text):
    with pytest.raises(PairingError):
        decode(text)


def test_png_decodes_to_the_exact_payload(tmp_path):
    payload = encode(from_status(STATUS))
    png = tmp_path / "pair.png"
    write_png(payload, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert zbarimg(png) == payload


def test_terminal_code_decodes_to_the_exact_payload(tmp_path):
    """Render the block characters printed by ``status --qr`` back into pixels and decode them:
    what a phone camera would read off the screen."""
    payload = encode(from_status(STATUS))
    out = io.StringIO()
    print_terminal(payload, out)
    lines = out.getvalue().splitlines()
    assert lines[-1] == payload
    art = lines[:-1]
    # each character is one module wide and two high; segno draws the light modules (for a
    # dark terminal background), so a block is light and a blank is dark
    halves = {" ": (0, 0), "\u2580": (1, 0), "\u2584": (0, 1), "\u2588": (1, 1)}
    rows: list[list[int]] = []
    for line in art:
        line = _strip_ansi(line)
        assert set(line) <= set(halves), set(line) - set(halves)
        rows.append([halves[c][0] for c in line])
        rows.append([halves[c][1] for c in line])
    width = max(len(r) for r in rows)
    scale = 6
    pgm = tmp_path / "terminal.pgm"
    with pgm.open("wb") as f:
        f.write(f"P5 {(width + 8) * scale} {(len(rows) + 8) * scale} 255\n".encode())
        blank = bytes([255]) * ((width + 8) * scale)
        for _ in range(4 * scale):
            f.write(blank)
        for row in rows:
            cells = [1] * 4 + row + [1] * (width - len(row) + 4)
            line = bytes(255 if light else 0 for light in cells for _ in range(scale))
            for _ in range(scale):
                f.write(line)
        for _ in range(4 * scale):
            f.write(blank)
    assert zbarimg(pgm) == payload


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)
