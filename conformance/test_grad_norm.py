"""P6 grad norm: the returned and reported norms are the oracle's pre-clip norm; None / -1.0 exactly as specified."""
from __future__ import annotations

from harness.pytest_plugin import accumgate_property, check


@accumgate_property("P6")
def test_grad_norm_is_the_pre_clip_global_norm(accumgate_runner, scenario) -> None:
    """optimizer_step_and_zero_grad returns None off-boundary and the pre-clip norm at a boundary (a Python float);
    engine.get_global_grad_norm() says the same wherever the engine computes one (ZeRO 1-3)."""
    check(accumgate_runner, scenario, "P6")
