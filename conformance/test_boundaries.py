"""P4 forced boundaries and step counts, P5 dynamic schedules."""
from __future__ import annotations

from harness.properties import P4, P5
from harness.pytest_plugin import accumgate, check


@accumgate()
def test_optimizer_steps_exactly_at_boundaries(accumgate_runner, scenario) -> None:
    """The optimizer steps after the boundary micro-batches and nowhere else; engine.global_steps counts
    boundaries; accelerator.sync_gradients reports each micro-batch's resolved boundary."""
    check(accumgate_runner, scenario, [P4])


@accumgate(applies=lambda s: not s.is_uniform)
def test_dynamic_schedule_matches_the_oracle(accumgate_runner, scenario) -> None:
    """Windows of any length (forced early/late, [3,1,4,2], every micro-batch, configured G ≠ window) train
    as the oracle says: each micro-batch loss divided by the configured G."""
    check(accumgate_runner, scenario, [P5])
