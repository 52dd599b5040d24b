"""pytest fixtures every test folder gets (registered by tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.databases import DatabaseFactory, open_databases
from tests.support.pki import TestPKI


@pytest.fixture
def databases(tmp_path: Path) -> Iterator[DatabaseFactory]:
    """``databases("device", doc1={...})``: real databases under tmp_path, closed afterwards."""
    with open_databases(tmp_path) as factory:
        yield factory


@pytest.fixture
def test_pki() -> TestPKI:
    """A root CA, an intermediate under it, and an unrelated root."""
    return TestPKI()
