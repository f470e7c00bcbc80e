"""The live-bug repro scripts (docs/repros/*.py) are what a maintainer upstream runs: they must import nothing of this
project, only torch, accelerate, DeepSpeed, transformers and the standard library, and must say what they return.
Running them is the measurement (docs/live-bugs.md); this checks the promise that makes them attachable to a thread."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPROS = sorted((Path(__file__).resolve().parent.parent / "docs" / "repros").glob("*.py"))
UPSTREAM = {"torch", "accelerate", "deepspeed", "transformers"}


def _imported_roots(tree: ast.AST) -> set[str]:
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import cannot be upstream-only"
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            roots.add(node.args[0].value.split(".")[0])
    return roots


def test_there_are_repros() -> None:
    assert len(REPROS) >= 8, [p.name for p in REPROS]


@pytest.mark.parametrize("path", REPROS, ids=lambda p: p.stem)
def test_repro_imports_only_upstream(path: Path) -> None:
    roots = _imported_roots(ast.parse(path.read_text()))
    foreign = roots - UPSTREAM - set(sys.stdlib_module_names)
    assert not foreign, f"{path.name} imports {sorted(foreign)}: a repro imports only {sorted(UPSTREAM)} and the stdlib"


@pytest.mark.parametrize("path", REPROS, ids=lambda p: p.stem)
def test_repro_names_its_thread_and_exit_codes(path: Path) -> None:
    text = path.read_text()
    doc = ast.get_docstring(ast.parse(text)) or ""
    package, _, rest = path.stem.partition("-")
    # <package>-<number>.py names its thread; <package>-unfiled-<what>.py is a candidate new bug and says so
    thread = f"{package} (no upstream thread found)" if rest.startswith("unfiled-") else path.stem.replace("-", "#", 1)
    assert doc.startswith(thread), f"{path.name}: the docstring starts with its thread {thread!r}"
    said = " ".join(doc.split())
    assert "Exit 1 when the bug is present" in said and "0 when absent" in said, f"{path.name}: says what its exit means"
    assert "sys.exit(1 if present else 0)" in text, f"{path.name}: exits 1 exactly when it found the bug"


def test_the_import_check_can_fail() -> None:
    assert _imported_roots(ast.parse("import harness.runner\nfrom reference_impl import x")) == {"harness",
                                                                                                 "reference_impl"}
