"""The Debian package (image/deb, amd64) installed with apt into a fresh Debian bookworm root
booted with ``systemd-nspawn --boot``: the agent waits for its interface, then serves (READY,
``fieldsync status``, the QR code), an upgrade to a rebuilt package keeps the TLS identity,
``apt remove`` stops it and keeps data and keys, ``apt purge`` deletes them after saying so.

The bookworm root (mmdebstrap minbase + systemd-sysv, python3, iproute2; ~80 s) is cached under
image/cache. Inside the container a driver unit runs one scripted session (``DRIVER``) and
powers off; it records what it saw in a bind-mounted directory, and the tests below read that.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fieldsync.pairing import decode, from_status

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("FIELDSYNC_IMAGE_CACHE", REPO / "image" / "cache"))
UPGRADE_VERSION_SUFFIX = "+ci2"
MMDEBSTRAP = [
    "mmdebstrap",
    "--variant=minbase",
    "--format=tar",
    "--include=systemd-sysv,python3,iproute2",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "bookworm",
]

# Runs inside the booted container as a oneshot unit; everything it learns goes to /ci.
DRIVER = r"""#!/bin/bash
exec >/ci/driver.log 2>&1
set -x
export DEBIAN_FRONTEND=noninteractive
record() { "$@" >"/ci/$1.$2.out" 2>&1; echo $? >"/ci/$1.$2.rc"; }
status_json() { fieldsync status --json >"/ci/$1.json" 2>"/ci/$1.err"; echo $? >"/ci/$1.rc"; }
wait_state() {  # wait_state STATE SECONDS
    for _ in $(seq "$2"); do
        fieldsync status --json 2>/dev/null | grep -q "\"state\": \"$1\"" && return 0
        sleep 1
    done
    return 1
}
# (no network in the container: --private-network; everything the package needs is in it)
apt-get install -y /ci/old.deb >/ci/install.out 2>&1; echo $? >/ci/install.rc
[ "$(cat /ci/install.rc)" = 0 ] || { touch /ci/done; exit 1; }
systemctl show -p ActiveState,SubState,StatusText fieldsync-agent >/ci/installed.show
wait_state waiting-for-interface 60
status_json waiting
# the interface the default configuration names appears: the agent starts serving on it
ip link add wlan0 type veth peer name wlan0-peer
ip link set wlan0-peer up
ip addr add 192.0.2.10/24 dev wlan0
ip link set wlan0 up
wait_state serving 60
status_json serving
# advertised over mDNS on it (the advertiser probes first: a few seconds)
for _ in $(seq 30); do
    fieldsync status --json 2>/dev/null | /opt/fieldsync/bin/python3 -c '
import json, sys; sys.exit(0 if json.load(sys.stdin)["mdns"]["addresses"] else 1)' && break
    sleep 1
