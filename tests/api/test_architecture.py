"""The package's import graph: imports flow one way, through the layers of one table.

Every ``import`` statement counts, also those inside functions or under ``TYPE_CHECKING``:
a circle hidden behind a deferred import is still two modules that cannot be understood,
tested or moved apart from each other. :data:`MAY_IMPORT` is the layering of
``docs/architecture.md`` as data: which part of the package (a subpackage, or a module at the
top level) may import which. A new arrow against it fails here; a new part needs its row.
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


# Which part may import which (imports within a part are free). A part is a subpackage or a
# top-level module of sfpk; "__init__" is the package itself (the public surface). Rows go
# from the lowest layer up. "llm" (layer-wise LLM pruning) may be absent: a row for a part
# that does not exist yet only fixes what it will be allowed.
SHARED = {"errors", "model_state", "index_batches", "losses"}
MAY_IMPORT: dict[str, set[str]] = {
    "errors": set(),
    "model_state": set(),
    "index_batches": set(),
    "losses": {"errors"},
    "masks": {"errors", "model_state"},
    "selection": {"errors", "masks"},
    "models": {"errors"},
    "data": {"errors", "losses", "index_batches"},
    "training": {"errors", "losses", "masks"},
    "deploy": {"errors", "masks", "models"},
    "pruners": {"errors", "index_batches", "masks", "selection", "training"},
    "prune_args": {
        "errors",
        "losses",
        "model_state",
        "masks",
        "selection",
        "pruners",
        "training",
        "deploy",
    },  # fmt: skip
    "api": {"errors", "model_state", "masks", "selection", "pruners", "training", "prune_args"},
    "llm": SHARED | {"masks", "selection", "pruners", "training", "models", "data"},
    "config": {
        "errors",
        "masks",
        "selection",
        "training",
        "data",
        "models",
        "pruners",
        "prune_args",
    },  # fmt: skip
    "pipelines": SHARED
    | {
        "masks",
        "selection",
        "models",
        "data",
        "training",
        "deploy",
        "pruners",
        "prune_args",
        "api",
        "llm",
        "config",
    },  # fmt: skip
    "cli": SHARED
    | {
        "masks",
        "selection",
        "models",
        "data",
        "training",
        "deploy",
        "pruners",
        "prune_args",
        "api",
        "llm",
        "config",
        "pipelines",
    },  # fmt: skip
    "__main__": {"cli"},
    "__init__": {
        "errors",
        "masks",
        "selection",
        "models",
        "data",
        "training",
        "deploy",
        "pruners",
        "prune_args",
        "api",
        "config",
    },  # fmt: skip
}

# The arrows the layering exists to forbid (issue #21), checked on the table's closure.
NEVER = [
    *[(low, high) for low in ("masks", "selection") for high in ("pruners", "training",
                                                                 "pipelines", "cli")],
    ("pruners", "pipelines"),
    ("pruners", "config"),
    ("pruners", "cli"),
    ("training", "pruners"),
    ("deploy", "config"),
    ("deploy", "pipelines"),
    ("llm", "pipelines"),
    ("llm", "config"),
    ("llm", "cli"),
    ("config", "pipelines"),
    ("config", "cli"),
    ("pipelines", "cli"),
]  # fmt: skip


def part(module: str) -> str:
    """The part of the package ``module`` belongs to: ``sfpk.masks.core`` -> ``masks``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def crossings(graph: dict[str, set[str]], table: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Every import ``(a, b)`` between two parts that ``table`` does not allow."""
    return sorted(
        (a, b)
        for a, targets in graph.items()
        for b in targets
        if part(a) != part(b) and part(b) not in table.get(part(a), set())
    )


def reachable(table: dict[str, set[str]], start: str) -> set[str]:
    """The parts ``start`` may reach through the table, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in table.get(todo.pop(), set()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_graph_sees_relative_and_deferred_imports():
    """The parser must see the edges it is meant to police, or the next test proves nothing."""
    graph = import_graph()
    assert "sfpk.selection.cuts" in graph["sfpk.pruners.particles.voting"]
    assert "sfpk.pruners.base" in graph["sfpk.pruners.particles.engine"]
    assert "sfpk.pruners.particles" in graph["sfpk.pruners"]
    assert "sfpk.cli.commands" in graph["sfpk.cli"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circles_in_the_package():
    """Imports flow one way (style.md §1): no module reaches back to one that imports it."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_every_part_of_the_package_has_a_row():
    """A new subpackage or top-level module says what it may import before it imports."""
    missing = sorted({part(m) for m in import_graph()} - set(MAY_IMPORT))
    assert not missing, f"add a row to MAY_IMPORT for {missing}"


def test_the_table_is_a_layering():
    """The allowed arrows have no circle either, so the parts stack in layers."""
    cycle = find_cycle({name: allowed & set(MAY_IMPORT) for name, allowed in MAY_IMPORT.items()})
    assert cycle is None, "circle in MAY_IMPORT: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("low, high", NEVER, ids=[f"{a}-{b}" for a, b in NEVER])
def test_the_table_forbids_the_arrows_of_the_layering(low, high):
    """E.g. masks and selection never reach pruners, training or pipelines, not even through
    another part; pruners never reach pipelines, config or the CLI."""
    assert high not in reachable(MAY_IMPORT, low)


@pytest.mark.parametrize("name", sorted(MAY_IMPORT))
def test_no_import_crosses_the_table(name):
    """Every import between two parts is an arrow of MAY_IMPORT (a part not there yet: none)."""
    offenders = [(a, b) for a, b in crossings(import_graph(), MAY_IMPORT) if part(a) == name]
    assert not offenders, f"{name} may import only {sorted(MAY_IMPORT[name])}: {offenders}"


def test_a_planted_bad_import_is_caught():
    """The check reports an arrow the table lacks, and only that one."""
    graph = {"sfpk.masks.core": {"sfpk.errors", "sfpk.pruners.base"}, "sfpk.errors": set()}
    assert crossings(graph, MAY_IMPORT) == [("sfpk.masks.core", "sfpk.pruners.base")]


@pytest.mark.parametrize(
    "module, forbidden",
    [
        ("sfpk.cli.reference", "sfpk.cli"),
        ("sfpk.cli.reference", "sfpk.cli.commands"),
        ("sfpk.cli.reference_flags", "sfpk.cli"),
        ("sfpk.cli.reference_flags", "sfpk.cli.commands"),
    ],
)
def test_the_reference_translation_is_independent_of_the_commands(module, forbidden):
    """``sfpk reference``'s flag table and translation stand alone, usable without the CLI."""
    assert forbidden not in import_graph()[module]
