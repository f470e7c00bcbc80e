"""P1 manual ≡ automatic, P2 backend ≡ oracle."""
from __future__ import annotations

from harness.pytest_plugin import accumgate_property, check


@accumgate_property("P1")
def test_manual_api_gives_the_bytes_of_accumulate(accumgate_runner, scenario) -> None:
    """On accumulate()'s own windows every other style trains to the same bytes on the same backend (DDP with the
    keyword alone: same mathematics, another reduction order, fp32 tolerance)."""
    check(accumgate_runner, scenario, "P1")


@accumgate_property("P2")
def test_training_matches_the_float64_oracle(accumgate_runner, scenario) -> None:
    """Losses, pre-clip gradients and every step equal a single-process float64 computation (loss / configured G,
    mean over ranks, clip once, step), judged from where the run stood; every rank holds the same bytes."""
    check(accumgate_runner, scenario, "P2")
