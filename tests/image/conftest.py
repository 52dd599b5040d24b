"""Shared helpers of the image tests: the board's first-boot module, loaded from its file."""

from __future__ import annotations

import importlib.util
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
