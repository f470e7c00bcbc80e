"""The DeepSpeed wrapper's contract, fast, on fake engines (see tests/fakes.py for why fakes here)."""
from __future__ import annotations

import pytest

from reference_impl import (
    BoundaryAwareDeepSpeedEngineWrapper,
    BoundaryUnsupportedError,
    PipelineEngineError,
    UnmanagedAccumulationError,
)
from tests.fakes import EngineWithoutBoundaryApi, FakeEngine, PipelineEngine, loss_of


def run_windows(wrapper: BoundaryAwareDeepSpeedEngineWrapper, windows: list[int]) -> list[float | None]:
    norms = []
    for window in windows:
        for index in range(window):
            wrapper.backward(loss_of(wrapper.engine), sync_gradients=index == window - 1)
            norms.append(wrapper.grad_norm_after_step())
    return norms


def _explicit(wrapper: BoundaryAwareDeepSpeedEngineWrapper, boundaries: list[bool]) -> list[float | None]:
    norms = []
    for boundary in boundaries:
        wrapper.backward(loss_of(wrapper.engine), is_final_micro_batch=boundary)
        norms.append(wrapper.grad_norm_after_step())
    return norms


def test_engine_steps_only_at_explicit_boundaries() -> None:
    engine = FakeEngine(gas=4)
    norms = run_windows(BoundaryAwareDeepSpeedEngineWrapper(engine), [3, 1, 4, 2])
    assert (engine.global_steps, engine.step_calls, engine.backward_calls) == (4, 4, 10)
    assert norms == [None, None, 2.5, 2.5, None, None, None, 2.5, None, 2.5]


def test_stepped_without_a_norm_returns_minus_one() -> None:
    engine = FakeEngine(stage=2, norm=None)
    assert run_windows(BoundaryAwareDeepSpeedEngineWrapper(engine), [2]) == [None, -1.0]


def test_zero0_norm_is_measured_before_the_step() -> None:
    """A plain torch optimizer at ZeRO-0 gives the engine no norm; the wrapper measures the grads itself."""
    engine = FakeEngine(stage=0)
    wrapper = BoundaryAwareDeepSpeedEngineWrapper(engine)
    wrapper.backward(loss_of(engine), sync_gradients=False)
    wrapper.backward(loss_of(engine), sync_gradients=True)
    # d/dw of 2 * (3 * (w·1 + b)) / 4 = 1.5 for each of w1, w2, b
    assert wrapper.grad_norm_after_step() == pytest.approx((3 * 1.5**2) ** 0.5)


def test_legacy_call_without_boundary_follows_the_engine_counter() -> None:
    """accelerate <= 1.7 calls backward(loss): step() after every backward, the engine's counter decides."""
    engine = FakeEngine(gas=4)
    wrapper = BoundaryAwareDeepSpeedEngineWrapper(engine)
    for _ in range(8):
        wrapper.backward(loss_of(engine))
    assert (engine.global_steps, engine.step_calls) == (2, 8)


def test_override_reaches_the_engine_before_backward_and_none_hands_it_back() -> None:
    engine = FakeEngine(gas=4)
    wrapper = BoundaryAwareDeepSpeedEngineWrapper(engine)
    wrapper.set_gradient_accumulation_boundary(True)
    assert engine.is_gradient_accumulation_boundary() is True
    wrapper.backward(loss_of(engine))
    assert engine.global_steps == 1
    wrapper.set_gradient_accumulation_boundary(None)
    assert engine._is_gradient_accumulation_boundary is None


def test_boundary_inside_the_engines_no_sync_is_not_an_assert() -> None:
    """accumulate() holds engine.no_sync() off its own schedule; an explicit boundary must still step."""
    engine = FakeEngine(gas=4)
    wrapper = BoundaryAwareDeepSpeedEngineWrapper(engine)
    engine.inside_no_sync_ctxt = True
    wrapper.backward(loss_of(engine), is_final_micro_batch=True)
    assert engine.global_steps == 1 and engine.inside_no_sync_ctxt is True


def test_a_schedules_boundary_inside_the_engines_no_sync_meets_deepspeeds_assert_as_upstream() -> None:
    """Untouched code (no explicit boundary) inside the user's own engine no_sync behaves as upstream accelerate:
    DeepSpeed refuses step() there; only a boundary the user gave lifts no_sync (DESIGN §3)."""
    engine = FakeEngine(gas=4)
    engine.inside_no_sync_ctxt = True
    with pytest.raises(AssertionError, match="no_sync"):
        BoundaryAwareDeepSpeedEngineWrapper(engine).backward(loss_of(engine), sync_gradients=True)


def test_engine_without_boundary_api_rejects_a_disagreeing_boundary() -> None:
    engine = EngineWithoutBoundaryApi(gas=4)
    wrapper = BoundaryAwareDeepSpeedEngineWrapper(engine)
    with pytest.raises(BoundaryUnsupportedError, match=r"set_gradient_accumulation_boundary.*0\.5\.8"):
        wrapper.backward(loss_of(engine), is_final_micro_batch=True)


def test_engine_without_boundary_api_rejects_a_disagreeing_override() -> None:
    engine = EngineWithoutBoundaryApi(gas=4)
    wrapper = BoundaryAwareDeepSpeedEngineWrapper(engine)
    wrapper.set_gradient_accumulation_boundary(True)
    with pytest.raises(BoundaryUnsupportedError):
        wrapper.backward(loss_of(engine))


def test_engine_without_boundary_api_follows_its_counter_over_the_schedule() -> None:
    """A schedule's boundary (accumulate() at a DataLoader's end, sync_gradients=True outside accumulate()) is not
    the user's: on an engine without the boundary API the counter decides and nothing raises (DESIGN §3)."""
    engine = EngineWithoutBoundaryApi(gas=4)
    wrapper = BoundaryAwareDeepSpeedEngineWrapper(engine)
    for _ in range(6):
        wrapper.backward(loss_of(engine), sync_gradients=True)
    assert (engine.global_steps, engine.step_calls) == (1, 6)


