"""The package's modules import one another one way: no import loops.

Read from the source with ``ast``, so nothing is imported: every ``import`` of a module of
this package counts, at module level or inside a function (a deferred import still ties
the two modules together), except those under ``if TYPE_CHECKING:``, which only type
checkers run.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest_scenelora

PACKAGE = Path(pytest_scenelora.__file__).parent


def module_name(path: Path) -> str:
    parts = ["pytest_scenelora", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules *path* imports, outside ``if TYPE_CHECKING:`` blocks."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # ``from . import shipped`` imports a module
                if f"{target}.{alias.name}" in modules:
                    found.add(f"{target}.{alias.name}")
            if target in modules:
                found.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph = {module_name(p): imports_of(p, modules) for p in paths}
    for name, targets in graph.items():  # a package's __init__ is not a loop of its own modules
        graph[name] = {t for t in targets if not name.startswith(f"{t}.")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state:
                cycle = walk(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = walk(node)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_deferred_imports() -> None:
    graph = import_graph()
    assert "pytest_scenelora.engine.bases" in graph["pytest_scenelora.engine.adapters"]  # inside validate()
    assert "pytest_scenelora.reporting.results" in graph["pytest_scenelora.reporting.terminal"]


def test_the_package_has_no_import_loop() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import loop: " + " -> ".join(cycle or [])


def test_a_loop_is_found() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


#: The layers, top first: a module imports only from its own layer or the ones below it.
#: Modules at the package's top level belong to the pytest glue unless named here as the
#: foundation every layer shares.
LAYERS = ("cli", "glue", "reporting", "checks", "scoring", "engine", "foundation")
FOUNDATION = {"errors", "fsutil", "cache", "workers", "specs", "scenes", "prompts", "shipped", "yamlfile",
              "strategies", "text"}


def layer_of(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts:
        return "glue"  # the package's __init__: the public API, re-exported lazily
    if parts[0] in LAYERS:
        return parts[0]
    return "foundation" if parts[0] in FOUNDATION else "glue"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    rank = {name: i for i, name in enumerate(LAYERS)}
    return sorted(f"{source} ({layer_of(source)}) imports {target} ({layer_of(target)})"
                  for source, targets in graph.items() for target in targets
                  if rank[layer_of(target)] < rank[layer_of(source)])


def test_imports_go_down_the_layers_only() -> None:
    graph = import_graph()
    assert {layer_of(m) for m in graph} == set(LAYERS)  # every layer exists, none is misspelt
    assert upward_imports(graph) == []


def test_an_upward_import_is_found() -> None:
    graph = {"pytest_scenelora.engine.bases": {"pytest_scenelora.reporting.terminal"},
             "pytest_scenelora.reporting.terminal": {"pytest_scenelora.text"}}
    assert upward_imports(graph) == [
        "pytest_scenelora.engine.bases (engine) imports pytest_scenelora.reporting.terminal (reporting)"]


def test_every_relative_import_names_a_module_of_the_package() -> None:
    """A deferred ``from .x import y`` inside a function fails only when that function
    runs; after modules move between packages, this finds the ones left pointing nowhere."""
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    dangling = []
    for path in paths:
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                if target not in modules:
                    dangling.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {target}")
    assert dangling == []


def test_the_readme_architecture_names_every_module() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Architecture\n", 1)[1].split("\n## ", 1)[0]
    words = set(re.findall(r"[a-z_]+", section))
    unnamed = sorted(module_name(p) for p in PACKAGE.rglob("*.py")
                     if p.stem not in ("__init__", "__main__") and p.stem not in words)
    assert unnamed == [], "README's Architecture section does not name: " + ", ".join(unnamed)
