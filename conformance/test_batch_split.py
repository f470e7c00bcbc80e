"""P10 batch-split invariance: the same samples cut as (micro-batch size, G) = (8, 1), (4, 2), (2, 4), (1, 8)."""
from __future__ import annotations

from harness.pytest_plugin import accumgate_property, check


@accumgate_property("P10")
def test_every_batch_split_trains_the_same(accumgate_runner, scenario) -> None:
    """Window losses, pre-clip gradients, norms and parameters after every step equal the one-micro-batch-per-window
    run's within fp32 tolerance: the MLP, and GPT-2 with the user's token normalisation and scale_wrt_gas=False
    through accelerate, the manual keyword and the raw engine."""
    check(accumgate_runner, scenario, "P10")
