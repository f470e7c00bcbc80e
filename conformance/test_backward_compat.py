"""P3 backward compatibility: code that does not use the new API trains to the bytes upstream accelerate gives."""
from __future__ import annotations

from harness.pytest_plugin import accumgate_property, check


@accumgate_property("P3")
def test_untouched_code_matches_upstream_accelerate(accumgate_runner, scenario) -> None:
    """accumulate() loops, plain backward(loss) loops and the user's own no_sync() give the same bytes on the target
    as on the installed upstream accelerate.Accelerator (run alongside, same world)."""
    check(accumgate_runner, scenario, "P3")
