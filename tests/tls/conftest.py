"""Fixtures for the TLS tests: a private keystore per test and a small test PKI."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.pki import TestPKI

from fieldsync.tls.keystore import Keystore


@pytest.fixture
def keystore_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def keystore(keystore_dir: Path) -> Keystore:
    return Keystore(keystore_dir)


@pytest.fixture(scope="session")
def pki() -> TestPKI:
    """A root CA, an intermediate CA and an unrelated root, shared by the session."""
    return TestPKI()
