"""P9 fallbacks: where the feature cannot work, a clear error of the target's own; where it can, it trains right."""
from __future__ import annotations

from harness.pytest_plugin import accumgate_property, check


@accumgate_property("P9")
def test_fallbacks_train_right_or_refuse_by_name(accumgate_runner, scenario) -> None:
    """On an engine without the boundary API the engine's counter decides (legacy code, accumulate() and its
    DataLoader tail train as the model says) and only a user's contradicting boundary is refused, naming the missing
    API; managed_gradient_accumulation: false is refused naming the key; never a dependency's assert."""
    check(accumgate_runner, scenario, "P9")
