"""P1 manual ≡ automatic, P2 backend ≡ oracle."""
from __future__ import annotations

from harness.properties import P1, P2
from harness.pytest_plugin import accumgate, check


@accumgate(applies=lambda s: s.is_uniform and s.api != "auto")
def test_manual_api_gives_the_bytes_of_accumulate(accumgate_runner, scenario) -> None:
    """On accumulate()'s own windows, every other API style trains to the same bytes on the same backend
    (DDP with the keyword alone: same mathematics, another reduction order, fp32 tolerance)."""
    check(accumgate_runner, scenario, [P1])


@accumgate(applies=lambda s: s.is_uniform)
def test_training_matches_the_float64_oracle(accumgate_runner, scenario) -> None:
    """Losses, pre-clip gradients and parameters after every step equal a single-process float64 computation
    (loss / configured G, mean over ranks, clip once, step), and every rank holds the same bytes."""
    check(accumgate_runner, scenario, [P2])
