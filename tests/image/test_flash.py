"""scripts/flash against real targets: regular files and loop devices (no real card here)."""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FLASH = REPO / "scripts" / "flash"
MIB = 1 << 20


def load_flash():
    loader = importlib.machinery.SourceFileLoader("fieldsync_flash", str(FLASH))
    spec = importlib.util.spec_from_loader("fieldsync_flash", loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fieldsync_flash"] = module  # dataclasses look their module up
    loader.exec_module(module)
    return module


def flash(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(FLASH), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def small_image(tmp_path_factory, require_tools) -> tuple[Path, bytes]:
    """A 48 MiB card image (FAT32 boot partition + a Linux partition), zstd-compressed."""
    require_tools("sfdisk", "mkfs.vfat", "mcopy", "mtype", "zstd")
    work = tmp_path_factory.mktemp("image")
    raw = work / "card.img"
    with raw.open("wb") as out:
        out.truncate(48 * MIB)
    subprocess.run(
        ["sfdisk", "-q", str(raw)],
        input="label: dos\nstart=2048, size=73728, type=c\nstart=75776, type=83\n",
        text=True,
        check=True,
    )
    boot = work / "boot.vfat"
    subprocess.run(
        ["mkfs.vfat", "-F", "32", "-n", "FS-BOOT", "-C", str(boot), str(36 * 1024)],
        check=True,
        capture_output=True,
    )
    (work / "cmdline.txt").write_text("console=tty1 root=LABEL=FS-ROOT\n")
    subprocess.run(["mcopy", "-i", str(boot), str(work / "cmdline.txt"), "::/"], check=True)
    with raw.open("r+b") as out:
        out.seek(MIB)
        out.write(boot.read_bytes())
        out.seek(37 * MIB)
        out.write(os.urandom(MIB))  # something recognisable in the second partition
    data = raw.read_bytes()
    zst = work / "card.img.zst"
    subprocess.run(["zstd", "-q", "-o", str(zst), str(raw)], check=True)
    digest = hashlib.sha256(zst.read_bytes()).hexdigest()
    (work / "card.img.zst.sha256").write_text(f"{digest}  card.img.zst\n")
    return zst, data


SETTINGS = '[wifi]\ncountry = "DE"\nssid = "FarmNet"\npassphrase = "12345678"\n'


def test_regular_file_needs_force_and_is_left_alone(small_image, tmp_path):
    image, _ = small_image
    target = tmp_path / "card"
    target.write_bytes(b"precious")
    result = flash(str(image), str(target), "--yes")
    assert result.returncode == 2 and "regular file" in result.stderr
    assert target.read_bytes() == b"precious"


def test_write_verify_and_settings_to_a_file(small_image, tmp_path):
    image, data = small_image
    target = tmp_path / "card"
    target.write_bytes(b"")
    settings = tmp_path / "s.toml"
    settings.write_text(SETTINGS)
    agent = tmp_path / "fieldsync.toml"
    agent.write_text('[databases.farm]\npath = "/var/lib/fieldsync/db/farm.sqlite"\n')
    result = flash(
        str(image),
        str(target),
        "--yes",
        "--force",
        "--settings",
        str(settings),
        "--agent-config",
        str(agent),
    )
    assert result.returncode == 0, result.stderr
    assert "checksum ok" in result.stderr and "verified" in result.stderr
    written = target.read_bytes()
    assert len(written) == len(data)
    # only the boot partition changed: the second partition is byte for byte the image's
    assert written[37 * MIB :] == data[37 * MIB :]
    spec = f"{target}@@{MIB}"
    shown = subprocess.run(
        ["mtype", "-i", spec, "::/fieldsync-settings.toml"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert shown.replace("\r", "") == SETTINGS
    shown = subprocess.run(
        ["mtype", "-i", spec, "::/fieldsync.toml"], capture_output=True, text=True, check=True
    ).stdout
    assert "farm.sqlite" in shown
    shown = subprocess.run(
        ["mtype", "-i", spec, "::/cmdline.txt"], capture_output=True, text=True, check=True
    ).stdout
    assert "root=LABEL=FS-ROOT" in shown


def test_invalid_settings_refused_before_writing(small_image, tmp_path):
    image, _ = small_image
    target = tmp_path / "card"
    target.write_bytes(b"precious")
    settings = tmp_path / "s.toml"
    settings.write_text('[wifi]\ncountry = "DE"\nssid = "x"\npassphrase = "short"\n')
    result = flash(str(image), str(target), "--yes", "--force", "--settings", str(settings))
    assert result.returncode == 2 and "wifi.passphrase" in result.stderr
    assert target.read_bytes() == b"precious"


def test_damaged_image_refused(small_image, tmp_path):
    image, _ = small_image
    copy = tmp_path / image.name
    blob = bytearray(image.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    copy.write_bytes(bytes(blob))
    (tmp_path / (image.name + ".sha256")).write_text(
        image.with_name(image.name + ".sha256").read_text()
    )
    target = tmp_path / "card"
    target.write_bytes(b"precious")
    result = flash(str(copy), str(target), "--yes", "--force")
    assert result.returncode == 2 and "does not match" in result.stderr
    assert target.read_bytes() == b"precious"


def test_the_system_disk_is_refused():
    module = load_flash()
    st = os.stat("/")
    sysdir = Path(os.path.realpath(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}"))
    if not sysdir.exists():
        pytest.skip("/ is not on a block device here (overlay or network file system)")
    disk = sysdir.parent if (sysdir / "partition").exists() else sysdir
    device = Path("/dev") / disk.name
    if not device.exists():
        pytest.skip(f"{device} has no device node here")
    # inspect_target only reads: it is safe to ask about the running system's disk
    with pytest.raises(module.Refused, match=r"running system|mounted"):
        module.inspect_target(device)


@pytest.fixture
def loop_device(tmp_path, require_tools):
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    require_tools("losetup")
    backing = tmp_path / "loop.img"
    with backing.open("wb") as out:
        out.truncate(64 * MIB)
    made = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"no loop device available: {made.stderr.strip()}")
    device = Path(made.stdout.strip())
    yield device, backing
    subprocess.run(["umount", str(tmp_path / "mnt")], capture_output=True)
    subprocess.run(["losetup", "-d", str(device)], check=True)


def test_loop_device_not_removable_needs_force(small_image, loop_device):
    image, data = small_image
    device, backing = loop_device
    result = flash(str(image), str(device), "--yes")
    assert result.returncode == 2 and "not a removable disk" in result.stderr
    assert backing.read_bytes()[: len(data)] != data
    result = flash(str(image), str(device), "--yes", "--force")
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stderr
    assert backing.read_bytes()[: len(data)] == data


def test_mounted_device_refused_even_with_force(small_image, loop_device, tmp_path, require_tools):
    image, _ = small_image
    device, backing = loop_device
    require_tools("mkfs.ext4")
    subprocess.run(["mkfs.ext4", "-q", str(device)], check=True)
    (tmp_path / "mnt").mkdir()
    mounted = subprocess.run(
        ["mount", str(device), str(tmp_path / "mnt")], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount ext4 here: {mounted.stderr.strip()}")
    result = flash(str(image), str(device), "--yes", "--force")
    assert result.returncode == 2 and "mounted" in result.stderr
    subprocess.run(["umount", str(tmp_path / "mnt")], check=True)
    # nothing was written: the file system is intact and no partition table appeared
    assert subprocess.run(["e2fsck", "-fn", str(backing)], capture_output=True).returncode == 0
    assert backing.read_bytes()[510:512] != b"\x55\xaa"


def test_image_larger_than_device_refused(small_image, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    image, _ = small_image
    backing = tmp_path / "tiny.img"
    with backing.open("wb") as out:
        out.truncate(16 * MIB)
    device = subprocess.run(
        ["losetup", "-f", "--show", str(backing)], capture_output=True, text=True
    ).stdout.strip()
    if not device:
        pytest.skip("no loop device available")
    try:
        result = flash(str(image), device, "--yes", "--force")
    finally:
        subprocess.run(["losetup", "-d", device], check=True)
    assert result.returncode == 2 and "larger than" in result.stderr
    assert backing.read_bytes() == bytes(16 * MIB)
