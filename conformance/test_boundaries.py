"""P4 forced boundaries, step counts and the lr schedule; P5 dynamic schedules."""
from __future__ import annotations

from harness.pytest_plugin import accumgate_property, check


@accumgate_property("P4")
def test_optimizer_steps_exactly_at_boundaries(accumgate_runner, scenario) -> None:
    """The optimizer steps where the model of DESIGN §3 says and nowhere else; engine.global_steps counts the steps;
    accelerator.sync_gradients reports each micro-batch's resolved boundary; every step uses the scheduled lr."""
    check(accumgate_runner, scenario, "P4")


@accumgate_property("P5")
def test_dynamic_schedule_matches_the_oracle(accumgate_runner, scenario) -> None:
    """Windows of any length (forced early/late, [3,1,4,2], every micro-batch, configured G ≠ window, a DataLoader's
    partial last window) train as the oracle says: each micro-batch loss divided by the configured G."""
    check(accumgate_runner, scenario, "P5")
