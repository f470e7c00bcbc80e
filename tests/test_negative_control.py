"""Negative control: upstream accelerate (``--target native``) passes the automatic scenarios and is reported
``unsupported`` for the manual API styles, without crashing."""
from __future__ import annotations

import pytest

from harness.runner import Runner, WorldPool
from harness.scenario import Scenario

pytestmark = [pytest.mark.world, pytest.mark.harness]


def test_upstream_accelerate_is_the_negative_control() -> None:
    scenarios = [Scenario("ds0", "auto", "uni4"), Scenario("ddp", "auto", "uni4"), Scenario("ds3", "auto", "uni4"),
                 Scenario("ds0", "kwarg", "uni4"), Scenario("ddp", "set_boundary", "dyn3142"),
                 Scenario("ds3", "step_and_zero_grad", "uni4"), Scenario("ds2", "auto", "dyn3142")]
    results = Runner("native", pool=WorldPool()).run(scenarios)
    got = {o.scenario: (o.outcome, o.reason) for o in results.outcomes}
    for scenario in scenarios[:3]:
        assert got[scenario.id][0] == "pass", got[scenario.id]
    for scenario in scenarios[3:]:
        outcome, reason = got[scenario.id]
        assert outcome == "unsupported", (scenario.id, outcome)
        assert "accelerate.accelerator.Accelerator" in reason