@pytest.fixture
def accelerate_17(monkeypatch):
    """accelerate <= 1.7: its wrapper's backward takes no sync_gradients, and DeepSpeed's counter decides."""
    from reference_impl import compat

    monkeypatch.setattr(compat, "upstream_wrapper_takes_sync_gradients", lambda: False)


def test_an_explicit_boundary_does_not_stick_to_the_engines_counter(accelerate_17) -> None:
    """DeepSpeed's boundary flag is sticky; after an explicit boundary, calls without one (accelerate <= 1.7's
    backward(loss)) are the counter's again."""
    engine = FakeEngine(gas=2)
    wrapper = BoundaryAwareDeepSpeedEngineWrapper(engine)
    wrapper.backward(loss_of(engine), is_final_micro_batch=False)
    stepped = []
    for _ in range(4):
        wrapper.backward(loss_of(engine))
        stepped.append(wrapper.stepped_last_backward)
    assert engine._is_gradient_accumulation_boundary is None
    # The held micro-batch counted: windows [held, plain] [plain, plain], as accumulate() would have it on 1.7.
    assert stepped == [True, False, True, False]
    assert (engine.global_steps, engine.step_calls) == (2, 5)


def test_a_held_boundary_counts_for_the_engines_counter_on_old_accelerate(accelerate_17) -> None:
    """accelerate <= 1.7 (no sync_gradients passed): the keyword False on three micro-batches, then a plain backward
    (the kwarg_hold style). The counter that decides the plain backward must have counted the held ones, or the
    optimizer never steps (the reference before this repair: 0 steps; found on the acc170-ds0154 matrix row)."""
    engine = FakeEngine(gas=4)
    wrapper = BoundaryAwareDeepSpeedEngineWrapper(engine)
    for _ in range(2):
        for _ in range(3):
            wrapper.backward(loss_of(engine), is_final_micro_batch=False)
        wrapper.backward(loss_of(engine))
    assert (engine.global_steps, engine.micro_steps) == (2, 8)


def test_a_held_boundary_does_not_step_the_engine_where_accelerate_passes_the_schedule() -> None:
    """accelerate >= 1.8 passes the schedule's boundary on every plain backward, so the counter decides nothing and
    the engine steps only at a boundary (its micro-step counter counts boundaries, as the model says)."""
    engine = FakeEngine(gas=4)
    wrapper = BoundaryAwareDeepSpeedEngineWrapper(engine)
    for _ in range(3):
        wrapper.backward(loss_of(engine), is_final_micro_batch=False)
    wrapper.backward(loss_of(engine), sync_gradients=True)
    assert (engine.global_steps, engine.micro_steps, engine.step_calls) == (1, 1, 1)


def test_engine_without_boundary_api_follows_its_counter_when_boundaries_agree() -> None:
    engine = EngineWithoutBoundaryApi(gas=2)
    wrapper = BoundaryAwareDeepSpeedEngineWrapper(engine)
    norms = [norm for window in ([False, True], [False, True]) for norm in _explicit(wrapper, window)]
    assert (engine.global_steps, engine.step_calls) == (2, 4)
    assert norms == [None, 2.5, None, 2.5]


def test_unmanaged_accumulation_is_rejected_naming_the_key() -> None:
    with pytest.raises(UnmanagedAccumulationError, match="managed_gradient_accumulation"):
        BoundaryAwareDeepSpeedEngineWrapper(FakeEngine(managed=False))


def test_pipeline_engine_points_to_train_batch() -> None:
    with pytest.raises(PipelineEngineError, match="train_batch"):
        BoundaryAwareDeepSpeedEngineWrapper(PipelineEngine())


def test_keyword_arguments_reach_the_engine() -> None:
    """transformers' Trainer sends scale_wrt_gas=False through accelerator.backward (transformers #35808)."""
    engine = FakeEngine()
    BoundaryAwareDeepSpeedEngineWrapper(engine).backward(loss_of(engine), sync_gradients=False, scale_wrt_gas=False)
    assert engine.last_backward_kwargs == {"scale_wrt_gas": False}


def test_capabilities_see_through_signature_hiding_decorators() -> None:
    """DeepSpeed wraps engine.backward in a decorator without functools.wraps; scale_wrt_gas must still show."""
    from reference_impl.compat import capabilities, parameters_of

    def hiding(function):
        def wrapper(*args, **kwargs):
            return function(*args, **kwargs)
        return wrapper

    @hiding
    def backward(self, loss, retain_graph=False, scale_wrt_gas=True):
        return loss

    assert "scale_wrt_gas" in parameters_of(backward)
    assert capabilities()["engine_scale_wrt_gas"] is True


def test_after_a_keyword_the_engine_sees_the_override_again_before_the_next_forward() -> None:
    """DESIGN §3: the keyword is per call; the override is visible to the engine before the forward pass. Found by the
    explorer (ds1, ds3): override True, ``backward(loss, is_final_micro_batch=False)``, then the engine's boundary
    read before the next forward was False."""
    engine = FakeEngine(gas=4)
    wrapper = BoundaryAwareDeepSpeedEngineWrapper(engine)
    wrapper.set_gradient_accumulation_boundary(True)
    wrapper.backward(loss_of(engine), is_final_micro_batch=False)
    assert engine.global_steps == 0  # the keyword held this one
    assert engine.is_gradient_accumulation_boundary() is True  # the override again, before the next forward
    wrapper.backward(loss_of(engine))
    assert engine.global_steps == 1
