"""The package's import graph: imports flow one way, so there is no circle anywhere.

Every ``import`` statement counts, also those inside functions or under ``TYPE_CHECKING``:
a circle hidden behind a deferred import is still two modules that cannot be understood,
tested or moved apart from each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sfpk

PACKAGE_ROOT = Path(sfpk.__file__).parent


def _module_name(path: Path) -> str:
    parts = ["sfpk", *path.relative_to(PACKAGE_ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` inside ``module``."""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([target] if target else [])])


def import_graph() -> dict[str, set[str]]:
    """Edges ``a -> b`` for every sfpk module ``a`` that imports sfpk module ``b``."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = (
                    _resolve(name, is_package, node.level, node.module)
                    if node.level
                    else node.module or ""
                )
                # ``from pkg import sub`` imports the module pkg.sub when there is one.
                targets = [
                    f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                    for alias in node.names
                ]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_graph_sees_relative_and_deferred_imports():
    """The parser must see the edges it is meant to police, or the next test proves nothing."""
    graph = import_graph()
    assert "sfpk.selection.topk" in graph["sfpk.pruners.particles.voting"]
    assert "sfpk.pruners.base" in graph["sfpk.pruners.particles.engine"]
    assert "sfpk.pruners.particles" in graph["sfpk.pruners"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circles_in_the_package():
    """Imports flow one way (style.md §1): no module reaches back to one that imports it."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    "low, high",
    [
        ("sfpk.masks.core", "sfpk.pruners"),
        ("sfpk.masks.construction", "sfpk.pruners"),
        ("sfpk.selection.topk", "sfpk.pruners"),
        ("sfpk.selection.cuts", "sfpk.pruners"),
        ("sfpk.pruners", "sfpk.pipelines"),
        ("sfpk.pruners", "sfpk.config.core"),
        ("sfpk.pruners", "sfpk.config.sections"),
        ("sfpk.cli.reference", "sfpk.cli"),
        ("sfpk.cli.reference", "sfpk.cli.commands"),
        ("sfpk.cli.reference", "sfpk.cli.pipelines"),
        ("sfpk.cli.reference", "sfpk.cli.tools"),
        ("sfpk.cli.reference_flags", "sfpk.cli"),
        ("sfpk.cli.reference_flags", "sfpk.cli.commands"),
        ("sfpk.cli.reference_flags", "sfpk.cli.pipelines"),
        ("sfpk.cli.reference_flags", "sfpk.cli.tools"),
    ],
)
def test_lower_layers_do_not_import_higher_ones(low, high):
    """Layering of docs/architecture.md: e.g. pruners know nothing of pipelines or config."""
    graph = import_graph()
    offenders = sorted(
        (a, b)
        for a, targets in graph.items()
        if a == low or a.startswith(low + ".")
        for b in targets
        if b == high or b.startswith(high + ".")
    )
    assert not offenders, offenders
