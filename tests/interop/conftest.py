"""Fixtures for interop tests against a real, externally built LiteCore (Couchbase Lite's engine).

Nothing of LiteCore is in this repository. Point ``FIELDSYNC_LITECORE_LIB`` at a LiteCore 3.2
``libLiteCore.so`` built elsewhere, and ``FIELDSYNC_LITECORE41_LIB`` at a LiteCore 4.1 one; a
test that needs a library that is not configured is skipped with the reason.

Fixtures (see /work/coord/NOTES.md "litecore harness" for the whole API):

- ``litecore`` / ``litecore32``: the loaded 3.2 library; ``litecore41``: the loaded 4.1 library.
  Both may be used in one test (two LiteCores in one process, e.g. a mixed fleet).
- ``litecore_any``: parametrised over both (ids ``lc32``/``lc41``); each skips on its own.
- ``phone`` / ``phone32``: a fresh 3.2 (rev-tree) database; ``phone41``: a fresh 4.1 rev-tree
  database; ``phone41_vv``: a fresh 4.1 **version-vector** database (what Couchbase Lite 4.x
  opens; its replicator offers only ``BLIP_3+CBMobile_4``).
- ``any_phone``: parametrised over ``lc32``, ``lc41``, ``lc41-vv`` (a fresh database each).
- ``cbl32`` / ``cbl41``: ``CblTools`` (``cblpeer``/``cblpassive`` next to the library, in
  ``<prefix>/bin``); skipped when the tools are not there.

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
from tests.interop.fieldsync_side import ConnectionRecorder
from tests.interop.litecore import CblTools, LiteCore, LiteDatabase

LIB_ENV = "FIELDSYNC_LITECORE_LIB"
LIB41_ENV = "FIELDSYNC_LITECORE41_LIB"
SKIP_REASON = (
    "FIELDSYNC_LITECORE_LIB not set: build LiteCore 3.2.4 outside the repo and point this at "
    "libLiteCore.so"
)
SKIP41_REASON = (
    "FIELDSYNC_LITECORE41_LIB not set: build LiteCore 4.1.0 outside the repo and point this at "
    "libLiteCore.so"
)
LOG_TAIL_LINES = 80
HERE = Path(__file__).parent

_log_paths: dict[str, Path] = {}


def litecore_lib_path() -> Path | None:
    """The configured 3.2 library path, or None when 3.2 interop tests must skip."""
    value = os.environ.get(LIB_ENV, "").strip()
    return Path(value) if value else None


def litecore41_lib_path() -> Path | None:
    """The configured 4.1 library path, or None when 4.1 interop tests must skip."""
    value = os.environ.get(LIB41_ENV, "").strip()
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
        or (litecore_lib_path() is None and litecore41_lib_path() is None)
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
        reports = [
            config.hook.pytest_report_from_serializable(config=config, data=d)
            for d in json.loads(data)
        ]
        for report in reports:
            # A skip's longrepr is a (path, line, reason) tuple; JSON made it a list, which
            # pytest's skip summary rejects.
            if report.skipped and isinstance(report.longrepr, list):
                report.longrepr = tuple(report.longrepr)
        return reports
    if os.WIFSIGNALED(status):
        how = f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    else:
        how = f"exited with status {os.WEXITSTATUS(status)} without reporting"
    longrepr = f"the test process {how} (a crash inside LiteCore or the harness)"
    for path in (log_file, Path(f"{log_file}.lc41")):
        if path.is_file():
            longrepr += (
                f"\nLiteCore log: {path}\n--- last {LOG_TAIL_LINES} lines ---\n{_log_tail(path)}"
            )
    return [
        TestReport(
            item.nodeid, item.location, {}, "failed", longrepr, "call", sections=(), duration=0.0
        )
    ]


def _load(
    env: str, path: Path | None, reason: str, major: int, tag: str, factory: pytest.TempPathFactory
) -> LiteCore:
    """Load a configured library (skip if unset/missing; fail if it is the wrong version)."""
    if path is None:
        pytest.skip(reason)
    if not path.is_file():
        pytest.skip(f"{env}={path} is not a file: {reason.split(': ', 1)[1]}")
    lc = LiteCore(path)
    if lc.major != major:
        pytest.fail(f"{env}={path} is LiteCore {lc.version}, not {major}.x", pytrace=False)
    log = os.environ.get("FIELDSYNC_LITECORE_LOG") or str(
        factory.mktemp("litecore-log") / "litecore.log"
    )
    if tag != "lc32" and os.environ.get("FIELDSYNC_LITECORE_LOG"):
        log = f"{log}.{tag}"  # one file per library: each has its own log callback
    lc.enable_log(os.environ.get("FIELDSYNC_LITECORE_LOG_LEVEL", "verbose"), log)
    _log_paths[tag] = Path(log)
    return lc


# -- the device side most interop tests share (a test module overrides what it needs) -----------


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> ConnectionRecorder:
    """Every connection the listener makes, open or closed (see ConnectionRecorder)."""
    return ConnectionRecorder(monkeypatch)


@pytest.fixture(scope="session")
def litecore(tmp_path_factory: pytest.TempPathFactory) -> LiteCore:
    """The loaded LiteCore 3.2 library, with its log going to a file."""
    return _load(LIB_ENV, litecore_lib_path(), SKIP_REASON, 3, "lc32", tmp_path_factory)


@pytest.fixture(scope="session")
def litecore32(litecore: LiteCore) -> LiteCore:
    """The loaded LiteCore 3.2 library (the same object as ``litecore``)."""
    return litecore


@pytest.fixture(scope="session")
def litecore41(tmp_path_factory: pytest.TempPathFactory) -> LiteCore:
    """The loaded LiteCore 4.1 library (``FIELDSYNC_LITECORE41_LIB``), log to its own file."""
    return _load(LIB41_ENV, litecore41_lib_path(), SKIP41_REASON, 4, "lc41", tmp_path_factory)


@pytest.fixture(params=["lc32", "lc41"])
def litecore_any(request: pytest.FixtureRequest) -> LiteCore:
    """Each configured LiteCore in turn (3.2, then 4.1); a missing one skips its case."""
    name = "litecore32" if request.param == "lc32" else "litecore41"
    lc: LiteCore = request.getfixturevalue(name)
    return lc


def _tools(lc: LiteCore) -> CblTools:
    tools = lc.tools
    if not tools.available:
        pytest.skip(f"cblpeer/cblpassive not built in {tools.bin_dir} (see litecore-tools)")
    return tools


@pytest.fixture(scope="session")
def cbl32(litecore32: LiteCore) -> CblTools:
    """``cblpeer``/``cblpassive`` built against the 3.2 library."""
    return _tools(litecore32)


@pytest.fixture(scope="session")
def cbl41(litecore41: LiteCore) -> CblTools:
    """``cblpeer``/``cblpassive`` built against the 4.1 library."""
    return _tools(litecore41)


@pytest.fixture
def litecore_log(litecore: LiteCore) -> Path | None:
    """The file LiteCore 3.2's log goes to in this test (None if logging went elsewhere)."""
    return _log_paths.get("lc32")


