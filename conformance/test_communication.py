"""P7 communication, measured: gradient reductions counted as the process group ran them."""
from __future__ import annotations

from harness.properties import P7, promises_no_sync_off_boundary
from harness.pytest_plugin import accumgate, check


@accumgate(applies=promises_no_sync_off_boundary)
def test_no_gradient_reduction_before_the_boundary(accumgate_runner, scenario) -> None:
    """Where the backend promises it (DDP with the boundary known before forward; DeepSpeed ZeRO 0/1), no
    all_reduce/reduce_scatter runs on a non-final micro-batch and one does at every boundary. ZeRO 2/3
    reduce into partitions every micro-batch by design: their counts go to the report, not to a verdict."""
    check(accumgate_runner, scenario, [P7])
