"""The package's import graph, drawn from the code: acyclic, and one-way between the layers.

Every ``import`` of a ``replayserver`` module counts, wherever it stands (module level, inside
a function, under ``TYPE_CHECKING``), so that no import can hide a cycle. The layers, bottom to
top, are the ones README.rst describes; a package may import from its own layer and below.
"""
from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

PACKAGE = Path(__file__).resolve().parents[1] / "replayserver"

#: Bottom to top. A top-level module or subpackage of replayserver belongs to one layer.
LAYERS = [
    {"config", "outcomes", "metrics", "deadlines", "limits", "listeners", "reporting", "stall",
     "memory", "transport", "replay"},
    {"merge"},
    {"game"},
    {"accept", "receive", "send", "save", "http", "bugsnag_reporter", "upkeep", "inspect"},
    {"service"},
    {"workers"},
    {"tap"},
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """The replayserver modules that ``path`` imports (a name imported from a package counts
    as its submodule when there is one)."""
    tree = ast.parse(path.read_text(), str(path))
    own = module_name(path)
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = own.split(".")[: len(own.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name == "replayserver" or name.startswith("replayserver.")}


def graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        edges[name] = {target for target in imports_of(path) if target in modules} - {name}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def part(module: str) -> str:
    """The top-level module or subpackage of replayserver a module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


class ImportGraphTests(SynchronousTestCase):
    def test_modules_import_each_other_without_cycles(self) -> None:
        self.assertIsNone(find_cycle(graph()))

    def test_packages_import_each_other_without_cycles(self) -> None:
        edges: dict[str, set[str]] = {}
        for source, targets in graph().items():
            if source == "replayserver":
                continue
            edges.setdefault(part(source), set()).update(
                part(target) for target in targets if part(target) != part(source)
                and target != "replayserver")
        self.assertIsNone(find_cycle(edges))

    def test_imports_go_down_the_layers(self) -> None:
        layer_of = {name: index for index, layer in enumerate(LAYERS) for name in layer}
        parts = {part(module) for module in graph() if module != "replayserver"}
        self.assertEqual(parts - set(layer_of), set(), "parts missing from LAYERS")
        upward = [
            (source, target) for source, targets in graph().items() if source != "replayserver"
            for target in targets if target != "replayserver"
            and layer_of[part(target)] > layer_of[part(source)]
        ]
        self.assertEqual(upward, [])

    def test_the_checker_sees_a_cycle_and_imports_inside_functions(self) -> None:
        self.assertEqual(find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}), ["a", "b", "c", "a"])
        self.assertIsNone(find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}))
        self.assertIn("replayserver.bugsnag_reporter",
                      imports_of(PACKAGE / "upkeep.py"))  # imported inside a function