@pytest.fixture
def litecore41_log(litecore41: LiteCore) -> Path | None:
    """The file LiteCore 4.1's log goes to in this test."""
    return _log_paths.get("lc41")


@pytest.fixture
def phone(litecore: LiteCore, tmp_path: Path) -> Iterator[LiteDatabase]:
    """A fresh LiteCore 3.2 database playing the phone (Couchbase Lite 3.x) side."""
    db = litecore.open_db(tmp_path / "phone", "phone")
    yield db
    db.close()


@pytest.fixture
def phone32(phone: LiteDatabase) -> LiteDatabase:
    """The same as ``phone``: a fresh LiteCore 3.2 (rev-tree) database."""
    return phone


@pytest.fixture
def phone41(litecore41: LiteCore, tmp_path: Path) -> Iterator[LiteDatabase]:
    """A fresh LiteCore 4.1 database with rev trees (a 4.1 app that did not upgrade)."""
    db = litecore41.open_db(tmp_path / "phone41", "phone41")
    yield db
    db.close()


@pytest.fixture
def phone41_vv(litecore41: LiteCore, tmp_path: Path) -> Iterator[LiteDatabase]:
    """A fresh LiteCore 4.1 version-vector database: a Couchbase Lite 4.x phone."""
    db = litecore41.open_db(tmp_path / "phone41vv", "phone41vv", version_vectors=True)
    yield db
    db.close()


PHONE_KINDS = ("lc32", "lc41", "lc41-vv")


@pytest.fixture(params=PHONE_KINDS)
def any_phone(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiteDatabase]:
    """A fresh phone of each kind in turn: 3.2 rev trees, 4.1 rev trees, 4.1 version vectors.

    ``any_phone.lc.major`` and ``any_phone.version_vectors`` say which one a case got; a kind
    whose library is not configured skips.
    """
    kind = request.param
    lc: LiteCore = request.getfixturevalue("litecore32" if kind == "lc32" else "litecore41")
    db = lc.open_db(tmp_path / kind, "phone", version_vectors=kind.endswith("-vv"))
    yield db
    db.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for tag, path in sorted(_log_paths.items()):
            if path.is_file():
                report.sections.append((f"LiteCore {tag} log tail ({path})", _log_tail(path)))
