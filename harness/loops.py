"""The training loops of each API style, side by side, a few lines each (the habit of accelerate's test_sync).

A loop only drives the accelerator the way a user would and records what the user would see; it checks
nothing. Where ``accumulate()`` finds every boundary itself (uniform windows, a DataLoader that ends mid-window)
no boundary is passed; other schedules pass it explicitly, which is the point of the feature.
"""
from __future__ import annotations

from itertools import accumulate
from typing import Any, Callable, Iterable

import torch

from .data import cast, micro_batch, window_tokens
from .models import forward_loss, forward_token_loss_sum
from .scenario import Scenario
from .trace import StepRecorder, Trace


class Run:
    """What every loop needs for one micro-batch."""

    def __init__(self, accelerator: Any, model: Any, optimizer: Any, scenario: Scenario, rank: int,
                 trace: Trace) -> None:
        self.accelerator, self.model, self.optimizer = accelerator, model, optimizer
        self.scenario, self.rank, self.trace = scenario, rank, trace
        # Keyword arguments of every backward: they must reach the engine (transformers #35808 relies on it).
        self.backward_kwargs: dict[str, Any] = {"scale_wrt_gas": False} if scenario.loss_norm == "tokens" else {}
        self._window_of = [range(end - w, end) for end, w in zip(accumulate(scenario.windows), scenario.windows)
                           for _ in range(w)]

    def loss(self, index: int) -> torch.Tensor:
        s = self.scenario
        batch = micro_batch(s.model, s.seed, self.rank, index, s.micro_batch_size)
        batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
        if s.is_deepspeed and s.precision == "bf16":  # the engine casts the module, not the inputs
            batch = cast(batch, torch.bfloat16)
        if s.loss_norm == "tokens":
            tokens = window_tokens(s.model, s.seed, self.rank, self._window_of[index], s.micro_batch_size)
            loss = forward_token_loss_sum(self.model, batch) / tokens
        else:
            loss = forward_loss(self.model, batch)
        self.trace.losses.append(float(loss.detach().float()))
        return loss

    def after_backward(self) -> None:
        self.trace.sync_gradients.append(bool(self.accelerator.sync_gradients))
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        self.trace.grad_digests.append(float(sum(g.double().sum() for g in grads)) if grads else None)

    def clip_step_zero(self) -> None:
        """The standard accelerate idiom: the optimizer wrapper skips step/zero_grad off-boundary."""
        if self.accelerator.sync_gradients and self.scenario.clip is not None:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.scenario.clip)
        self.optimizer.step()
        self.optimizer.zero_grad()

    def backward(self, loss: torch.Tensor, is_final: bool) -> None:
        """accumulate()'s own boundaries where it finds them all (uniform windows, the DataLoader's end);
        otherwise the explicit boundary wins."""
        if self.scenario.accumulate_finds_boundaries:
            self.accelerator.backward(loss, **self.backward_kwargs)
        else:
            self.accelerator.backward(loss, is_final_micro_batch=is_final, **self.backward_kwargs)


def _auto(run: Run, index: int, is_final: bool) -> None:
    with run.accelerator.accumulate(run.model):
        run.backward(run.loss(index), is_final)
        run.after_backward()
        run.clip_step_zero()


def _kwarg(run: Run, index: int, is_final: bool) -> None:
    run.accelerator.backward(run.loss(index), is_final_micro_batch=is_final, **run.backward_kwargs)
    run.after_backward()
    run.clip_step_zero()


def _set_boundary(run: Run, index: int, is_final: bool) -> None:
    run.accelerator.set_deepspeed_gradient_accumulation_boundary(is_final)
    run.accelerator.backward(run.loss(index), **run.backward_kwargs)
    run.after_backward()
    run.clip_step_zero()


def _step_and_zero_grad(run: Run, index: int, is_final: bool) -> None:
    with run.accelerator.accumulate(run.model):
        run.backward(run.loss(index), is_final)
        run.after_backward()
        # Called on every micro-batch on purpose: off-boundary it must do nothing and return None.
        run.trace.returned_norms.append(
            run.accelerator.optimizer_step_and_zero_grad(run.optimizer, run.model, run.scenario.clip))


def _ds_native(run: Run, index: int, is_final: bool) -> None:
    """The seed's "before" code on the raw engine: DeepSpeed's documented boundary idiom."""
    engine = run.model
    engine.set_gradient_accumulation_boundary(is_final)
    engine.backward(run.loss(index), **run.backward_kwargs)
    engine.step()


def _legacy(run: Run, index: int, is_final: bool) -> None:
    """Code written for accelerate <= 1.7 on DeepSpeed: plain ``backward(loss)`` outside ``accumulate()``,
    the engine's own micro-step counter was trusted to accumulate (uniform windows only)."""
    run.accelerator.backward(run.loss(index))
    run.optimizer.step()
    run.optimizer.zero_grad()


LOOPS: dict[str, Callable[[Run, int, bool], None]] = {
    "auto": _auto,
    "kwarg": _kwarg,
    "set_boundary": _set_boundary,
    "step_and_zero_grad": _step_and_zero_grad,
    "ds_native": _ds_native,
    "legacy": _legacy,
}


def _count_collectives(profile: Any) -> dict[str, int]:
    """Collectives as the process group ran them (``gloo:all_reduce``, ``nccl:reduce_scatter``...): seen by the
    profiler whether issued from Python (DeepSpeed) or from C++ (DDP's reducer)."""
    counts: dict[str, int] = {}
    for event in profile.events():
        backend, _, kind = event.name.partition(":")
        if backend in ("gloo", "nccl") and kind:
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def micro_batch_indices(run: Run) -> Iterable[int]:
    """Plain indices, or, where the schedule ends with the data, a prepared DataLoader: its last batch is
    what makes ``accumulate()`` force the partial window's boundary (the #3552 situation)."""
    count = run.scenario.micro_batches
    if not run.scenario.ends_with_dataloader:
        return range(count)
    from torch.utils.data import DataLoader

    # Each rank gets every num_processes-th item of the sharded loader: `count` batches of one index each.
    loader = run.accelerator.prepare_data_loader(DataLoader(range(count * run.accelerator.num_processes), batch_size=1))
    return (index for index, _ in enumerate(loader))


def train(run: Run, recorder: StepRecorder, count_collectives: bool = False) -> None:
    loop = LOOPS[run.scenario.api]
    boundaries = set(run.scenario.boundaries)
    for index in micro_batch_indices(run):
        recorder.micro_step = index
        if not count_collectives:
            loop(run, index, index in boundaries)
            continue
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            loop(run, index, index in boundaries)
        run.trace.collectives.append(_count_collectives(profile))
    # The set_boundary loop leaves its last override (True) set, as user code does: the next scenario in the
    # same process must not inherit it (P8).
