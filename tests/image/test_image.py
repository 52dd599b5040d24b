"""The built SD-card image, checked without booting it and (except the aarch64 import check)
without mounting it: partition table, labels, file systems, boot files, units, fstab, modes."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
WANTS = "/etc/systemd/system/multi-user.target.wants"


def run(*cmd: str, check: bool = True) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed: {result.stderr}")
    return result.stdout


def debugfs(image, partition: int, request: str) -> str:
    return run("debugfs", "-R", request, image.spec(partition))


def inode_mode(image, partition: int, path: str) -> tuple[str, int]:
    """(type, permission bits) of ``path`` in the ext4 ``partition``, e.g. ("regular", 0o755)."""
    out = debugfs(image, partition, f"stat {path}")
    match = re.search(r"Type:\s+(\w+)\s+Mode:\s+(\d+)", out)
    assert match, f"{path} not found in partition {partition}: {out}"
    return match.group(1), int(match.group(2), 8)


def inode_owner(image, partition: int, path: str) -> tuple[int, int]:
    out = debugfs(image, partition, f"stat {path}")
    match = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", out)
    assert match, out
    return int(match.group(1)), int(match.group(2))


def mtype(image, name: str) -> str:
    return run("mtype", "-i", f"{image.raw}@@{image.offset(1)}", f"::/{name}")


def test_artifacts_named_by_version_with_checksums(built_image):
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert built_image.raw.name == f"fieldsync-{version}-arm64.img"
    if built_image.seconds is None:
        pytest.skip("FIELDSYNC_IMAGE given: only the raw image is checked")
    assert built_image.zst.stat().st_size > 0
    line = built_image.zst.with_name(built_image.zst.name + ".sha256").read_text().split()
    assert line[1] == built_image.zst.name
    assert run("sha256sum", str(built_image.zst)).split()[0] == line[0]
    # the compressed image holds the raw one
    out = subprocess.run(
        f"zstd -dc '{built_image.zst}' | sha256sum", shell=True, capture_output=True, text=True
    ).stdout.split()[0]
    assert out == run("sha256sum", str(built_image.raw)).split()[0]


def test_partition_table(built_image):
    assert built_image.table["label"] == "dos"
    boot, keys, root = built_image.partitions
    assert boot["type"] == "c" and boot.get("bootable")
    assert keys["type"] == "83" and root["type"] == "83"
    # boot first (the Pi firmware reads it), root last (first boot grows it), nothing overlaps
    assert boot["start"] < keys["start"] < root["start"]
    assert boot["start"] + boot["size"] <= keys["start"]
    assert keys["start"] + keys["size"] <= root["start"]
    end = (root["start"] + root["size"]) * built_image.sector
    assert end == built_image.raw.stat().st_size
    assert boot["start"] * built_image.sector % (4 << 20) == 0  # aligned for SD erase blocks


@pytest.mark.parametrize(
    ("number", "label", "fstype"),
    [(1, "FS-BOOT", "vfat"), (2, "FS-KEYS", "ext4"), (3, "FS-ROOT", "ext4")],
)
def test_labels_and_file_systems(built_image, number, label, fstype):
    out = run("blkid", "-p", "-O", str(built_image.offset(number)), "-o", "export",
              str(built_image.raw))  # fmt: skip
    fields = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert fields["TYPE"] == fstype and fields["LABEL"] == label


@pytest.mark.parametrize("number", [2, 3])
def test_ext4_file_systems_are_clean(built_image, number):
    result = subprocess.run(["e2fsck", "-fn", built_image.spec(number)], capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_boot_partition_has_the_pi_firmware_kernel_and_config(built_image):
    listing = run("mdir", "-b", "-i", f"{built_image.raw}@@{built_image.offset(1)}", "::/")
    names = {line.rsplit("/", 1)[-1] for line in listing.split()}
    for needed in (
        "bootcode.bin", "start.elf", "fixup.dat", "start4.elf", "fixup4.dat",  # Pi 3 / Pi 4
        "bcm2711-rpi-4-b.dtb", "bcm2837-rpi-3-b.dtb", "bcm2837-rpi-3-b-plus.dtb",
        "bcm2837-rpi-zero-2-w.dtb", "config.txt", "cmdline.txt",
        "fieldsync-settings.toml.example",
    ):  # fmt: skip
        assert needed in names, f"{needed} missing from the boot partition: {sorted(names)}"
    config = mtype(built_image, "config.txt")
    assert re.search(r"^arm_64bit=1$", config, re.M)
    kernel = re.search(r"^kernel=(\S+)$", config, re.M).group(1)
    initrd = re.search(r"^initramfs (\S+)", config, re.M).group(1)
    assert kernel in names and initrd in names
    cmdline = mtype(built_image, "cmdline.txt").split()
    assert "root=LABEL=FS-ROOT" in cmdline and "rootwait" in cmdline
    assert "net.ifnames=0" in cmdline  # wlan0 / eth0, as the configuration names them
    # the example settings on the card are valid
    example = mtype(built_image, "fieldsync-settings.toml.example")
    assert "[wifi]" in example


def test_fstab(built_image):
    fstab = debugfs(built_image, 3, "cat /etc/fstab")
    entries = {
        fields[1]: fields
        for fields in (line.split() for line in fstab.splitlines())
        if fields and not fields[0].startswith("#")
    }
    assert entries["/"][0] == "LABEL=FS-ROOT"
    assert entries["/boot/firmware"][:3] == ["LABEL=FS-BOOT", "/boot/firmware", "vfat"]
    keys = entries["/var/lib/fieldsync/keys"]
    assert keys[0] == "LABEL=FS-KEYS" and keys[2] == "ext4"
    assert {"nosuid", "nodev", "noexec", "nofail"} <= set(keys[3].split(","))


def test_units_enabled(built_image):
    sysinit = "/etc/systemd/system/sysinit.target.wants"
    for wants, unit, target in (
        (WANTS, "fieldsync-agent.service", "/usr/lib/systemd/system/fieldsync-agent.service"),
        (
            WANTS,
            "fieldsync-firstboot.service",
            "/usr/lib/systemd/system/fieldsync-firstboot.service",
        ),
        (WANTS, "ssh.service", None),
        (WANTS, "systemd-networkd.service", None),
        (sysinit, "systemd-timesyncd.service", None),
        (sysinit, "systemd-resolved.service", None),
    ):
        out = debugfs(built_image, 3, f"stat {wants}/{unit}")
        assert "Type: symlink" in out, f"{unit} is not enabled: {out}"
        if target:  # deb-systemd-helper links through /lib (the same directory: merged /usr)
            assert re.search(rf'Fast link dest: "(/usr)?{target.removeprefix("/usr")}"', out), out
    assert inode_mode(built_image, 3, "/usr/lib/systemd/system/fieldsync-agent.service") == (
        "regular",
        0o644,
    )


def test_files_and_modes(built_image):
    assert inode_mode(built_image, 3, "/opt/fieldsync/bin/fieldsync") == ("regular", 0o755)
    assert inode_mode(built_image, 3, "/usr/bin/fieldsync")[0] == "symlink"
    assert inode_mode(built_image, 3, "/usr/lib/fieldsync/firstboot.py") == ("regular", 0o755)
    assert inode_mode(built_image, 3, "/etc/fieldsync/fieldsync.toml") == ("regular", 0o644)
    assert inode_owner(built_image, 3, "/opt/fieldsync/bin/fieldsync") == (0, 0)
    # installed by dpkg from the package (one installation route), byte code compiled
    status = debugfs(built_image, 3, "cat /var/lib/dpkg/status")
    stanza = status.split("Package: fieldsync\n", 1)[1].split("\n\n", 1)[0]
    assert "Status: install ok installed" in stanza and "Architecture: arm64" in stanza
    assert "__pycache__" in debugfs(
        built_image, 3, "ls /opt/fieldsync/lib/python3.11/site-packages/fieldsync"
    )
    config = tomllib.loads(debugfs(built_image, 3, "cat /etc/fieldsync/fieldsync.toml"))
    assert config["listener"]["interface"] == "wlan0"
    assert config["keystore"] == "/var/lib/fieldsync/keys"
    journald = debugfs(built_image, 3, "cat /etc/systemd/journald.conf.d/fieldsync.conf")
    assert "Storage=volatile" in journald
    sshd = debugfs(built_image, 3, "cat /etc/ssh/sshd_config.d/fieldsync.conf")
    assert "PasswordAuthentication no" in sshd


def test_no_secrets_or_identity_in_the_image(built_image):
    ssh_dir = debugfs(built_image, 3, "ls /etc/ssh")
    assert "ssh_host_" not in ssh_dir  # every card makes its own host keys
    assert debugfs(built_image, 3, "cat /etc/machine-id").strip() == ""
    # the keystore partition is empty (only lost+found) and closed (0700)
    listing = debugfs(built_image, 2, "ls -p /")  # /inode/mode/uid/gid/name/size/
    names = {line.split("/")[5] for line in listing.splitlines() if line.startswith("/")}
    assert names == {".", "..", "lost+found"}
    assert inode_mode(built_image, 2, "/") == ("directory", 0o700)
    root_keys = debugfs(built_image, 3, "ls /var/lib/fieldsync")
    assert ".pem" not in root_keys


def test_fieldsync_imports_under_aarch64(built_image, require_tools):
    """Run the packaged fieldsync in the image's root file system (qemu-user, read-only mount
    in a private mount namespace: nothing is left mounted)."""
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root (mount, chroot)")
    require_tools("qemu-aarch64-static", packages={"qemu-aarch64-static": "qemu-user-static"})
    if not Path("/proc/sys/fs/binfmt_misc/status").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc",
                        "/proc/sys/fs/binfmt_misc"], check=True)  # fmt: skip
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=True)
    script = r"""
set -e
mnt=$(mktemp -d)
mount -o ro,loop,noload,offset=$1 "$2" "$mnt"
mount -t proc proc "$mnt/proc"
mount --rbind /dev "$mnt/dev"
chroot "$mnt" /opt/fieldsync/bin/python3 -I -c '
import platform, fieldsync, cryptography, websockets, zeroconf, netifaces, pyudev, uvloop
import fieldsync.agent.config, fieldsync.cli.main
print(platform.machine(), fieldsync.__version__, websockets.__version__)'
chroot "$mnt" /usr/bin/fieldsync --version
"""
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         str(built_image.offset(3)), str(built_image.raw)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    machine, version, websockets_version = result.stdout.split()[:3]
    assert machine == "aarch64"
    expected = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert version == expected
    assert int(websockets_version.split(".")[0]) >= 14  # not Debian's too-old python3-websockets
    assert result.stdout.strip().endswith(f"fieldsync {expected}")
