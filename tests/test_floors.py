"""The house reads as floors (DESIGN §2): data at the bottom, then computation, then worlds, properties and reports,
then the runner, then the faces; no import runs upward, and ``reference_impl`` and the harness never import each
other (the harness reaches the reference only through a target string)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOORS = {
    0: ["scenario", "keywords", "programs.program", "programs.clauses", "programs.styles", "trace", "targets", "xfails",
        "models", "stack"],
    1: ["data", "compare", "tolerances", "programs.model", "programs.strategies", "oracle", "backends", "loops",
        "metrics", "results", "selection", "snapshot", "clients", "job", "shards"],
    2: ["world", "properties", "reports"],
    3: ["runner", "replay", "floors"],
    4: ["cli", "pytest_plugin", "worker", "explore", "programs.repro"],
}
FLOOR_OF = {name: floor for floor, names in FLOORS.items() for name in names}


def _floor(module: str) -> int:
    """The floor of a harness module (``properties.checks`` is on the floor of ``properties``)."""
    parts = module.split(".")
    for length in range(len(parts), 0, -1):
        name = ".".join(parts[:length])
        if name in FLOOR_OF:
            return FLOOR_OF[name]
    raise AssertionError(f"harness.{module} has no floor in tests/test_floors.py: give it one")


def _type_checking_only(tree: ast.AST) -> set[int]:
    """Ids of the import nodes under ``if TYPE_CHECKING:`` (annotations only: nothing runs them)."""
    return {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If)
            and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
            for stmt in node.body for inner in ast.walk(stmt)}


def _imports(path: Path, runtime_only: bool = False) -> list[tuple[str, int]]:
    """(imported module as a harness-relative or absolute name, line) for every import in a file (``runtime_only``:
    not those under ``if TYPE_CHECKING:``)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    tree = ast.parse(path.read_text())
    skipped = _type_checking_only(tree) if runtime_only else set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
            found += [(name, node.lineno) for name in names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
    return found


def _harness_modules() -> list[Path]:
    return sorted(p for p in (ROOT / "harness").rglob("*.py") if p.name != "__init__.py" or p.parent.name != "harness")


def test_no_import_runs_upward() -> None:
    upward = []
    for path in _harness_modules():
        own = ".".join(path.relative_to(ROOT / "harness").with_suffix("").parts).removesuffix(".__init__")
        for name, line in _imports(path):
            if not name.startswith("harness."):
                continue
            target = name.removeprefix("harness.")
            if target and _floor(target) > _floor(own):
                upward.append(f"harness/{path.relative_to(ROOT / 'harness')}:{line} (floor {_floor(own)}) imports "
                              f"{name} (floor {_floor(target)})")
    assert not upward, "\n".join(upward)


def test_reference_and_harness_never_import_each_other() -> None:
    crossing = [f"{path.relative_to(ROOT)}:{line} imports {name}"
                for path in _harness_modules() for name, line in _imports(path) if name.startswith("reference_impl")]
    crossing += [f"{path.relative_to(ROOT)}:{line} imports {name}"
                 for path in sorted((ROOT / "reference_impl").rglob("*.py")) for name, line in _imports(path)
                 if name.startswith("harness")]
    assert not crossing, "\n".join(crossing)


def _module_of(name: str, modules: set[str]) -> str | None:
    parts = name.split(".")
    for length in range(len(parts), 0, -1):
        if ".".join(parts[:length]) in modules:
            return ".".join(parts[:length])
    return None


def test_no_import_cycle_even_within_a_floor() -> None:
    """Issue 26: a floor may hold modules that import each other one way only; a cycle (lazy imports inside functions
    included, annotations under TYPE_CHECKING not) is two rooms that cannot be read apart. Strongly connected
    components of the runtime import graph, each of one module."""
    own = {p: ".".join(p.relative_to(ROOT / "harness").with_suffix("").parts).removesuffix(".__init__")
           for p in _harness_modules()}
    modules = set(own.values())
    graph = {name: {m for n, _ in _imports(path, runtime_only=True) if n.startswith("harness.")
                    for m in [_module_of(n.removeprefix("harness."), modules)] if m and m != name}
             for path, name in own.items()}

    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reach = {name: reaches(name) for name in graph}
    cycles = sorted({" <-> ".join(sorted({a} | {b for b in reach[a] if a in reach[b]})) for a in graph if a in reach[a]})
    assert not cycles, "import cycles: " + "; ".join(cycles)
