"""Fixtures for interop tests against a real, externally built LiteCore (Couchbase Lite's engine).

Nothing of LiteCore is in this repository. Point ``FIELDSYNC_LITECORE_LIB`` at a
``libLiteCore.so`` built elsewhere; without it every test here is skipped.

Optional: ``FIELDSYNC_LITECORE_LOG`` (file for LiteCore's log; default: a per-session temp file)
and ``FIELDSYNC_LITECORE_LOG_LEVEL`` (verbose, info, warning, error; default verbose). The tail
of that log is attached to the report of every failing test.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The suite runs with --import-mode=importlib: make this folder's helper modules importable.
sys.path.insert(0, str(Path(__file__).parent))

from litecore import LiteCore, LiteDatabase

LIB_ENV = "FIELDSYNC_LITECORE_LIB"
SKIP_REASON = (
    "FIELDSYNC_LITECORE_LIB not set: build LiteCore 3.2.4 outside the repo and point this at "
    "libLiteCore.so"
)
LOG_TAIL_LINES = 80

_log_path: Path | None = None


def litecore_lib_path() -> Path | None:
    """The configured library path, or None when interop tests must skip."""
    value = os.environ.get(LIB_ENV, "").strip()
    return Path(value) if value else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.litecore)


@pytest.fixture(scope="session")
def litecore(tmp_path_factory: pytest.TempPathFactory) -> LiteCore:
    """The loaded LiteCore library, with its log going to a file."""
    global _log_path
    path = litecore_lib_path()
    if path is None:
        pytest.skip(SKIP_REASON)
    if not path.is_file():
        pytest.skip(
            f"{LIB_ENV}={path} is not a file: build LiteCore 3.2.4 outside the repo and point "
            "this at libLiteCore.so"
        )
    lc = LiteCore(path)
    log = os.environ.get("FIELDSYNC_LITECORE_LOG") or str(
        tmp_path_factory.mktemp("litecore-log") / "litecore.log"
    )
    lc.enable_log(os.environ.get("FIELDSYNC_LITECORE_LOG_LEVEL", "verbose"), log)
    _log_path = Path(log)
    return lc


@pytest.fixture
def phone(litecore: LiteCore, tmp_path: Path) -> Iterator[LiteDatabase]:
    """A fresh LiteCore database playing the phone (Couchbase Lite) side."""
    db = litecore.open_db(tmp_path / "phone", "phone")
    yield db
    db.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and _log_path is not None and _log_path.is_file():
        lines = _log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        report.sections.append((f"LiteCore log tail ({_log_path})", "\n".join(lines)))
