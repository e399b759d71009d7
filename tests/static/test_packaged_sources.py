"""What the functions ship: never the development package, no import cycles, small modules.

Each function's source tree is built by scripts/package_functions.py into a temporary
folder (as ``make package`` does), then read with ``ast``; nothing is imported or run.

- ``kiln_dev`` (``dev/kiln_dev``: local stack, stand-in servers, fault injection, chaos,
  benchmarks, demo) is installed in the development venv but must never be deployed: no
  packaged file imports it, at module level or inside a function, and no packaged path
  holds a ``kiln_dev`` folder.
- The deployed package ``kiln`` (a copy of ``shared/kiln``) has no import cycles between
  its modules. Imports count wherever they are (module level, functions, classes), except
  under ``if TYPE_CHECKING:``; relative imports are resolved.
- No module of the packaged ``kiln`` is over ``MAX_LINES`` lines.

``KNOWN_CYCLES`` and ``LONG_MODULES`` list today's offenders so that the checks pass now and
fail on any new cycle or long module; an entry that no longer applies fails too, so the
lists only shrink.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tf_config import REPO

SCRIPT = REPO / "scripts" / "package_functions.py"
DEV_PACKAGE = "kiln_dev"
PACKAGE = "kiln"
MAX_LINES = 400

# Import cycles allowed in the deployed package, each the set of modules of one strongly
# connected component with why it exists. None: any cycle fails.
KNOWN_CYCLES: dict[frozenset[str], str] = {}

# Modules allowed over MAX_LINES lines (path inside the package -> one-line reason). None.
LONG_MODULES: dict[str, str] = {
    "core/lifecycle.py": "the one writer of job state: the fair queue's transitions sit "
                         "beside the others",
    "ports.py": "every port in one file, the one fakes and adapters are read against",
}


# -- building ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every function's tree, built by the package script into a temporary folder."""
    out = tmp_path_factory.mktemp("functions")
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    trees = [p for p in out.iterdir() if p.is_dir()]
    assert {"ingress", "worker", "sweeper"} <= {p.name for p in trees}
    return out


def trees(packaged: Path) -> list[Path]:
    return sorted(p for p in packaged.iterdir() if p.is_dir())


def deployed_package(packaged: Path) -> Path:
    """The packaged ``kiln`` (the same in every tree, which is checked)."""
    copies = [tree / PACKAGE for tree in trees(packaged)]
    listings = {tuple(sorted(p.relative_to(c).as_posix() for p in c.rglob("*.py"))) for c in copies}
    assert len(listings) == 1, "the function trees ship different kiln packages"
    return copies[0]


def python_files(tree: Path) -> list[Path]:
    return sorted(tree.rglob("*.py"))


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_bytes(), filename=str(path))


# -- (a) the development package is never shipped ------------------------------------------

def _is_dev(module: str) -> bool:
    return module == DEV_PACKAGE or module.startswith(DEV_PACKAGE + ".")


def dev_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import of kiln_dev anywhere in a parsed file: ``import``,
    ``from ... import`` (absolute), and ``importlib.import_module`` / ``__import__`` of a
    constant name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if _is_dev(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if _is_dev(node.module):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            dynamic = ((isinstance(func, ast.Name) and func.id == "__import__")
                       or (isinstance(func, ast.Attribute) and func.attr == "import_module"))
            name = node.args[0].value
            if dynamic and isinstance(name, str) and _is_dev(name):
                found.append((node.lineno, name))
    return sorted(found)


def test_dev_imports_finds_every_form() -> None:
    """Given the forms an import of kiln_dev takes (top level, in a function, in a class,
    from-import, dynamic), then dev_imports finds each and nothing that only looks alike."""
    source = (
        "import os, kiln_dev\n"
        "from kiln_dev.local import stack\n"
        "def f():\n    import kiln_dev.chaos as chaos\n"
        "class C:\n    def g(self):\n        from kiln_dev import bench\n"
        "import importlib\nx = importlib.import_module('kiln_dev.demo')\ny = __import__('kiln_dev')\n"
        "import kiln_devices\nfrom . import kiln_dev as local_name\nNAME = 'kiln_dev'\n"
        "from kiln.kiln_dev import z\n"
    )
    assert [m for _line, m in dev_imports(ast.parse(source))] == [
        "kiln_dev", "kiln_dev.local", "kiln_dev.chaos", "kiln_dev", "kiln_dev.demo", "kiln_dev"]


def test_no_packaged_file_imports_the_dev_package(packaged: Path) -> None:
    """Given every packaged function tree, then no Python file in it imports kiln_dev."""
    offenders = []
    for tree in trees(packaged):
        for path in python_files(tree):
            offenders += [f"{path.relative_to(packaged)}:{line}: imports {module}"
                          for line, module in dev_imports(parse(path))]
    assert not offenders, "the deployed sources import the development package:\n" + "\n".join(offenders)


def test_no_packaged_path_holds_the_dev_package(packaged: Path) -> None:
    """Given every packaged function tree, then no path in it has a kiln_dev folder."""
    offenders = [p.relative_to(packaged).as_posix() for p in packaged.rglob("*")
                 if DEV_PACKAGE in p.relative_to(packaged).parts[:-1]
                 or (p.is_dir() and p.name == DEV_PACKAGE)]
    assert not offenders, f"{DEV_PACKAGE} folders in the packaged trees: {sorted(offenders)}"


# -- (b) no import cycles in kiln ----------------------------------------------------------

@dataclass
class Graph:
    """Modules of a package and the imports between them (module -> target -> line)."""

    modules: dict[str, Path]
    edges: dict[str, dict[str, int]] = field(default_factory=dict)


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``root`` (the package folder)."""
    names = {}
    for path in python_files(root):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement anywhere in ``tree`` except under ``if TYPE_CHECKING:`` (its
    ``else`` branch does run)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            children: list[ast.AST] = [node.test, *node.orelse]
        else:
            children = list(ast.iter_child_nodes(node))
        stack.extend(reversed(children))


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (relative levels resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level > 1:
        base = base[:len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` or its longest prefix that is a module of the package."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph(root: Path, package: str) -> Graph:
    """The import graph of ``package`` (folder ``root``): an edge for each module an import
    statement names -- ``from pkg import sub`` names ``pkg.sub`` when that is a module,
    else ``pkg`` -- kept to the package's own modules, self-imports aside."""
    graph = Graph(module_names(root, package))
    for module, path in graph.modules.items():
        is_package = path.name == "__init__.py"
        edges: dict[str, int] = {}
        for node in runtime_imports(parse(path)):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                source = _resolve(module, is_package, node)
                targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in graph.modules
                           else source for alias in node.names]
            for target in targets:
                known = _known(target, graph.modules)
                if known and known != module:
                    edges.setdefault(known, node.lineno)
        graph.edges[module] = edges
    return graph


