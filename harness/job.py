"""One scenario inside one rank: build, check the world, instrument, train, snapshot.

Runs in a rank process after ``world.reset_between_scenarios``; raises ``WorldMismatch`` rather than
train in a world other than the one the scenario asked for (warm-world.md: a wrong reset trains silently).
"""
from __future__ import annotations

from typing import Any

import torch

from . import backends, loops
from .scenario import Scenario
from .targets import load_target
from .trace import StepRecorder, Trace


class WorldMismatch(RuntimeError):
    """The rank sees another world than the scenario asked for; training would be silently wrong."""


def check_world(accelerator: Any, scenario: Scenario, rank: int) -> dict[str, Any]:
    seen = {
        "process_index": accelerator.process_index,
        "num_processes": accelerator.num_processes,
        "distributed_type": accelerator.distributed_type.name if hasattr(accelerator.distributed_type, "name")
        else str(accelerator.distributed_type),
    }
    wanted = {"process_index": rank, "num_processes": scenario.world_size,
              "distributed_type": backends.expected_distributed_type(scenario)}
    if seen != wanted:
        raise WorldMismatch(f"{scenario.id}: rank {rank} sees {seen}, the scenario needs {wanted}; refusing to train")
    return seen


def full_parameters(accelerator: Any, model: Any, zero_stage: int | None) -> dict[str, torch.Tensor]:
    """Unpartitioned fp32 copies by name. ZeRO-3 gathers (a collective: every rank calls it together)."""
    module = accelerator.unwrap_model(model)
    named = list(module.named_parameters())
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            return {name: p.detach().float().clone() for name, p in named}
    return {name: p.detach().float().clone() for name, p in named}


def run(scenario: Scenario, target: str, rank: int) -> Trace:
    accelerator_cls = load_target(target)
    accelerator, model, optimizer = backends.build(scenario, accelerator_cls)
    trace = Trace(rank=rank, world=check_world(accelerator, scenario, rank))
    recorder = StepRecorder(trace, lambda: full_parameters(accelerator, model, scenario.zero_stage))
    if scenario.zero_stage is not None:
        recorder.wrap_engine_step(model)
    else:
        recorder.wrap_optimizer_step(optimizer.optimizer)
    try:
        loops.train(accelerator, model, optimizer, scenario, rank, trace, recorder)
        trace.engine_global_steps = getattr(model, "global_steps", None) if scenario.zero_stage is not None else None
        trace.final_params = full_parameters(accelerator, model, scenario.zero_stage)
    finally:
        accelerator.free_memory()  # engine.destroy(): removes DeepSpeed's hooks before the next scenario
    return trace
