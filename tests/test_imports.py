"""No import cycles between the modules of bot/ and cogs/.

Every import counts: at module level, inside functions (lazy imports) and under
``if TYPE_CHECKING:``. A cycle that only works because one side imports lazily, or only for the
type checker, still ties the two modules together, so it is reported like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "cogs")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def imported_modules(source: str, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The project modules that ``source`` (module ``name``) imports anywhere in its text.

    ``import x.y`` names x.y; ``from x import y`` names x.y when that is a module, else x;
    relative imports are resolved against the module's package.
    """
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            for alias in node.names:
                candidate = f"{origin}.{alias.name}"
                found.add(candidate if candidate in known else origin)
    return {module for module in found if module in known and module != name}


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {
        name: imported_modules(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", known)
        for name, path in modules.items()
    }


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:  # Tarjan; the graph is small, recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
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
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first back to it)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & component):
                if target == start:
                    return [*paths[node], start]
                if target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle in the component {sorted(component)}")


def test_the_scanner_sees_every_kind_of_import() -> None:
    known = {"bot", "bot.app", "bot.errors", "bot.ui", "bot.ui.flow", "bot.ui.render", "cogs", "cogs.results"}
    source = """
from __future__ import annotations
from typing import TYPE_CHECKING
import discord
from bot.ui import flow
from bot.errors import ImagineError
from . import render
if TYPE_CHECKING:
    from bot.app import ImagineBot

def later():
    import cogs.results
"""
    assert imported_modules(source, "bot.ui.delivery", False, known) == {
        "bot.ui.flow",
        "bot.errors",
        "bot.ui.render",
        "bot.app",
        "cogs.results",
    }
    assert imported_modules("from .. import errors\nfrom ..ui import render", "bot.ui", True, known) == {
        "bot.errors",
        "bot.ui.render",
    }


def test_cycle_finder_reports_a_path() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_bot_and_cogs() -> None:
    graph = import_graph()
    assert "bot.cli" in graph and "cogs.results" in graph  # the scan found the project
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join("  " + " -> ".join(cycle) for cycle in cycles)
