"""Generated accumulation programs (harness/programs): per micro-batch an optional override, a context, a plain or
explicit backward and a step of any kind, drawn by Hypothesis within the backend's constraints and judged by every
property against the executable model of DESIGN §3 and the float64 oracle. Derandomized, a fixed budget per backend
(--accumgate-programs), the corpus of past counterexamples replayed first."""
from __future__ import annotations

from harness.pytest_plugin import explore_and_check


def test_generated_programs_follow_the_model(accumgate_runner, accumgate_programs, program_backend) -> None:
    explore_and_check(accumgate_runner, program_backend, accumgate_programs)
