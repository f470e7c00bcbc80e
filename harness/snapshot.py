"""What a rank reads of the objects a target prepared: the world and the stack it built (checked against the
scenario), the full parameters and gradients (gathered where sharded), the gradients a program leaves behind, and the
release between scenarios.

A room of its own, below both ``job`` (a program's run) and ``clients`` (the Trainer's run): both snapshot a run the
same way, and neither imports the other for it (issue 26: no circle).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from . import backends
from .models import ModelParts
from .scenario import Scenario
from .trace import Tensors

if TYPE_CHECKING:
    from .loops import Run


class WorldMismatch(RuntimeError):
    """The rank sees another world than the scenario asked for; training would be silently wrong."""


class StackMismatchError(RuntimeError):
    """The target built another stack than the scenario asked for (ZeRO stage, offload, precision)."""


def check_world(accelerator: Any, model: Any, scenario: Scenario, rank: int) -> dict[str, Any]:
    distributed_type = accelerator.distributed_type
    seen = {
        "process_index": accelerator.process_index,
        "num_processes": accelerator.num_processes,
        "distributed_type": getattr(distributed_type, "name", str(distributed_type)),
    }
    wanted = {"process_index": rank, "num_processes": scenario.world_size,
              "distributed_type": backends.expected_distributed_type(scenario)}
    if scenario.backend == "fsdp" and not all(backends.is_fsdp2_module(part) for part in _parts(model)):
        seen["distributed_type"] += " (the model is no fully_shard module)"
    if seen != wanted:
        raise WorldMismatch(f"{scenario.id}: rank {rank} sees {seen}, the scenario needs {wanted}; refusing to train")
    return seen


def _parts(model: Any) -> list[Any]:
    """The prepared modules behind what the loop calls (two models: both)."""
    return list(model.parts.values()) if isinstance(model, ModelParts) else [model]


def built_stack(accelerator: Any, model: Any, scenario: Scenario) -> dict[str, Any]:
    """What the target built, read from the engine DeepSpeed built (its config is what it built from) and from the
    module's parameters, or from the accelerator off DeepSpeed."""
    if scenario.is_deepspeed:
        def read(name: str, default: Any = None) -> Any:
            method = getattr(model, name, None)
            return method() if callable(method) else default

        dtype = next((p.dtype for p in model.module.parameters()), None) if hasattr(model, "module") else None
        return {"zero_stage": int(read("zero_optimization_stage", -1)),
                "offload": "cpu" if read("zero_cpu_offload", False) else "none",
                "precision": "bf16" if (read("bfloat16_enabled", False) and dtype == torch.bfloat16)
                else "fp16" if read("fp16_enabled", False) else "fp32" if dtype == torch.float32 else f"{dtype}"}
    mixed = str(getattr(accelerator, "mixed_precision", "no"))
    return {"precision": {"no": "fp32", "bf16": "bf16"}.get(mixed, mixed)}


def check_stack(accelerator: Any, model: Any, scenario: Scenario, rank: int) -> dict[str, Any]:
    """The stack the scenario asked for, or ``StackMismatchError`` naming what was built (the world's process index, count
    and distributed type are ``check_world``'s)."""
    built = built_stack(accelerator, model, scenario)
    wanted: dict[str, Any] = {"precision": scenario.precision}
    if scenario.is_deepspeed:
        wanted |= {"zero_stage": scenario.zero_stage, "offload": "cpu" if scenario.offload else "none"}
    if built != wanted:
        wrong = ", ".join(f"{key} {built.get(key)} (asked: {value})" for key, value in wanted.items()
                          if built.get(key) != value)
        raise StackMismatchError(f"{scenario.id}: rank {rank}: the target built {wrong}; refusing to judge a stack other "
                            "than the one asked for")
    return built


def _named_parameters(accelerator: Any, model: Any) -> list[tuple[str, torch.nn.Parameter]]:
    """By the names the oracle's module gives them (two models: ``<part>.<name>``)."""
    if isinstance(model, ModelParts):
        return [(f"{name}.{n}", p) for name, part in model.parts.items()
                for n, p in accelerator.unwrap_model(part).named_parameters()]
    return list(accelerator.unwrap_model(model).named_parameters())


def _full(tensor: Any) -> torch.Tensor:
    """FSDP2 shards parameters and gradients as DTensors: the full tensor is gathered (a collective: every rank
    calls it in the same order); anything else is already whole."""
    full = getattr(tensor, "full_tensor", None)
    return (full() if callable(full) else tensor).detach().float().cpu().clone()