done
status_json advertised
systemctl show -p ActiveState,SubState,StatusText,User fieldsync-agent >/ci/serving.show
fieldsync status --qr >/ci/qr.out 2>&1; echo $? >/ci/qr.rc
stat -c '%U %G %a' /var/lib/fieldsync/keys /var/lib/fieldsync/keys/fieldsync.pem >/ci/keys.stat
# upgrade to a rebuilt package
apt-get install -y /ci/new.deb >/ci/upgrade.out 2>&1; echo $? >/ci/upgrade.rc
wait_state serving 60
status_json upgraded
dpkg-query -W -f '${Version}' fieldsync >/ci/upgraded.version
# remove: stopped, data and keys kept
apt-get remove -y fieldsync >/ci/remove.out 2>&1; echo $? >/ci/remove.rc
systemctl is-active fieldsync-agent >/ci/removed.active
ls -A /var/lib/fieldsync/keys /var/lib/fieldsync/db /etc/fieldsync >/ci/removed.ls 2>&1
ls -d /opt/fieldsync /usr/bin/fieldsync >/ci/removed.venv 2>&1
# purge: deleted, said so
apt-get purge -y fieldsync >/ci/purge.out 2>&1; echo $? >/ci/purge.rc
ls -A /var/lib/fieldsync /etc/fieldsync >/ci/purged.ls 2>&1; echo $? >/ci/purged.ls.rc
dpkg-query -W -f '${db:Status-Status}' fieldsync >/ci/purged.status 2>&1
touch /ci/done
"""

DRIVER_UNIT = """[Unit]
Description=fieldsync package test driver
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/fieldsync-ci-driver
ExecStopPost=/bin/systemctl --no-block poweroff
TimeoutStartSec=10min
[Install]
WantedBy=multi-user.target
"""


def _bookworm_root(log) -> Path:
    """The cached bookworm root tarball (built with mmdebstrap when its options change)."""
    key = hashlib.sha256("\n".join(MMDEBSTRAP).encode()).hexdigest()[:16]
    tar = CACHE / f"bookworm-amd64-{key}.tar"
    if not tar.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        part = tar.with_suffix(".part")
        result = subprocess.run([*MMDEBSTRAP, str(part)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        part.rename(tar)
        log(f"bookworm root built in {time.monotonic() - start:.0f} s")
    return tar


def _build(version: str | None, out: Path) -> Path:
    cmd = [str(REPO / "image" / "deb"), "--arch", "amd64", "--out", str(out)]
    if version:
        cmd += ["--version", version]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def session(tmp_path_factory, require_tools) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root (systemd-nspawn, mmdebstrap)")
    require_tools(
        "systemd-nspawn",
        "mmdebstrap",
        "dpkg-deb",
        packages={"systemd-nspawn": "systemd-container"},
    )
    times: list[str] = []
    start = time.monotonic()
    work = tmp_path_factory.mktemp("deb")
    ci = work / "ci"
    ci.mkdir()
    tar = _bookworm_root(times.append)
    old = _build(None, work / "old")
    version = subprocess.run(
        ["dpkg-deb", "-f", str(old), "Version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    new = _build(version + UPGRADE_VERSION_SUFFIX, work / "new")
    times.append(f"two packages built after {time.monotonic() - start:.0f} s")
    shutil.copy(old, ci / "old.deb")
    shutil.copy(new, ci / "new.deb")
    root = work / "root"
    root.mkdir()
    subprocess.run(["tar", "-xpf", str(tar), "-C", str(root)], check=True)
    driver = root / "usr/local/sbin/fieldsync-ci-driver"
    driver.parent.mkdir(parents=True, exist_ok=True)
    driver.write_text(DRIVER)
    driver.chmod(0o755)
    unit = root / "etc/systemd/system/fieldsync-ci-driver.service"
    unit.write_text(DRIVER_UNIT)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / unit.name).symlink_to(f"/etc/systemd/system/{unit.name}")
    (root / "etc/hostname").write_text("fieldsync-ci\n")
    boot = time.monotonic()
    result = subprocess.run(
        ["systemd-nspawn", "--register=no", "--keep-unit", "-q", "--private-network",
         "-D", str(root), f"--bind={ci}:/ci", "--boot"],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    times.append(f"container session {time.monotonic() - boot:.0f} s")
    times.append(f"total {time.monotonic() - start:.0f} s")
    print("\npackage test: " + "; ".join(times), file=sys.stderr)
    (ci / "times").write_text("\n".join(times) + "\n")
    driver_log = (ci / "driver.log").read_text() if (ci / "driver.log").exists() else ""
    assert (ci / "done").exists(), (
        f"the driver did not finish (nspawn {result.returncode}):\n{result.stdout[-3000:]}\n"
        f"{result.stderr[-2000:]}\n{driver_log[-4000:]}"
    )
    return ci


def test_lintian_finds_no_errors(session, require_tools):
    require_tools("lintian")
    result = subprocess.run(
        ["lintian", "--fail-on", "error", "--tag-display-limit", "0", str(session / "old.deb")],
        capture_output=True,
        text=True,
    )
    print(result.stdout, file=sys.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [line for line in result.stdout.splitlines() if line.startswith("E:")]


def read(ci: Path, name: str) -> str:
    return (ci / name).read_text()


def test_install_waits_for_the_interface_then_serves(session):
    assert read(session, "install.rc").strip() == "0", read(session, "install.out")
    # Type=notify: "active" only once the agent has sent READY=1
    assert "ActiveState=active" in read(session, "installed.show")
    waiting = json.loads(read(session, "waiting.json"))
    assert waiting["state"] == "waiting-for-interface", waiting
    assert read(session, "waiting.rc").strip() == "1"  # running, not serving
    serving = json.loads(read(session, "serving.json"))
    assert serving["state"] == "serving", serving
    assert read(session, "serving.rc").strip() == "0"
    assert any(url.startswith("wss://192.0.2.10:4984/") for url in serving["urls"]), serving
    show = read(session, "serving.show")
    assert "ActiveState=active" in show and "User=fieldsync" in show


def test_advertised_over_mdns(session):
    mdns = json.loads(read(session, "advertised.json"))["mdns"]
    assert mdns["type"] == "_fieldsync._tcp" and mdns["name"] == "fieldsync-ci"
    assert "192.0.2.10" in mdns["addresses"], mdns


def test_keystore_fallback_directory(session):
    # no secured partition on this system: a 0700 directory owned by the agent's user
    assert read(session, "keys.stat").splitlines() == [
        "fieldsync fieldsync 700",
        "fieldsync fieldsync 600",
    ]


def test_status_qr_is_the_pairing_payload(session):
    assert read(session, "qr.rc").strip() == "0"
    out = read(session, "qr.out")
    serving = json.loads(read(session, "serving.json"))
    payload = out.strip().splitlines()[-1]
    assert decode(payload) == from_status(serving)
    assert "\u2580" in out or "\u2584" in out or "\u2588" in out  # block characters drawn


def test_upgrade_keeps_the_identity(session):
    assert read(session, "upgrade.rc").strip() == "0", read(session, "upgrade.out")
    assert read(session, "upgraded.version").endswith(UPGRADE_VERSION_SUFFIX)
    before = json.loads(read(session, "serving.json"))["tls"]["fingerprint"]
    after = json.loads(read(session, "upgraded.json"))
    assert after["state"] == "serving"
    assert after["tls"]["fingerprint"] == before


def test_remove_stops_and_keeps_data_and_keys(session):
    assert read(session, "remove.rc").strip() == "0", read(session, "remove.out")
    assert read(session, "removed.active").strip() in ("inactive", "unknown")
    listing = read(session, "removed.ls")
    assert "fieldsync.pem" in listing  # the identity
    assert "fieldsync.sqlite" in listing  # the database
    assert "fieldsync.toml" in listing  # the configuration (a conffile)
    assert "kept /var/lib/fieldsync" in read(session, "remove.out")
    venv = read(session, "removed.venv")  # the program and its virtual environment are gone
    assert venv.count("No such file or directory") == 2, venv


def test_purge_deletes_after_saying_so(session):
    assert read(session, "purge.rc").strip() == "0", read(session, "purge.out")
    assert "purging: deleting /var/lib/fieldsync" in read(session, "purge.out")
    assert read(session, "purged.ls.rc").strip() != "0"
    assert "No such file or directory" in read(session, "purged.ls")
    assert "fieldsync.pem" not in read(session, "purged.ls")
