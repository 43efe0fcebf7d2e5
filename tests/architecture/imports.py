"""The project's import graph, read from the source (no module is imported)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "nebula_site",
    "infra",
    "keys",
    "models_registry",
    "inference",
    "telemetry",
    "dashboard",
)


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (first-party)
    line: int
    in_function: bool
    type_checking: bool


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            modules[module_name(path)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module `name` refers to (a module, or the package holding a name)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[Import] = []

    def visit(node: ast.AST, *, in_function: bool, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            child_fn = in_function or isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
            )
            child_tc = type_checking or (
                isinstance(child, ast.If)
                and isinstance(child.test, ast.Name)
                and child.test.id == "TYPE_CHECKING"
            )
            names: list[str] = []
            line = getattr(child, "lineno", 0)
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                names = [f"{child.module}.{alias.name}" for alias in child.names]
            for name in names:
                target = _resolve(name, modules)
                if target is not None and target != module:
                    found.append(Import(module, target, line, in_function, type_checking))
            visit(child, in_function=child_fn, type_checking=child_tc)

    visit(tree, in_function=False, type_checking=False)
    return found


def all_imports() -> list[Import]:
    modules = project_modules()
    return [imp for mod, path in modules.items() for imp in imports_of(mod, path, modules)]


def cycles(edges: list[Import]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []
    counter = 0

    def strongconnect(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                strongconnect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            strongconnect(node)
    return result


if __name__ == "__main__":
    edges = [edge for edge in all_imports() if not edge.type_checking]
    for component in cycles(edges):
        print("CYCLE:", " ".join(component))
    for edge in edges:
        if edge.in_function:
            print(f"in-function: {edge.source}:{edge.line} -> {edge.target}")
