"""The package's modules form layers: no import cycle, and the low layers import nothing above them."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ddim_ode"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (at module level or inside functions)."""
    mods = _modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                base = node.module or ""
                if node.level:
                    head = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(head + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            for target in targets:
                dep = owner(target)
                # a module may use its own package's index (the parents of its name)
                if dep and dep != name and not name.startswith(dep + ".") and dep != "ddim_ode":
                    deps.add(dep)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    assert _cycles(import_graph()) == []


def test_a_cycle_would_be_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


LOW_LAYERS = {
    "ddim_ode.schedules": set(),
    "ddim_ode.field": {"ddim_ode.schedules"},
    "ddim_ode.grids": {"ddim_ode.schedules", "ddim_ode.published_grids"},
    "ddim_ode.published_grids": {"ddim_ode.schedules"},
    "ddim_ode.solvers.base": {"ddim_ode.field"},
}


def test_low_layers_import_nothing_above_them():
    graph = import_graph()
    for module, allowed in LOW_LAYERS.items():
        assert graph[module] <= allowed, (module, graph[module] - allowed)
    above_solvers = {"ddim_ode.core", "ddim_ode.driver", "ddim_ode.adjoint", "ddim_ode.models", *CLI_LAYERS}
    for module, deps in graph.items():
        if module.startswith("ddim_ode.solvers"):
            assert not deps & above_solvers, (module, deps & above_solvers)


#: the command line's modules, bottom to top: each imports only modules before it in this list
CLI_LAYERS = [
    "ddim_ode.cli_errors",
    "ddim_ode.cli_io",
    "ddim_ode.cli_plan",
    "ddim_ode.cli_model",
    "ddim_ode.cli_common",
    "ddim_ode.cli_parser",
    "ddim_ode.cli",
    "ddim_ode.__main__",
]


def test_the_command_line_is_layered_and_only_it_imports_itself():
    graph = import_graph()
    assert {m for m in graph if m.startswith("ddim_ode.cli")} <= set(CLI_LAYERS)  # a new module gets its place
    for i, module in enumerate(CLI_LAYERS):
        above = graph[module] & set(CLI_LAYERS[i + 1 :])
        assert not above, (module, above)
    for module, deps in graph.items():
        if module not in CLI_LAYERS:
            assert not deps & set(CLI_LAYERS), (module, deps & set(CLI_LAYERS))