def strongly_connected(graph: Graph) -> list[frozenset[str]]:
    """Tarjan's strongly connected components of more than one module (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[frozenset[str]] = []
    counter = 0
    for start in sorted(graph.modules):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = []
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        work.append((start, iter(sorted(graph.edges.get(start, {})))))
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph.edges.get(succ, {})))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return sorted(found, key=sorted)


def shortest_cycle(graph: Graph, component: frozenset[str]) -> list[str]:
    """A shortest cycle through the component's first module (module names, closed)."""
    start = min(component)
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for succ in sorted(graph.edges[node]):
            if succ not in component:
                continue
            if succ == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if succ not in previous:
                previous[succ] = node
                queue.append(succ)
    raise AssertionError(f"no cycle through {start}")  # not a strongly connected component


def describe(graph: Graph, component: frozenset[str]) -> str:
    """The component's modules, a shortest cycle through it and every import inside it."""
    cycle = shortest_cycle(graph, component)
    inside = [f"    {a} -> {b}  (line {line})" for a in sorted(component)
              for b, line in sorted(graph.edges[a].items()) if b in component]
    return f"  cycle {' -> '.join(cycle)}; imports within {sorted(component)}:\n" + "\n".join(inside)


def write_package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_cycle_finder_on_a_small_package(tmp_path: Path) -> None:
    """Given a package with a relative-import cycle (a <-> b, one import inside a function),
    a three-module cycle through a subpackage, a TYPE_CHECKING-only import and an acyclic
    module, then exactly the two cycles are found, each as its set of modules."""
    root = write_package(tmp_path / "pkg", {
        "__init__.py": "",
        "a.py": "from . import b\n",
        "b.py": "def f():\n    from .a import thing\n",
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import d\n",
        "d.py": "import pkg.c\nimport os\n",
        "sub/__init__.py": "from .x import X\n",
        "sub/x.py": "from ..e import E\n",
        "e.py": "from pkg.sub import x\nfrom pkg import sub\n",
        "f.py": "import pkg.a\nfrom pkg.sub.x import X\n",
    })
    graph = import_graph(root, "pkg")
    assert graph.edges["pkg.b"] == {"pkg.a": 2}
    assert graph.edges["pkg.c"] == {}
    assert strongly_connected(graph) == [
        frozenset({"pkg.a", "pkg.b"}), frozenset({"pkg.e", "pkg.sub", "pkg.sub.x"})]
    assert shortest_cycle(graph, frozenset({"pkg.a", "pkg.b"})) == ["pkg.a", "pkg.b", "pkg.a"]


def test_deployed_package_has_no_new_import_cycles(packaged: Path) -> None:
    """Given the packaged kiln, then every import cycle between its modules lies within a
    KNOWN_CYCLES entry, and every entry still holds a cycle (the list only shrinks)."""
    graph = import_graph(deployed_package(packaged), PACKAGE)
    cycles = strongly_connected(graph)
    new = [c for c in cycles if not any(c <= known for known in KNOWN_CYCLES)]
    assert not new, ("import cycles in the deployed package kiln (module -> module (line of the import)):\n"
                     + "\n".join(describe(graph, c) for c in new))
    stale = [sorted(known) for known in KNOWN_CYCLES if not any(c <= known for c in cycles)]
    assert not stale, f"KNOWN_CYCLES entries that are no longer cycles; remove them: {stale}"


# -- (c) no long modules -------------------------------------------------------------------

def test_no_new_long_modules(packaged: Path) -> None:
    """Given the packaged kiln, then no module is over MAX_LINES lines unless LONG_MODULES
    lists it with a reason, and every entry of LONG_MODULES is still over (and present)."""
    root = deployed_package(packaged)
    lengths = {p.relative_to(root).as_posix(): len(p.read_text().splitlines())
               for p in python_files(root)}
    long = {rel: n for rel, n in lengths.items() if n > MAX_LINES}
    new = {rel: n for rel, n in long.items() if rel not in LONG_MODULES}
    assert not new, f"modules of kiln over {MAX_LINES} lines (split them): {new}"
    stale = sorted(rel for rel in LONG_MODULES if rel not in long)
    assert not stale, f"LONG_MODULES entries now at most {MAX_LINES} lines or gone; remove them: {stale}"
    assert all(reason.strip() and "\n" not in reason for reason in LONG_MODULES.values())
