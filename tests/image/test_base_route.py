"""image/build --base: fieldsync added to a Raspberry Pi OS-like image (a small synthetic one made
here: no download is possible), checked structurally. A real Raspberry Pi OS image is not tested."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20
DISK_ID = "0x1234abcd"
FSTAB = (
    "proc            /proc           proc    defaults          0       0\n"
    "PARTUUID=1234abcd-01  /boot/firmware  vfat    defaults          0       2\n"
    "PARTUUID=1234abcd-02  /               ext4    defaults,noatime  0       1\n"
)
CMDLINE = (
    "console=serial0,115200 console=tty1 root=PARTUUID=1234abcd-02 rootfstype=ext4 "
    "fsck.repair=yes rootwait init=/usr/lib/raspberrypi-sys-mods/firstboot\n"
)


DPKG_STATUS = (
    "Package: base-files\nStatus: install ok installed\nPriority: required\n"
    "Architecture: arm64\nVersion: 12.4+deb12u5\nDescription: base system files\n"
)


def run(*cmd: str, **kw) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, **kw).stdout


def table(image: Path) -> dict:
    return json.loads(run("sfdisk", "--json", str(image)))["partitiontable"]


@pytest.fixture(scope="module")
def base_and_result(tmp_path_factory, require_tools):
    if os.geteuid() != 0:
        pytest.skip("image/build needs root")
    require_tools("sfdisk", "mkfs.vfat", "mcopy", "mtype", "mkfs.ext4", "debugfs", "e2fsck")
    work = tmp_path_factory.mktemp("base")
    root = work / "rootdir"
    dirs = ("etc/systemd/system/multi-user.target.wants", "usr/local/bin", "usr/bin",
            "boot/firmware", "var/lib", "home/pi")  # fmt: skip
    for d in dirs:
        (root / d).mkdir(parents=True)
    (root / "etc/fstab").write_text(FSTAB)
    (root / "etc/hostname").write_text("raspberrypi\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "usr/bin/python3").write_text("#!/bin/sh\n")
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(DPKG_STATUS)
    (root / "etc/systemd/system/multi-user.target.wants/ssh.service").symlink_to(
        "/lib/systemd/system/ssh.service"
    )
    run("mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", str(root), str(work / "root.ext4"), "64M")
    boot = work / "boot.vfat"
    run("mkfs.vfat", "-F", "32", "-n", "bootfs", "-C", str(boot), str(40 * 1024))
    (work / "cmdline.txt").write_text(CMDLINE)
    (work / "config.txt").write_text("arm_64bit=1\n")
    run("mcopy", "-i", str(boot), str(work / "cmdline.txt"), str(work / "config.txt"), "::/")
    base = work / "rpios-lite.img"
    with base.open("wb") as out:
        out.truncate((4 + 40 + 64) * MIB)
    run("sfdisk", "-q", str(base), input=f"label: dos\nlabel-id: {DISK_ID}\n"
        "start=8192, size=81920, type=c\nstart=90112, size=131072, type=83\n")  # fmt: skip
    with base.open("r+b") as out:
        out.seek(4 * MIB)
        out.write(boot.read_bytes())
        out.seek(44 * MIB)
        out.write((work / "root.ext4").read_bytes())
    out_dir = work / "out"
    result = subprocess.run(
        [str(REPO / "image" / "build"), "--base", str(base), "--no-compress", "--out",
         str(out_dir), "--root-grow", "32"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    image = out_dir / f"fieldsync-{version}-rpios-lite.img"
    assert image.exists(), list(out_dir.iterdir())
    return base, image


def spec(image: Path, partition: dict) -> str:
    return f"{image}?offset={partition['start'] * 512}"


def debugfs(image: Path, partition: dict, request: str) -> str:
    return run("debugfs", "-R", request, spec(image, partition))


def test_layout_boot_untouched_root_grown_keys_appended(base_and_result):
    base, image = base_and_result
    before, after = table(base), table(image)
    assert after["id"] == before["id"] == DISK_ID  # PARTUUID=1234abcd-0N references still hold
    b_boot, b_root = before["partitions"]
    boot, root, keys = after["partitions"]
    assert (boot["start"], boot["size"], boot["type"]) == (b_boot["start"], b_boot["size"], "c")
    with base.open("rb") as a, image.open("rb") as b:
        a.seek(boot["start"] * 512)
        b.seek(boot["start"] * 512)
        assert a.read(boot["size"] * 512) == b.read(boot["size"] * 512)  # byte for byte
    assert root["start"] == b_root["start"] and root["size"] == b_root["size"] + 32 * 2048
    assert keys["start"] >= root["start"] + root["size"] and keys["type"] == "83"
    assert (keys["start"] + keys["size"]) * 512 == image.stat().st_size
    out = run("blkid", "-p", "-O", str(keys["start"] * 512), "-o", "export", str(image))
    assert "LABEL=FS-KEYS" in out.split() and "TYPE=ext4" in out.split()


def test_file_systems_clean_and_keystore_empty(base_and_result):
    _, image = base_and_result
    _, root, keys = table(image)["partitions"]
    for part in (root, keys):
        result = subprocess.run(["e2fsck", "-fn", spec(image, part)], capture_output=True,
                                text=True)  # fmt: skip
        assert result.returncode == 0, result.stdout
    listing = debugfs(image, keys, "ls -p /")
    names = {line.split("/")[5] for line in listing.splitlines() if line.startswith("/")}
    assert names == {".", "..", "lost+found"}
    assert re.search(r"Type: directory\s+Mode:\s+0700", debugfs(image, keys, "stat /"))
    df = run("debugfs", "-R", "stats", spec(image, root))
    blocks = int(re.search(r"Block count:\s+(\d+)", df).group(1))
    size = int(re.search(r"Block size:\s+(\d+)", df).group(1))
    assert blocks * size == root["size"] * 512  # the file system fills the grown partition


def test_fieldsync_added_and_base_kept(base_and_result):
    _, image = base_and_result
    _, root, _ = table(image)["partitions"]
    fstab = debugfs(image, root, "cat /etc/fstab")
    assert fstab.startswith(FSTAB)  # the base's lines unchanged
    keys_line = [line.split() for line in fstab.splitlines()[3:] if line and line[0] != "#"]
    assert keys_line[0][:3] == ["LABEL=FS-KEYS", "/var/lib/fieldsync/keys", "ext4"]
    assert {"nosuid", "nodev", "noexec"} <= set(keys_line[0][3].split(","))
    assert debugfs(image, root, "cat /etc/hostname") == "raspberrypi\n"
    wants = debugfs(image, root, "ls /etc/systemd/system/multi-user.target.wants")
    for unit in ("ssh.service", "fieldsync-agent.service", "fieldsync-firstboot.service"):
        assert unit in wants
    for path, mode in (
        ("/opt/fieldsync/bin/fieldsync", "0755"),
        ("/usr/lib/fieldsync/firstboot.py", "0755"),
        ("/usr/lib/systemd/system/fieldsync-agent.service", "0644"),
        ("/etc/fieldsync/fieldsync.toml", "0644"),
    ):
        stat = debugfs(image, root, f"stat {path}")
        assert re.search(rf"Type: regular\s+Mode:\s+{mode}", stat), (path, stat)
        assert re.search(r"User:\s+0\s+Group:\s+0", stat)
    assert "Type: symlink" in debugfs(image, root, "stat /usr/bin/fieldsync")
    site = "/opt/fieldsync/lib/python3.11/site-packages"
    packaged = debugfs(image, root, f"cat {site}/fieldsync/__init__.py")
    assert packaged == (REPO / "firmware/fieldsync/__init__.py").read_text()
    # registered with dpkg (so apt can upgrade or remove it), the base's packages kept
    status = debugfs(image, root, "cat /var/lib/dpkg/status")
    assert status.startswith(DPKG_STATUS)
    stanza = status.split("Package: fieldsync\n", 1)[1]
    assert "Status: install ok installed" in stanza and "Architecture: arm64" in stanza
    assert " /etc/fieldsync/fieldsync.toml " in stanza  # the conffile and its hash
    listing = debugfs(image, root, "cat /var/lib/dpkg/info/fieldsync.list").splitlines()
    assert "/opt/fieldsync/bin/fieldsync" in listing and "/usr/bin/fieldsync" in listing
    assert "postinst" in debugfs(image, root, "ls /var/lib/dpkg/info")
    unit = debugfs(image, root, "cat /usr/lib/systemd/system/fieldsync-agent.service")
    assert (
        unit == (REPO / "board/rootfs/usr/lib/systemd/system/fieldsync-agent.service").read_text()
    )
    # the Debian image's own defaults (networkd, journald, sshd) are not imposed on the base
    assert (
        "File not found"
        in subprocess.run(
            [
                "debugfs",
                "-R",
                "stat /etc/systemd/journald.conf.d/fieldsync.conf",
                spec(image, root),
            ],
            capture_output=True,
            text=True,
        ).stderr
    )
