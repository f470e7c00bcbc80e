"""P8 hygiene: nothing of one window or one scenario leaks into the next."""
from __future__ import annotations

from harness.pytest_plugin import accumgate_property, check


@accumgate_property("P8")
def test_nothing_is_left_to_leak_into_the_next_window(accumgate_runner, scenario) -> None:
    """The gradients the program leaves behind, read in full (ZeRO 1-3 included), are exactly the float64 leftover:
    none after a step; the engine's counters are what the program implies."""
    check(accumgate_runner, scenario, "P8")


@accumgate_property("P8-leak")
def test_no_boundary_override_leaks_into_the_next_scenario(accumgate_runner, scenario) -> None:
    """Run right after a scenario that left set_deepspeed_gradient_accumulation_boundary(True) set, in the same
    processes and process group, the scenario gives its own bytes and the oracle's numbers."""
    check(accumgate_runner, scenario, "P8-leak")
