"""The layering rules of ARCHITECTURE.md, checked on the real import graph (grimp, import-linter's own graph
library; `lint-imports` checks the layer contracts in pyproject.toml the same way in CI).

An import inside a function or under TYPE_CHECKING counts: a cycle dodged by a late import is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest

from tests.support.constants import REPO_ROOT

MAX_MODULE_LINES = 400


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("server", "pipelines")


def _strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's algorithm over direct imports; components of more than one module are cycles."""
    modules = sorted(graph.modules)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(module: str) -> None:
        nonlocal counter
        index[module] = low[module] = counter
        counter += 1
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in modules:
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    assert _strongly_connected(graph) == []


def test_the_engine_never_imports_the_server(graph: grimp.ImportGraph) -> None:
    assert not graph.chain_exists(importer="pipelines", imported="server", as_packages=True)


def test_modules_stay_small() -> None:
    sizes = {path.relative_to(REPO_ROOT).as_posix(): len(path.read_text().splitlines())
             for folder in ("server", "pipelines") for path in (REPO_ROOT / folder).rglob("*.py")}
    assert {name: lines for name, lines in sizes.items() if lines > MAX_MODULE_LINES} == {}


def test_no_getattr_probing_of_backends() -> None:
    """The backend protocol declares every capability; nobody asks a backend whether it has one."""
    offenders = []
    for path in (REPO_ROOT / "server").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("getattr", "hasattr") and node.args
                    and "backend" in ast.unparse(node.args[0]).lower()):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert offenders == []


def test_the_version_has_one_source() -> None:
    import tomllib

    import server

    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert server.__version__ == pyproject["project"]["version"]
    assert Path(server.__file__).read_text().count(pyproject["project"]["version"]) == 0
