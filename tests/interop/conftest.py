"""Fixtures for interop tests against a real, externally built LiteCore (Couchbase Lite's engine).

Nothing of LiteCore is in this repository. Point ``FIELDSYNC_LITECORE_LIB`` at a
``libLiteCore.so`` built elsewhere; without it every test here is skipped.

Optional: ``FIELDSYNC_LITECORE_LOG`` (file for LiteCore's log; default: a temp file per test)
and ``FIELDSYNC_LITECORE_LOG_LEVEL`` (verbose, info, warning, error; default verbose). The tail
of that log is attached to the report of every failing test.

Each test runs in a forked child process (when the library is configured), so a crash inside
LiteCore fails that one test with the signal and the log tail instead of killing the whole run.
``FIELDSYNC_INTEROP_NO_FORK=1`` runs them in-process (e.g. under a debugger).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _pytest.reports import TestReport
from _pytest.runner import runtestprotocol

# The suite runs with --import-mode=importlib: make this folder's helper modules importable.
sys.path.insert(0, str(Path(__file__).parent))

from litecore import LiteCore, LiteDatabase

LIB_ENV = "FIELDSYNC_LITECORE_LIB"
SKIP_REASON = (
    "FIELDSYNC_LITECORE_LIB not set: build LiteCore 3.2.4 outside the repo and point this at "
    "libLiteCore.so"
)
LOG_TAIL_LINES = 80
HERE = Path(__file__).parent

_log_path: Path | None = None


def litecore_lib_path() -> Path | None:
    """The configured library path, or None when interop tests must skip."""
    value = os.environ.get(LIB_ENV, "").strip()
    return Path(value) if value else None


def _is_interop(item: pytest.Item) -> bool:
    return HERE in Path(str(item.fspath)).parents


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _is_interop(item):
            item.add_marker(pytest.mark.litecore)


def _log_tail(path: Path) -> str:
    if not path.is_file():
        return "(no LiteCore log)"
    lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    return "\n".join(lines)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    """Run each interop test in a forked child so a LiteCore crash fails only that test."""
    if (
        not _is_interop(item)
        or litecore_lib_path() is None
        or not hasattr(os, "fork")
        or os.environ.get("FIELDSYNC_INTEROP_NO_FORK")
    ):
        return None
    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for report in _run_forked(item):
        ihook.pytest_runtest_logreport(report=report)
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def _run_forked(item: pytest.Item) -> list[TestReport]:
    config = item.config
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is not None:
        factory.getbasetemp()  # create the run's temp root once, in the parent
    log_file = Path(
        os.environ.get("FIELDSYNC_LITECORE_LOG")
        or Path(tempfile.mkdtemp(prefix="litecore-log-")) / "litecore.log"
    )
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child: run setup/call/teardown, send the reports back, exit hard
        os.close(read_fd)
        try:
            os.environ["FIELDSYNC_LITECORE_LOG"] = str(log_file)
            reports = runtestprotocol(item, log=False, nextitem=None)
            payload = [
                config.hook.pytest_report_to_serializable(config=config, report=r) for r in reports
            ]
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(json.dumps(payload).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if data:
        return [
            config.hook.pytest_report_from_serializable(config=config, data=d)
            for d in json.loads(data)
        ]
    if os.WIFSIGNALED(status):
        how = f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    else:
        how = f"exited with status {os.WEXITSTATUS(status)} without reporting"
    longrepr = (
        f"the test process {how} (a crash inside LiteCore or the harness)\n"
        f"LiteCore log: {log_file}\n--- last {LOG_TAIL_LINES} lines ---\n{_log_tail(log_file)}"
    )
    return [
        TestReport(
            item.nodeid, item.location, {}, "failed", longrepr, "call", sections=(), duration=0.0
        )
    ]


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
def litecore_log(litecore: LiteCore) -> Path | None:
    """The file LiteCore's log goes to in this test (None if logging went elsewhere)."""
    return _log_path


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
        report.sections.append((f"LiteCore log tail ({_log_path})", _log_tail(_log_path)))
