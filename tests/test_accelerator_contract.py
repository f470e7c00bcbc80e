"""The reference accelerator keeps every per-call promise of DESIGN §3 (single process, real accelerate)."""
from __future__ import annotations

import pytest

from reference_impl import BoundaryAwareAccelerator
from tests.contract import CHECKS


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_reference_keeps_the_contract(check: str, fresh_accelerate_state) -> None:
    violations = CHECKS[check](BoundaryAwareAccelerator)
    assert not violations, "\n".join(violations)


def test_untouched_code_behaves_as_upstream(fresh_accelerate_state) -> None:
    """No keyword, no override: the same bytes as upstream accelerate's accumulate() loop."""
    import accelerate

    from tests.contract import _micro_batch, _setup

    finals = []
    for cls in (accelerate.Accelerator, BoundaryAwareAccelerator):
        accelerator, model, optimizer = _setup(cls)
        for index in range(1, 9):
            with accelerator.accumulate(model):
                _micro_batch(accelerator, model, optimizer, index)
        finals.append([p.detach().clone() for p in model.parameters()])
    assert all(a.equal(b) for a, b in zip(*finals))


def test_patch_accelerate_swaps_and_restores(fresh_accelerate_state) -> None:
    import accelerate
    import accelerate.accelerator
    import accelerate.utils.deepspeed

    from reference_impl import BoundaryAwareDeepSpeedEngineWrapper, patch_accelerate

    original = accelerate.Accelerator
    with patch_accelerate():
        assert accelerate.Accelerator is BoundaryAwareAccelerator
        assert accelerate.accelerator.DeepSpeedEngineWrapper is BoundaryAwareDeepSpeedEngineWrapper
        assert not CHECKS["kwarg"](accelerate.Accelerator)
    assert accelerate.Accelerator is original
    assert accelerate.utils.deepspeed.DeepSpeedEngineWrapper is not BoundaryAwareDeepSpeedEngineWrapper


def test_max_grad_norm_differing_from_deepspeed_clipping_warns_once(fresh_accelerate_state) -> None:
    """DeepSpeed clips with its own gradient_clipping; a different max_grad_norm is named, once."""
    import warnings

    from reference_impl import BoundaryAwareDeepSpeedEngineWrapper
    from tests.fakes import FakeEngine

    accelerator = BoundaryAwareAccelerator(cpu=True)
    accelerator.deepspeed_engine_wrapped = BoundaryAwareDeepSpeedEngineWrapper(FakeEngine(clipping=1.0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for max_grad_norm in (2.0, 2.0, 1.0):
            accelerator._warn_on_clip_mismatch(max_grad_norm)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "max_grad_norm=2.0" in messages[0] and "gradient_clipping=1.0" in messages[0]


def test_deepspeed_refuses_an_optimizer_it_does_not_own(fresh_accelerate_state, monkeypatch) -> None:
    """DESIGN §3: on DeepSpeed, whose engine owns its one optimizer and steps it inside backward, a call naming any
    other optimizer than the one prepare returned is refused with a clear error, at a boundary or not; the prepared
    one (or the optimizer it wraps) is accepted."""
    import torch
    from accelerate.utils import DistributedType
    from accelerate.utils.deepspeed import DeepSpeedOptimizerWrapper

    from reference_impl import BoundaryError

    accelerator = BoundaryAwareAccelerator(cpu=True)
    monkeypatch.setattr(BoundaryAwareAccelerator, "distributed_type", property(lambda self: DistributedType.DEEPSPEED))
    owned = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    prepared = DeepSpeedOptimizerWrapper(owned)
    accelerator._optimizers = [prepared]
    other = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    for boundary in (None, False, True):
        accelerator._last_boundary = boundary
        with pytest.raises(BoundaryError, match="engine owns its one optimizer"):
            accelerator.optimizer_step_and_zero_grad(other)
    accelerator._last_boundary = False
    assert accelerator.optimizer_step_and_zero_grad(prepared) is None
    assert accelerator.optimizer_step_and_zero_grad(owned) is None
