"""The import rules of firmware/fieldsync, checked on the source (an AST walk, so imports inside
functions and under ``TYPE_CHECKING`` count too).

Layers, each importing only downward: blip <- replication <- listener <- agent <- cli.
Beside them: store, tls and delta (anyone above may use them; they use only the base).
The base is a few top-level modules every package may import (errors, JSON helpers).
A new top-level module or package must be classified here before it is used.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "firmware" / "fieldsync"

#: Top-level modules every part of fieldsync may import (errors, JSON, durable files); they
#: import only each other.
#: (``__init__`` holds only ``__version__``.)
BASE = {"__init__", "errors", "fastjson", "files", "safejson"}

#: What each part may import besides itself and the base.
ALLOWED: dict[str, set[str]] = {
    "blip": set(),
    "store": set(),
    "tls": set(),
    "delta": set(),
    "replication": {"blip", "store", "delta"},
    "listener": {"blip", "store", "delta", "tls", "replication"},
    "agent": {"blip", "store", "delta", "tls", "replication", "listener", "pairing", "progress"},
    "cli": {
        "blip",
        "store",
        "delta",
        "tls",
        "replication",
        "listener",
        "agent",
        "replicator",
        "pairing",
        "progress",
    },
    # top-level modules
    "replicator": {"replication"},  # the public face of the active replicator
    "pairing": set(),
    "progress": set(),
    "__main__": {"cli"},
}
for _base in BASE:
    ALLOWED[_base] = set()


def part_of(module: str) -> str:
    """``fieldsync.store.database`` -> ``store``; ``fieldsync`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE_ROOT.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """Every fieldsync module ``path`` imports (absolute or relative), with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "fieldsync":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "fieldsync":
                continue
            if target == "fieldsync":  # from fieldsync import safejson / __version__
                for alias in node.names:
                    is_module = (PACKAGE_ROOT / alias.name).is_dir() or (
                        PACKAGE_ROOT / f"{alias.name}.py"
                    ).is_file()
                    yield node.lineno, f"fieldsync.{alias.name}" if is_module else "fieldsync"
            else:
                yield node.lineno, target


def sources() -> list[Path]:
    return sorted(PACKAGE_ROOT.rglob("*.py"))


def test_the_tree_is_found() -> None:
    assert len(sources()) > 50


def test_every_part_is_classified() -> None:
    parts = {part_of(module_name(path)) for path in sources()}
    unknown = sorted(parts - set(ALLOWED))
    assert not unknown, f"classify these in tests/test_layers.py ALLOWED: {unknown}"


def test_packages_import_only_downward() -> None:
    violations = []
    for path in sources():
        source = part_of(module_name(path))
        allowed = ALLOWED.get(source, set()) | BASE | {source}
        for line, target in imported_modules(path):
            wanted = part_of(target)
            if wanted not in allowed:
                violations.append(
                    f"{path.relative_to(PACKAGE_ROOT.parent)}:{line}: {source} imports {target}"
                )
    assert not violations, "imports against the layering:\n" + "\n".join(violations)


def test_no_import_cycles_between_modules() -> None:
    graph: dict[str, set[str]] = {}
    known = {module_name(path) for path in sources()}
    for path in sources():
        name = module_name(path)
        edges = graph.setdefault(name, set())
        for _line, target in imported_modules(path):
            # "from fieldsync.store import Database" depends on the package's __init__
            while target not in known and "." in target:
                target = target.rpartition(".")[0]
            if target == name or target not in known:
                continue
            if path.name == "__init__.py" and target.startswith(name + "."):
                continue  # a package re-exporting its own modules
            edges.add(target)
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in cycles)


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[set[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return result


@pytest.mark.parametrize(
    ("source", "target", "ok"),
    [
        ("fieldsync.replication.passive", "fieldsync.blip", True),
        ("fieldsync.blip.session", "fieldsync.replication.messages", False),
        ("fieldsync.store.database", "fieldsync.tls.identity", False),
        ("fieldsync.tls.context", "fieldsync.listener.auth", False),
        ("fieldsync.cli.run", "fieldsync.agent.service", True),
        ("fieldsync.listener.listener", "fieldsync.agent.config", False),
    ],
)
def test_the_rule_itself(source: str, target: str, ok: bool) -> None:
    origin = part_of(source)
    assert (part_of(target) in ALLOWED[origin] | BASE | {origin}) is ok


#: Facts with one home: a string constant holding the literal (docstrings aside) may appear
#: in that module only; elsewhere, import the name.
ONE_HOME = {
    "BLIP_3+CBMobile": "replication/messages.py",  # subprotocol names
    "_fieldsync._tcp": "agent/advertiser.py",  # the DNS-SD service type
    "/var/lib/fieldsync/keys": "tls/keystore.py",  # the device keystore
    "scrypt$": "listener/passwords.py",  # the password hash format
}
#: Names assigned at module level in exactly one module.
ONE_DEFINITION = {
    "SO_BINDTODEVICE": "listener/sockets.py",
    "DEFAULT_PORT": "listener/config.py",
}


def _string_constants(tree: ast.AST) -> Iterator[str]:
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
        if is_text and id(node) not in docstrings:
            yield node.value


@pytest.mark.parametrize(("literal", "home"), sorted(ONE_HOME.items()))
def test_shared_facts_have_one_home(literal: str, home: str) -> None:
    found = sorted(
        str(path.relative_to(PACKAGE_ROOT))
        for path in sources()
        if any(literal in text for text in _string_constants(ast.parse(path.read_text())))
    )
    assert found == [home], f"{literal!r} should live only in {home}: {found}"


@pytest.mark.parametrize(("name", "home"), sorted(ONE_DEFINITION.items()))
def test_shared_names_are_defined_once(name: str, home: str) -> None:
    found = sorted(
        str(path.relative_to(PACKAGE_ROOT))
        for path in sources()
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
    )
    assert found == [home], f"{name} should be defined only in {home}: {found}"