def full_parameters(accelerator: Any, model: Any, scenario: Scenario) -> tuple[Tensors, bool]:
    """Unpartitioned fp32 CPU copies by name, and whether they are the optimizer's own fp32 weights.

    In fp32 the module's weights are the optimizer's: read as they are at ZeRO 0-2, gathered in one coalesced call at
    ZeRO-3 (``GatheredParameters``; a collective, every rank calls it together). In bf16 the optimizer's fp32 master
    weights are read: ``safe_get_full_fp32_param`` at ZeRO 1-3 (one collective per tensor, so only where needed),
    the FP16_UnfusedOptimizer's at ZeRO-0."""
    named = _named_parameters(accelerator, model)
    if scenario.is_deepspeed and scenario.zero_stage and scenario.precision == "bf16":
        from deepspeed.utils import safe_get_full_fp32_param

        return {name: safe_get_full_fp32_param(p).detach().float().cpu().clone() for name, p in named}, True
    if scenario.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            return {name: _full(p) for name, p in named}, True
    if scenario.is_deepspeed and scenario.precision == "bf16":
        master = _zero0_master_weights(model)
        if master is not None:
            return {name: master[id(p)].detach().float().cpu().clone() for name, p in named}, True
        return {name: _full(p) for name, p in named}, False
    return {name: _full(p) for name, p in named}, True


def _zero0_master_weights(engine: Any) -> dict[int, torch.Tensor] | None:
    """ZeRO-0 with bf16 keeps fp32 master weights in its FP16_UnfusedOptimizer (``fp32_groups`` beside the module's
    ``fp16_groups``, deepspeed 0.14-0.19); DeepSpeed offers no public accessor there (``safe_get_full_fp32_param``
    returns None at ZeRO-0). Without them the module's bf16 copies are compared, with bf16 rounding allowed."""
    optimizer = getattr(engine, "optimizer", None)
    low, high = getattr(optimizer, "fp16_groups", None), getattr(optimizer, "fp32_groups", None)
    if low is None or high is None:
        return None
    return {id(p): q for group, masters in zip(low, high) for p, q in zip(group, masters)}


def full_gradients(accelerator: Any, model: Any, scenario: Scenario) -> Tensors | None:
    """Unpartitioned gradients by name: ``safe_get_full_grad`` on DeepSpeed (a collective at ZeRO-3, so it runs on
    every rank at the same boundary), ``.grad`` elsewhere and at ZeRO-0; None when none can be read."""
    named = _named_parameters(accelerator, model)
    grads: dict[str, Any] = {name: p.grad for name, p in named}
    if scenario.is_deepspeed and scenario.zero_stage:
        from deepspeed.utils import safe_get_full_grad

        try:
            grads = {name: safe_get_full_grad(p) for name, p in named}
        except ValueError:  # ZeRO 1/2 between a step and the next backward: "only available immediately after backward"
            return None
    if all(g is None for g in grads.values()):
        return None
    return {name: (torch.zeros(tuple(p.shape), dtype=torch.float32) if g is None else _full(g))
            for (name, p), g in zip(named, grads.values())}


def leftover_gradients(run: "Run", scenario: Scenario) -> tuple[Tensors | None, int | None]:
    """The gradients the program leaves behind (P8). Where they sit on ``.grad`` they are read as they are (zeros
    when cleared); on FSDP2 and at ZeRO 1-3 they live in the engine's partitions, readable only right after a backward: one
    more micro-batch (the next sample) runs at a boundary on the raw engine, unstepped, and the full gradients are
    read then: the leftover plus that micro-batch's own."""
    accelerator, model = run.accelerator, run.model
    if scenario.backend == "fsdp":
        # FSDP2 keeps what a backward without gradient sync accumulated in its unsharded parameters, out of .grad's
        # reach (read there it is zero, measured): one more micro-batch with sync on reduces it into .grad, as the
        # ZeRO probe below does, and the oracle expects the same (the leftover plus that micro-batch, averaged).
        from .models import forward_loss

        probe = len(scenario.program)
        for part in _parts(model):
            part.set_requires_gradient_sync(True)
        (forward_loss(model, run.batch(probe)) / scenario.configured_g).backward()
        named = _named_parameters(accelerator, model)
        return {name: (torch.zeros(tuple(p.shape)) if p.grad is None else _full(p.grad)) for name, p in named}, probe
    if not (scenario.is_deepspeed and scenario.zero_stage):
        named = _named_parameters(accelerator, model)
        return {name: (torch.zeros(tuple(p.shape)) if p.grad is None else _full(p.grad)) for name, p in named}, None
    if not callable(getattr(model, "set_gradient_accumulation_boundary", None)):
        return None, None  # the old-engine probe hid it: nothing can be read
    probe = len(scenario.program)
    model.set_gradient_accumulation_boundary(True)
    from .models import forward_loss

    model.backward(forward_loss(model, run.batch(probe)))
    return full_gradients(accelerator, model, scenario), probe


def release(accelerator: Any, model: Any) -> None:
    """What ``accelerator.free_memory()`` does between scenarios, without its ``gc.collect()`` (a quarter of a ZeRO-3
    job's time, measured; the world freezes what survives the first job of each backend instead): the engine's hooks
    removed (``engine.destroy()``, before the next scenario builds one) and the accelerator's references dropped."""
    engine = getattr(getattr(accelerator, "deepspeed_engine_wrapped", None), "engine", None)
    destroy = getattr(engine, "destroy", None)
    if callable(destroy):
        destroy()
    for name in ("_models", "_optimizers", "_schedulers", "_dataloaders"):
        getattr(accelerator, name, []).clear()
    accelerator.deepspeed_engine_wrapped = None
