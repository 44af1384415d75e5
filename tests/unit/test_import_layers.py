"""The layout stays true: no module imports a higher layer, and no import cycle exists.

Modules are parsed, not imported, so the check needs no broker and sees imports inside
functions and under ``TYPE_CHECKING`` too. docs/architecture.md draws the same layers.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

# Low to high: a module may import its own layer and the layers below it.
LAYERS: dict[str, int] = {
    "base": 0, "kafka": 1, "pipeline": 2, "models": 2, "example": 2,
    "runtime": 3, "monitoring": 4, "agents": 5, "cli": 6,
}
BASE_MODULES = {"__init__", "batches", "breaker", "codec", "control", "deadletter", "errors",
                "flatavro", "flatread", "outputs", "redelivery", "retry", "settings", "signing",
                "topics"}
MAPPED = {"agents", "topics", "schemas"}  # top-level folders mapped into the namespace


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name, with agents/ and topics/ mapped in."""
    found: dict[str, Path] = {}
    package = ROOT / "tidegate"
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).with_suffix("").parts
        if parts[0] in MAPPED:
            continue
        found[".".join(("tidegate", *parts)).removesuffix(".__init__")] = path
    for folder in ("agents", "topics"):
        for path in (ROOT / folder).glob("*.py"):
            name = f"tidegate.{folder}" + ("" if path.stem == "__init__" else f".{path.stem}")
            found[name] = path
    return found


def imports(path: Path, known: set[str]) -> Iterator[str]:
    """The tidegate modules ``path`` imports, wherever the import statement stands."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("tidegate"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("tidegate"):
                continue
            for alias in node.names:  # ``from tidegate import codec`` names a module
                submodule = f"{node.module}.{alias.name}"
                yield submodule if submodule in known else node.module


def room(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or (len(parts) == 2 and parts[1] in BASE_MODULES) or parts[1] == "topics":
        return "base"
    return parts[1]


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: {m for m in imports(path, known) if m != name} for name, path in found.items()}


def test_every_module_lives_in_a_known_room() -> None:
    unplaced = sorted(name for name in modules() if room(name) not in LAYERS)
    assert unplaced == [], "place new modules or rooms in LAYERS (and docs/architecture.md)"


def test_at_most_seven_rooms() -> None:
    rooms = {p.name for p in (ROOT / "tidegate").iterdir()
             if p.is_dir() and (p / "__init__.py").exists() and p.name not in MAPPED}
    assert len(rooms) <= 7, sorted(rooms)


def test_no_module_imports_a_higher_layer() -> None:
    upward = sorted(
        f"{name} -> {target} ({room(name)} -> {room(target)})"
        for name, targets in graph().items() for target in targets
        # a module outside the known rooms is the previous test's failure, not a KeyError here
        if LAYERS.get(room(target), -1) > LAYERS.get(room(name), len(LAYERS))
    )
    assert upward == []


def test_no_import_cycles() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    # Tarjan's strongly connected components; any component of two or more is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert cycles == []


def test_the_scanner_sees_real_imports() -> None:
    edges = graph()
    assert "tidegate.kafka.reader" in edges["tidegate.runtime.stage"]
    assert "tidegate.runtime.stage" in edges["tidegate.agents.ingest"]
    assert "tidegate.codec" in edges["tidegate.batches"]
    assert len(edges) > 60
