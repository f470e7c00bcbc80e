"""``Trace``: what one rank observed while training a scenario, as plain picklable data.

Recorded by wrapping ``step`` on the engine or optimizer *instance* (the target's code is never edited):
after each real optimizer step the full, unpartitioned parameters; every micro-batch loss; what
``optimizer_step_and_zero_grad`` returned; the engine's step counter.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass
class StepRecord:
    micro_step: int  # 0-based micro-batch after whose backward the step happened
    params: dict[str, torch.Tensor]


@dataclass
class Trace:
    rank: int
    losses: list[float] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    returned_norms: list[float | None] = field(default_factory=list)  # per micro-batch, step_and_zero_grad only
    sync_gradients: list[bool] = field(default_factory=list)  # accelerator.sync_gradients after each backward
    # Sum of all local .grad elements (float64) after each backward; None where gradients are partitioned
    # (ZeRO). Ranks see different data, so equal digests across ranks mean the gradients were all-reduced.
    grad_digests: list[float | None] = field(default_factory=list)
    engine_global_steps: int | None = None
    final_params: dict[str, torch.Tensor] = field(default_factory=dict)
    world: dict[str, Any] = field(default_factory=dict)


class StepRecorder:
    """Counts real steps by wrapping ``step`` on one instance and snapshots parameters after each."""

    def __init__(self, trace: Trace, snapshot: Callable[[], dict[str, torch.Tensor]]) -> None:
        self.trace = trace
        self.snapshot = snapshot
        self.micro_step = -1

    def wrap_optimizer_step(self, optimizer: Any) -> None:
        """Every call of a raw torch optimizer's ``step`` is a real step."""
        original = optimizer.step

        def step(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            self.trace.steps.append(StepRecord(self.micro_step, self.snapshot()))
            return result

        optimizer.step = step

    def wrap_engine_step(self, engine: Any) -> None:
        """``engine.step()`` may be called off-boundary (legacy paths): a real step advances ``global_steps``."""
        original = engine.step

        def step(*args: Any, **kwargs: Any) -> Any:
            before = engine.global_steps
            result = original(*args, **kwargs)
            if engine.global_steps != before:
                self.trace.steps.append(StepRecord(self.micro_step, self.snapshot()))
            return result

        engine.step = step
