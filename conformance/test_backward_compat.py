"""P3 backward compatibility: code that does not use the new API trains to the bytes upstream accelerate gives."""
from __future__ import annotations

from harness.properties import P3
from harness.pytest_plugin import accumgate, check


@accumgate(applies=lambda s: s.api in ("auto", "legacy") and s.is_uniform)
def test_untouched_code_matches_upstream_accelerate(accumgate_runner, scenario) -> None:
    """accumulate() loops on their own windows and plain backward(loss) loops give the same bytes on the target
    as on the installed upstream accelerate.Accelerator (run alongside, same world)."""
    check(accumgate_runner, scenario, [P3])
