"""No import cycles inside specdecode (DESIGN.md, habit 13): a shared helper module instead.

The graph is read with `ast` from every module, counting imports inside functions too: a lazy
import that closes a cycle (harness <-> report once) still ties two modules together and breaks
as soon as someone hoists it to the top. Imports by string (`__import__`) would hide edges from
this check, so they are refused as well.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import specdecode

PACKAGE = Path(specdecode.__file__).parent

# Cycles known and owned elsewhere, to be removed from this list when fixed (none now).
KNOWN_CYCLES: list[set[str]] = []


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, modules: dict) -> list[str]:
    """The specdecode modules an import statement loads (the deepest existing one per name)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix for a in node.names]
    out = []
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.append(name)
    return out


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(_targets(name, path.name == "__init__.py", node, modules))
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_lazy_imports():
    """The checker itself: a function-level import is an edge, and a cycle is found."""
    mods = _modules()
    graph = import_graph(mods)
    assert "specdecode.bench.report" in graph["specdecode.bench.harness"]
    assert "specdecode.cli_common" in graph["specdecode.server.cli"]
    assert "specdecode.server.cli" in graph["specdecode.cli"]  # the lazy import in make_parser
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_cycles_in_the_package():
    found = [c for c in cycles(import_graph(_modules())) if c not in KNOWN_CYCLES]
    assert not found, f"import cycles (move the shared piece into a module both import): {found}"


def test_no_imports_by_string():
    offenders = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
                offenders.append(f"{name}:{node.lineno}")
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module":
                arg = node.args[0] if node.args else None
                if isinstance(arg, ast.Constant) and str(arg.value).startswith(("specdecode", ".")):
                    offenders.append(f"{name}:{node.lineno}")
    assert not offenders, f"import specdecode modules with import statements, not by string: {offenders}"


@pytest.mark.parametrize("module", ["specdecode.bench.report", "specdecode.bench.llamacpp",
                                    "specdecode.server.cli", "specdecode.cli"])
def test_module_imports_first_in_a_fresh_interpreter(module):
    """Imported first, before anything else of specdecode: the entry points of the old cycles."""
    code = f"import {module}; import specdecode.cli as c; c.make_parser()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
