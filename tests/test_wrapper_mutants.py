"""Clauses of DESIGN §3 out of the explorer's reach (the fallbacks, the signatures, detection by capability) have
mutants too: each wrapper mutant of tests/mutants fails the wrapper contract the reference keeps (fake engines, as in
tests/test_deepspeed_wrapper.py)."""
from __future__ import annotations

import importlib

import pytest

from reference_impl import BoundaryAwareDeepSpeedEngineWrapper, PipelineEngineError, UnmanagedAccumulationError
from tests.fakes import EngineWithoutBoundaryApi, FakeEngine, PipelineEngine, loss_of


def _refuses_pipeline(cls) -> str | None:
    try:
        cls(PipelineEngine())
    except PipelineEngineError as exc:
        return None if "train_batch" in str(exc) else f"refused without naming train_batch: {exc}"
    return "a PipelineEngine was wrapped"


def _refuses_unmanaged(cls) -> str | None:
    try:
        cls(FakeEngine(managed=False))
    except UnmanagedAccumulationError as exc:
        return None if "managed_gradient_accumulation" in str(exc) else f"refused without naming the key: {exc}"
    except AssertionError as exc:
        return f"DeepSpeed's own assertion reached the user: {exc}"
    return "the unmanaged engine was accepted"


def _takes_the_old_signature(cls) -> str | None:
    engine = FakeEngine(gas=4)
    wrapper = cls(engine)
    try:
        for _ in range(8):
            wrapper.backward(loss_of(engine))
    except TypeError as exc:
        return f"backward(loss) (accelerate <= 1.7) fails: {exc}"
    return None if engine.global_steps == 2 else f"{engine.global_steps} steps, want 2 (the engine's counter)"


def _follows_the_counter_without_the_api(cls) -> str | None:
    engine = EngineWithoutBoundaryApi(gas=2)
    try:
        wrapper = cls(engine)
        for index in range(4):  # accelerate >= 1.8's call, the schedule agreeing with the engine's counter
            wrapper.backward(loss_of(engine), sync_gradients=index % 2 == 1)
    except (AttributeError, TypeError) as exc:  # the method is missing (a fork) or None (tests/fakes.py)
        return f"an engine without the boundary API crashed: {exc}"
    return None if engine.global_steps == 2 else f"{engine.global_steps} steps, want 2"


CHECKS = {"refuses_pipeline": _refuses_pipeline, "refuses_unmanaged": _refuses_unmanaged,
          "takes_the_old_signature": _takes_the_old_signature,
          "follows_the_counter_without_the_api": _follows_the_counter_without_the_api}
# (wrapper mutant, the check that must catch it)
WRAPPER_CATCHES = [
    ("wrapper_accepts_pipeline", "refuses_pipeline"),
    ("wrapper_lets_unmanaged_assert", "refuses_unmanaged"),
    ("wrapper_needs_sync_gradients", "takes_the_old_signature"),
    ("wrapper_detects_by_version", "follows_the_counter_without_the_api"),
]


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_the_reference_wrapper_keeps_the_contract(check: str) -> None:
    assert CHECKS[check](BoundaryAwareDeepSpeedEngineWrapper) is None


@pytest.mark.parametrize(("mutant", "check"), WRAPPER_CATCHES, ids=lambda v: v)
def test_each_wrapper_mutant_is_caught(mutant: str, check: str) -> None:
    wrapper = importlib.import_module(f"tests.mutants.{mutant}").Wrapper
    assert CHECKS[check](wrapper) is not None, f"{mutant} keeps the {check} contract"
