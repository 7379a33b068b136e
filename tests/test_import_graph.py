"""No import cycle among ifa's modules (issue 31).

The graph: one node per module of `ifa/` (a package is its `__init__`), an edge A -> B when A imports B, read from
the source with `ast` (nothing is imported): `import ifa.x.y` and `from .x import y` point at the module named (at
`ifa.x.y` when y is a submodule, else at `ifa.x`). Edges to a module's parent packages, which Python runs first,
are not drawn: every package's `__init__` would otherwise sit on a cycle with its own submodules.
The module-level graph (what runs at import) must be acyclic; so must the graph with the imports inside functions
added, so that no cycle hides behind a deferred import. `if TYPE_CHECKING:` blocks are left out of both.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ifa"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _nearest_module(name: str) -> str:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _top_level(body: list[ast.stmt]):
    """The statements that run when the module is imported: not inside functions, classes or TYPE_CHECKING."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        yield node
        for block in ("body", "orelse", "finalbody", "handlers"):
            yield from _top_level(getattr(node, block, None) or [])


def _type_checking_imports(tree: ast.Module) -> set[int]:
    return {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}


def imports(name: str, module_level_only: bool) -> set[str]:
    """The ifa modules that module `name` imports."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skip = _type_checking_imports(tree)
    nodes = _top_level(tree.body) if module_level_only else (n for n in ast.walk(tree) if id(n) not in skip)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {_nearest_module(a.name) for a in node.names if a.name.split(".")[0] == "ifa"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - (node.level - 1)] + ([base] if base else []))
            if base.split(".")[0] != "ifa":
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES else _nearest_module(base))
    return found - {name, ""}


def graph(module_level_only: bool) -> dict[str, set[str]]:
    return {name: imports(name, module_level_only) for name in MODULES}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle [a, b, ..., a] of the directed graph, or None (depth-first search, colouring the nodes)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_checker_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert imports("ifa.cards", True) == {"ifa.io"}  # the graph sees relative imports
    assert "ifa.models.checkpoint" in imports("ifa.models", True)  # `from .checkpoint import ...` in a package
    assert {"ifa.cards", "ifa.io", "ifa.models.config"} <= imports("ifa.models.checkpoint", True)


def test_no_import_cycle_at_module_level():
    cycle = find_cycle(graph(module_level_only=True))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_behind_deferred_imports():
    cycle = find_cycle(graph(module_level_only=False))
    assert cycle is None, "import cycle through imports inside functions: " + " -> ".join(cycle)


def test_io_is_a_leaf():
    assert imports("ifa.io", module_level_only=False) == set()
