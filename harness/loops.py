"""The training loops of each API style, side by side, a few lines each (the habit of accelerate's test_sync).

A loop only drives the accelerator the way a user would and records what the user would see; it checks
nothing. ``uniform`` schedules use ``accumulate()``'s own boundaries; other schedules pass the boundary
explicitly, which is the point of the feature.
"""
from __future__ import annotations

from typing import Any, Callable

from .data import micro_batch
from .models import loss_fn
from .scenario import Scenario
from .trace import StepRecorder, Trace


def _forward_loss(model: Any, scenario: Scenario, rank: int, index: int, trace: Trace) -> Any:
    inputs, targets = micro_batch(scenario.seed, rank, index, scenario.micro_batch_size)
    loss = loss_fn(model(inputs), targets)
    trace.losses.append(float(loss.detach()))
    return loss


def _after_backward(accelerator: Any, model: Any, trace: Trace) -> None:
    trace.sync_gradients.append(bool(accelerator.sync_gradients))
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    trace.grad_digests.append(float(sum(g.double().sum() for g in grads)) if grads else None)


def _clip_step_zero(accelerator: Any, model: Any, optimizer: Any, scenario: Scenario) -> None:
    """The standard accelerate idiom: the optimizer wrapper skips step/zero_grad off-boundary."""
    if accelerator.sync_gradients and scenario.clip is not None:
        accelerator.clip_grad_norm_(model.parameters(), scenario.clip)
    optimizer.step()
    optimizer.zero_grad()


def _auto(accelerator: Any, model: Any, optimizer: Any, scenario: Scenario, rank: int, index: int,
          is_final: bool, trace: Trace) -> None:
    with accelerator.accumulate(model):
        loss = _forward_loss(model, scenario, rank, index, trace)
        if scenario.is_uniform:
            accelerator.backward(loss)
        else:  # accumulate() cannot follow other windows by itself: the explicit boundary takes precedence
            accelerator.backward(loss, is_final_micro_batch=is_final)
        _after_backward(accelerator, model, trace)
        _clip_step_zero(accelerator, model, optimizer, scenario)


def _kwarg(accelerator: Any, model: Any, optimizer: Any, scenario: Scenario, rank: int, index: int,
           is_final: bool, trace: Trace) -> None:
    loss = _forward_loss(model, scenario, rank, index, trace)
    accelerator.backward(loss, is_final_micro_batch=is_final)
    _after_backward(accelerator, model, trace)
    _clip_step_zero(accelerator, model, optimizer, scenario)


def _set_boundary(accelerator: Any, model: Any, optimizer: Any, scenario: Scenario, rank: int, index: int,
                  is_final: bool, trace: Trace) -> None:
    accelerator.set_deepspeed_gradient_accumulation_boundary(is_final)
    loss = _forward_loss(model, scenario, rank, index, trace)
    accelerator.backward(loss)
    _after_backward(accelerator, model, trace)
    _clip_step_zero(accelerator, model, optimizer, scenario)


def _step_and_zero_grad(accelerator: Any, model: Any, optimizer: Any, scenario: Scenario, rank: int, index: int,
                        is_final: bool, trace: Trace) -> None:
    with accelerator.accumulate(model):
        loss = _forward_loss(model, scenario, rank, index, trace)
        if scenario.is_uniform:
            accelerator.backward(loss)
        else:
            accelerator.backward(loss, is_final_micro_batch=is_final)
        _after_backward(accelerator, model, trace)
        # Called on every micro-batch on purpose: off-boundary it must do nothing and return None.
        trace.returned_norms.append(accelerator.optimizer_step_and_zero_grad(optimizer, model, scenario.clip))


LOOPS: dict[str, Callable[..., None]] = {
    "auto": _auto,
    "kwarg": _kwarg,
    "set_boundary": _set_boundary,
    "step_and_zero_grad": _step_and_zero_grad,
}


def train(accelerator: Any, model: Any, optimizer: Any, scenario: Scenario, rank: int, trace: Trace,
          recorder: StepRecorder) -> None:
    loop = LOOPS[scenario.api]
    boundaries = set(scenario.boundaries)
    for index in range(scenario.micro_batches):
        recorder.micro_step = index
        loop(accelerator, model, optimizer, scenario, rank, index, index in boundaries, trace)
    if scenario.api == "set_boundary":
        accelerator.set_deepspeed_gradient_accumulation_boundary(None)
