"""P6 grad norm: the returned and reported norms are the oracle's pre-clip norm; None / -1.0 exactly as specified."""
from __future__ import annotations

from harness.properties import P6
from harness.pytest_plugin import accumgate, check


@accumgate(applies=lambda s: s.api == "step_and_zero_grad" or s.is_deepspeed)
def test_grad_norm_is_the_pre_clip_global_norm(accumgate_runner, scenario) -> None:
    """optimizer_step_and_zero_grad returns None off-boundary and the pre-clip norm at a boundary (clipping
    applied once); engine.get_global_grad_norm(), where the engine has one, says the same."""
    check(accumgate_runner, scenario, [P6])
