"""A ``--target`` that names something other than an ``Accelerator`` class (a module, a function, a class of another
kind, an instance) is a usage error: exit 2 and one line saying what was found and what is expected, before any
scenario runs — not one ``error`` verdict per scenario."""
from __future__ import annotations

import pytest

from harness import cli
from harness.targets import TargetError, load_target


@pytest.mark.parametrize(("target", "found"), [
    ("reference_impl:errors", "found a module (reference_impl.errors)"),
    ("reference_impl:patch_accelerate", "found a function (reference_impl.patch.patch_accelerate)"),
    ("reference_impl.errors:UnmanagedAccumulationError",
     "found class reference_impl.errors.UnmanagedAccumulationError, which does not derive from accelerate.Accelerator"),
    ("harness.targets:BUILTIN_TARGETS", "found an instance of builtins.dict, not a class"),
])
@pytest.mark.parametrize("command", ["run", "explore"])
def test_a_target_that_is_not_an_accelerator_class_is_a_usage_error(target: str, found: str, command: str,
                                                                    tmp_path, capsys) -> None:
    assert cli.main([command, "--target", target, "--report-dir", str(tmp_path)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err == (f"accumgate: error: --target {target!r}: {found}; expected a class deriving from "
                   "accelerate.Accelerator (e.g. reference_impl:BoundaryAwareAccelerator)")
    assert not (tmp_path / "results.json").exists(), "nothing ran"


@pytest.mark.parametrize("target", ["reference", "native", "tests.vendor:VendorAccelerator"])
def test_accelerator_classes_load(target: str) -> None:
    from accelerate import Accelerator

    assert issubclass(load_target(target), Accelerator)


def test_the_ranks_refuse_it_the_same_way() -> None:
    """The ranks load the target through the same function: a run that bypasses the CLI gets the same sentence."""
    with pytest.raises(TargetError, match="found a module"):
        load_target("reference_impl:errors")
