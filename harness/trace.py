"""``Trace``: what one rank observed while training a scenario, as plain picklable data.

Recorded by wrapping ``step`` on the engine or optimizer *instance* (the target's code is never edited):
just before each real optimizer step the full, unpartitioned, pre-clip gradients; just after it the full
parameters, the learning rate and the engine's counters; every micro-batch loss; what the user-facing
calls returned. Tensors are float32 CPU copies, so traces pickle and compare byte for byte.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

Tensors = dict[str, torch.Tensor]


@dataclass
class StepRecord:
    micro_step: int  # 0-based micro-batch after whose backward the step happened
    params: Tensors
    grads: Tensors = field(default_factory=dict)  # pre-clip, averaged over ranks, unpartitioned
    lr: float | None = None
    engine_grad_norm: float | None = None  # engine.get_global_grad_norm() right after the step (DeepSpeed)


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
    # Collective operations per micro-batch, by kind ("all_reduce", "reduce_scatter", ...), when counted.
    collectives: list[dict[str, int]] = field(default_factory=list)
    engine_global_steps: int | None = None
    engine_micro_steps: int | None = None
    final_params: Tensors = field(default_factory=dict)
    # Σ|grad| over the full gradients after the last step: 0.0 when they were zeroed, None when none exist.
    leftover_grad_abs_sum: float | None = None
    world: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class StepRecorder:
    """Counts real steps by wrapping ``step`` on one instance; snapshots gradients before, parameters after."""

    def __init__(self, trace: Trace, params: Callable[[], Tensors], grads: Callable[[], Tensors],
                 lr: Callable[[], float | None]) -> None:
        self.trace = trace
        self.params = params
        self.grads = grads
        self.lr = lr
        self.micro_step = -1
        self._pre_clip_grads: Tensors | None = None

    def _record(self, grads: Tensors, engine_grad_norm: float | None = None) -> None:
        self.trace.steps.append(StepRecord(self.micro_step, self.params(), grads, self.lr(), engine_grad_norm))

    def wrap_clip(self, accelerator: Any) -> None:
        """Non-DeepSpeed: the user clips before ``optimizer.step()``, so the pre-clip gradients are taken here."""
        original = accelerator.clip_grad_norm_

        def clip_grad_norm_(*args: Any, **kwargs: Any) -> Any:
            self._pre_clip_grads = self.grads()
            return original(*args, **kwargs)

        accelerator.clip_grad_norm_ = clip_grad_norm_

    def wrap_optimizer_step(self, optimizer: Any) -> None:
        """Every call of the raw torch optimizer's ``step`` is a real step."""
        original = optimizer.step

        def step(*args: Any, **kwargs: Any) -> Any:
            grads = self._pre_clip_grads if self._pre_clip_grads is not None else self.grads()
            self._pre_clip_grads = None
            result = original(*args, **kwargs)
            self._record(grads)
            return result

        optimizer.step = step

    def wrap_engine_step(self, engine: Any) -> None:
        """``engine.step()`` may run off-boundary (legacy paths): a real step is one that advances
        ``global_steps``. Gradients are gathered before it only when the engine is at a boundary."""
        original = engine.step

        def step(*args: Any, **kwargs: Any) -> Any:
            before = engine.global_steps
            grads = self.grads() if engine.is_gradient_accumulation_boundary() else {}
            result = original(*args, **kwargs)
            if engine.global_steps != before:
                norm = engine.get_global_grad_norm()
                self._record(grads, None if norm is None else float(norm))
            return result

        engine.step = step
