"""The package's import graph, read from the source with ``ast`` (nothing is imported).

* No cycle among powersam modules through **module-level** imports (those run at import time). Imports inside a
  function body are lazy by design (optional dependencies, heavy modules, the CLI's sub-commands) and are not
  edges of this graph; ``if TYPE_CHECKING:`` blocks are skipped too.
* The torch-free runtime (``powersam.runtime``) imports nothing from ``powersam.deploy``, ``powersam.models`` or
  torch, neither at module level nor lazily, and the modules it imports at module level don't either
  (transitively).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "powersam"
FORBIDDEN_IN_RUNTIME = ("powersam.deploy", "powersam.models", "torch")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, lazy: bool) -> set[str]:
    """Absolute names ``module`` imports: at module level (including class bodies, ``if``/``try`` blocks), and
    also inside functions when ``lazy``. ``from pkg import name`` counts as ``pkg.name`` when that is a module."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if lazy:
                    visit(node.body)
                continue
            if isinstance(node, ast.If) and _is_type_checking(node):
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    candidate = f"{target}.{alias.name}"
                    found.add(candidate if candidate in MODULES else target)
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if isinstance(children, list) and children and isinstance(children[0], (ast.stmt, ast.excepthandler)):
                    visit([c for c in children if isinstance(c, ast.stmt)] if field != "handlers"
                          else [s for h in children for s in h.body])

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return found


def _internal(names: set[str]) -> set[str]:
    return {name for name in names if name in MODULES}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = dfs(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = dfs(start)
            if cycle:
                return cycle
    return None


def test_the_parser_sees_relative_and_lazy_imports():
    """Guards the test itself: known edges of the real package are found (and lazy ones only when asked)."""
    assert "powersam.runtime.session" in _imports("powersam.runtime.integrated", lazy=False)
    assert "powersam.runtime.metadata" in _imports("powersam.runtime.session", lazy=False)
    cli_lazy = _imports("powersam.cli", lazy=True) - _imports("powersam.cli", lazy=False)
    assert any(name.startswith("powersam.models") for name in cli_lazy)


def test_find_cycle_reports_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_at_module_level():
    graph = {module: _internal(_imports(module, lazy=False)) - {module} for module in MODULES}
    cycle = _find_cycle(graph)
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("powersam.runtime")))
def test_runtime_never_imports_deploy_models_or_torch(module):
    direct = _imports(module, lazy=True)
    bad = sorted(n for n in direct if any(n == f or n.startswith(f + ".") for f in FORBIDDEN_IN_RUNTIME))
    assert not bad, f"{module} imports {bad}"
    # What it pulls in at import time must be torch-free as well (e.g. powersam.io, powersam.results).
    seen, todo = set(), [m for m in _internal(_imports(module, lazy=False))]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        names = _imports(name, lazy=False)
        bad = sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in FORBIDDEN_IN_RUNTIME))
        assert not bad, f"{module} imports {name}, which imports {bad} at module level"
        todo.extend(_internal(names))


def test_no_import_cycle_inside_the_runtime_even_lazily():
    """The runtime's modules form layers (metadata → session → models → loader), lazy imports included."""
    runtime = [m for m in MODULES if m.startswith("powersam.runtime.")]
    graph = {m: {n for n in _internal(_imports(m, lazy=True)) if n in runtime} - {m} for m in runtime}
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle inside the runtime: " + " -> ".join(cycle)
