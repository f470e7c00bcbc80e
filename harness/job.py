"""One scenario inside one rank: check the target's API, build, check the world, instrument, train, snapshot.

Runs in a rank process after ``world.reset_between_scenarios``; raises ``WorldMismatch`` rather than
train in a world other than the one the scenario asked for (warm-world.md: a wrong reset trains silently).
"""
from __future__ import annotations

import contextlib
import inspect
import warnings
from typing import Any, Iterator

import torch

from . import backends, loops
from .scenario import Scenario
from .targets import load_target
from .trace import StepRecorder, Tensors, Trace


class WorldMismatch(RuntimeError):
    """The rank sees another world than the scenario asked for; training would be silently wrong."""


def missing_api(accelerator_cls: Any, scenario: Scenario) -> str | None:
    """What the scenario's API style needs and the target lacks (-> outcome ``unsupported``), or None.

    Decided from the class before anything is built, identically on every rank, so no rank is left
    waiting in a collective.
    """
    needs_kwarg = scenario.api == "kwarg" or (scenario.api in ("auto", "step_and_zero_grad")
                                                       and not scenario.accumulate_finds_boundaries)
    if needs_kwarg and "is_final_micro_batch" not in inspect.signature(accelerator_cls.backward).parameters:
        return f"{accelerator_cls.__module__}.{accelerator_cls.__qualname__}.backward has no is_final_micro_batch"
    for api, method in (("set_boundary", "set_deepspeed_gradient_accumulation_boundary"),
                        ("step_and_zero_grad", "optimizer_step_and_zero_grad")):
        if scenario.api == api and not callable(getattr(accelerator_cls, method, None)):
            return f"{accelerator_cls.__module__}.{accelerator_cls.__qualname__} has no {method}"
    return None


def check_world(accelerator: Any, scenario: Scenario, rank: int) -> dict[str, Any]:
    distributed_type = accelerator.distributed_type
    seen = {
        "process_index": accelerator.process_index,
        "num_processes": accelerator.num_processes,
        "distributed_type": getattr(distributed_type, "name", str(distributed_type)),
    }
    wanted = {"process_index": rank, "num_processes": scenario.world_size,
              "distributed_type": backends.expected_distributed_type(scenario)}
    if seen != wanted:
        raise WorldMismatch(f"{scenario.id}: rank {rank} sees {seen}, the scenario needs {wanted}; refusing to train")
    return seen


def _named_parameters(accelerator: Any, model: Any) -> list[tuple[str, torch.nn.Parameter]]:
    return list(accelerator.unwrap_model(model).named_parameters())


def full_parameters(accelerator: Any, model: Any, scenario: Scenario) -> Tensors:
    """Unpartitioned fp32 CPU copies by name. ZeRO-3 gathers (a collective: every rank calls it together)."""
    named = _named_parameters(accelerator, model)
    if scenario.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            return {name: p.detach().float().cpu().clone() for name, p in named}
    return {name: p.detach().float().cpu().clone() for name, p in named}


def full_gradients(accelerator: Any, model: Any, scenario: Scenario) -> Tensors:
    """Unpartitioned gradients by name: ``.grad`` off DeepSpeed, ``safe_get_full_grad`` on it (collective at
    ZeRO-3, so it runs on every rank at the same boundary)."""
    named = _named_parameters(accelerator, model)
    if scenario.is_deepspeed:
        from deepspeed.utils import safe_get_full_grad

        grads = {name: safe_get_full_grad(p) for name, p in named}
    else:
        grads = {name: p.grad for name, p in named}
    return {name: g.detach().float().cpu().clone() for name, g in grads.items() if g is not None}


def _learning_rate(optimizer: Any) -> float | None:
    groups = getattr(optimizer, "param_groups", None)
    return float(groups[0]["lr"]) if groups else None


@contextlib.contextmanager
def _engine_without_boundary_api(active: bool) -> Iterator[None]:
    """Emulate a DeepSpeed (or fork) without ``set_gradient_accumulation_boundary`` (added in 0.5.8, #1588) for
    one job, so the target's fallback is exercised on a real engine; the class attribute is restored after."""
    if not active:
        yield
        return
    from deepspeed.runtime.engine import DeepSpeedEngine

    original = DeepSpeedEngine.__dict__["set_gradient_accumulation_boundary"]
    DeepSpeedEngine.set_gradient_accumulation_boundary = None
    try:
        yield
    finally:
        DeepSpeedEngine.set_gradient_accumulation_boundary = original


def run(scenario: Scenario, target: str, rank: int, count_collectives: bool = False,
        config_overrides: dict[str, Any] | None = None, without_engine_boundary_api: bool = False) -> Trace | str:
    """The trace, or the reason the target does not support this scenario's API.

    ``config_overrides`` are merged into the DeepSpeed config and ``without_engine_boundary_api`` hides the
    engine's boundary API: probes of the fallbacks (P9), never used by ordinary scenarios.
    """
    accelerator_cls = load_target(target)
    missing = missing_api(accelerator_cls, scenario)
    if missing:
        return missing
    with warnings.catch_warnings(record=True) as caught, _engine_without_boundary_api(without_engine_boundary_api):
        warnings.simplefilter("always")
        accelerator, model, optimizer = backends.build(scenario, accelerator_cls, config_overrides)
        trace = Trace(rank=rank, world=check_world(accelerator, scenario, rank))
        recorder = StepRecorder(trace, params=lambda: full_parameters(accelerator, model, scenario),
                                grads=lambda: full_gradients(accelerator, model, scenario),
                                lr=lambda: _learning_rate(optimizer))
        if scenario.is_deepspeed:
            recorder.wrap_engine_step(model)
        else:
            recorder.wrap_clip(accelerator)
            recorder.wrap_optimizer_step(optimizer.optimizer)
        try:
            loops.train(loops.Run(accelerator, model, optimizer, scenario, rank, trace), recorder,
                        count_collectives=count_collectives and scenario.world_size > 1)
            if scenario.is_deepspeed:
                trace.engine_global_steps = model.global_steps
                trace.engine_micro_steps = model.micro_steps
            trace.final_params = full_parameters(accelerator, model, scenario)
            # On .grad only: ZeRO 1-3 keep gradients in their own partitions, which safe_get_full_grad refuses
            # (ZeRO 1/2) or returns stale (ZeRO-3, offload) after a step; a leak there shows in the next step (P2).
            leftover = [p.grad for _, p in _named_parameters(accelerator, model) if p.grad is not None]
            trace.leftover_grad_abs_sum = float(sum(g.double().abs().sum() for g in leftover)) if leftover else None
        finally:
            accelerator.free_memory()  # engine.destroy(): removes DeepSpeed's hooks before the next scenario
    trace.warnings = sorted({f"{w.category.__name__}: {w.message}" for w in caught
                             if not issubclass(w.category, (DeprecationWarning, FutureWarning))})
    return trace
