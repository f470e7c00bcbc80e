"""``Trace``: what one rank observed while training a scenario, as plain picklable data.

Recorded by wrapping ``step`` on the engine or optimizer *instance* (the target's code is never edited): just
before each real optimizer step the full, unpartitioned, pre-clip gradients and the learning rate the step uses;
just after it the full parameters (DeepSpeed's fp32 master weights where the engine keeps them) and the engine's
norm; every micro-batch's loss, ``sync_gradients`` and, where asked, the collectives it ran; what the user-facing
calls returned. Tensors are float32 CPU copies, so traces pickle and compare byte for byte. Nothing is left
out quietly: what could not be recorded stays ``None`` and the properties say so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

Tensors = dict[str, torch.Tensor]


@dataclass
class StepRecord:
    micro_step: int  # 0-based micro-batch during which the step happened
    params: Tensors  # after the step
    grads: Tensors | None = None  # pre-clip, averaged over ranks, unpartitioned; None: could not be read
    lr: float | None = None  # the learning rate this step used
    engine_grad_norm: float | None = None  # engine.get_global_grad_norm() right after the step (DeepSpeed)
    optimizers: tuple[int, ...] = (0,)  # which optimizers stepped during this micro-batch (two models: both, once)


@dataclass
class Trace:
    rank: int
    losses: list[float] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    # What optimizer_step_and_zero_grad returned by micro-batch (its first call there), for the micro-batches that called it
    returned: dict[int, float | None] = field(default_factory=dict)
    # What the later calls of the same micro-batch returned, in order (a second call for the same optimizer; the
    # other model's optimizer)
    returned_more: dict[int, list[float | None]] = field(default_factory=dict)
    # accelerator.clip_grad_norm_'s return value by micro-batch, for the micro-batches whose loop called it (the
    # pre-clip norm of the step there; on DeepSpeed accelerate >= 1.8 returns the engine wrapper's norm); with two
    # models, the first model's (each model's call is its own; the first one is the one compared)
    clip_returned: dict[int, float | None] = field(default_factory=dict)
    sync_gradients: list[bool] = field(default_factory=list)  # accelerator.sync_gradients after each backward
    # A query before the forward, by micro-batch: (accelerator.sync_gradients, engine.is_gradient_accumulation_boundary()
    # on DeepSpeed, else None)
    queries: dict[int, tuple[bool, bool | None]] = field(default_factory=dict)
    # Sum of all local .grad elements (float64) after each backward; None where gradients are partitioned
    # (ZeRO). Ranks see different data, so equal digests across ranks mean the gradients were all-reduced.
    grad_digests: list[float | None] = field(default_factory=list)
    # Collective operations per micro-batch, by kind ("all_reduce", "reduce_scatter", ...), when counted.
    collectives: list[dict[str, int]] = field(default_factory=list)
    engine_global_steps: int | None = None
    engine_micro_steps: int | None = None
    initial_params: Tensors = field(default_factory=dict)  # empty: the seeded model's weights (the oracle's own)
    final_params: Tensors = field(default_factory=dict)
    # The full gradients left after the program: ``.grad`` (no ZeRO partitioning), or, at ZeRO 1-3 where they live
    # in partitions, read right after one more backward of micro-batch ``leftover_probe`` at a boundary, unstepped.
    leftover_grads: Tensors | None = None
    leftover_probe: int | None = None
    params_are_master: bool = True  # params are the fp32 weights the optimizer updates (not bf16 copies)
    facts: dict[str, Any] = field(default_factory=dict)  # what the installed stack does (programs.model.Facts)
    world: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    warning_counts: dict[str, int] = field(default_factory=dict)  # how many times each of ``warnings`` was said
    log: str = ""  # what the dependencies printed during the job (shown on failure, never on the console)
    client_failure: str | None = None  # a client program (harness.clients): the assertion it stopped on


def _number(value: Any) -> float | None:
    """A returned norm as a Python float (a tensor, an FSDP2 DTensor, or a number), None as None."""
    if value is None:
        return None
    full = getattr(value, "full_tensor", None)
    return float(full() if callable(full) else value)


class StepRecorder:
    """Counts real steps by wrapping ``step`` on one instance; snapshots gradients and lr before, parameters after."""

    def __init__(self, trace: Trace, params: Callable[[], Tensors], grads: Callable[[], Tensors | None],
                 lr: Callable[[], float | None]) -> None:
        self.trace = trace
        self.params = params
        self.grads = grads
        self.lr = lr
        self.micro_step = -1
        self._pre_clip_grads: Tensors | None = None

    def _record(self, grads: Tensors | None, lr: float | None, engine_grad_norm: float | None = None,
                optimizer: int = 0) -> None:
        """One record per micro-batch that stepped: a second optimizer stepping in the same micro-batch (two models)
        joins the record (the parameters after both; the gradients from before the first), a repeated step of the
        same optimizer is a record of its own, so a double step shows."""
        last = self.trace.steps[-1] if self.trace.steps else None
        if last is not None and last.micro_step == self.micro_step and optimizer not in last.optimizers:
            last.params, last.optimizers = self.params(), last.optimizers + (optimizer,)
            return
        self.trace.steps.append(StepRecord(self.micro_step, self.params(), grads, lr, engine_grad_norm, (optimizer,)))

    def at_backward_end(self, boundary_reported: bool) -> None:
        """Off DeepSpeed, the gradients a step will use are complete (reduced) when the backward of its micro-batch
        returns, and the user clips them after: taken here, at every micro-batch the target reports as a boundary,
        they are the pre-clip gradients however the target clips (through ``clip_grad_norm_`` or its own way).
        A step on a micro-batch reported as no boundary (a bug) still records what it stepped on."""
        self._pre_clip_grads = self.grads() if boundary_reported else None

    def wrap_clip(self, accelerator: Any, take_grads: bool = True) -> None:
        """What ``clip_grad_norm_`` returns is recorded by micro-batch (P6 judges it); off DeepSpeed the user clips
        before ``optimizer.step()``, so the pre-clip gradients are taken here too (``take_grads``)."""
        original = accelerator.clip_grad_norm_

        def clip_grad_norm_(*args: Any, **kwargs: Any) -> Any:
            if take_grads and self._pre_clip_grads is None:  # two models clip in turn: the first sees both unclipped
                self._pre_clip_grads = self.grads()
            norm = original(*args, **kwargs)
            self.trace.clip_returned.setdefault(self.micro_step, _number(norm))
            return norm

        accelerator.clip_grad_norm_ = clip_grad_norm_

    def wrap_optimizer_step(self, optimizer: Any, index: int = 0) -> None:
        """Every call of the raw torch optimizer's ``step`` is a real step (``index``: which optimizer, of two)."""
        original = optimizer.step

        def step(*args: Any, **kwargs: Any) -> Any:
            last = self.trace.steps[-1] if self.trace.steps else None
            joins = last is not None and last.micro_step == self.micro_step and index not in last.optimizers
            grads = None if joins else (self._pre_clip_grads if self._pre_clip_grads is not None else self.grads())
            self._pre_clip_grads = None
            lr = self.lr()
            result = original(*args, **kwargs)
            self._record(grads, lr, optimizer=index)
            return result

        optimizer.step = step

    def wrap_engine_step(self, engine: Any) -> None:
        """``engine.step()`` may run off-boundary (the engine's own counter decides): a real step is one that
        advances ``global_steps``. Gradients are gathered before it only when the engine is at a boundary."""
        original = engine.step

        def step(*args: Any, **kwargs: Any) -> Any:
            before = engine.global_steps
            at_boundary = engine.is_gradient_accumulation_boundary()
            grads = self.grads() if at_boundary else None
            lr = self.lr()
            result = original(*args, **kwargs)
            if engine.global_steps != before:
                norm = engine.get_global_grad_norm()
                self._record(grads, lr, None if norm is None else float(norm))
            return result

        engine.step = step
