"""Shared helpers of the image tests: the board's first-boot module, loaded from its file."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BOARD = REPO / "board"


def load_firstboot():
    """board/firstboot.py as a module (it is installed as a script, not as a package)."""
    name = "fieldsync_board_firstboot"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BOARD / "firstboot.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def firstboot():
    return load_firstboot()


def _require_tools(*commands: str, packages: dict[str, str] | None = None) -> None:
    """Skip unless the commands exist; as root on Debian, apt-get install them first."""
    import shutil
    import subprocess

    missing = [c for c in commands if shutil.which(c) is None]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        names = sorted({(packages or {}).get(c, TOOL_PACKAGES.get(c, c)) for c in missing})
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *names],
            capture_output=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (not installed, and cannot install as non-root)")


TOOL_PACKAGES = {
    "sfdisk": "fdisk",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mtype": "mtools",
    "mdir": "mtools",
    "zstd": "zstd",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "losetup": "mount",
    "qemu-system-aarch64": "qemu-system-arm",
    "qemu-img": "qemu-utils",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}


@pytest.fixture(scope="session")
def require_tools():
    """``require_tools("cmd", ...)``: skip unless present (installed with apt-get as root)."""
    return _require_tools
