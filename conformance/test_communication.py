"""P7 communication, measured: gradient reductions counted as the process group ran them."""
from __future__ import annotations

from harness.pytest_plugin import accumgate_property, check


@accumgate_property("P7")
def test_no_gradient_reduction_before_the_boundary(accumgate_runner, scenario) -> None:
    """Where the backend promises it (DDP: no all-reduce when sync was off at forward, a re-sync at an explicit
    boundary; DeepSpeed ZeRO 0/1: only at the boundary) the process group runs exactly those reductions."""
    check(accumgate_runner, scenario, "P7")
