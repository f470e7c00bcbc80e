"""Builds the accelerator, model and optimizer for one scenario inside a rank.

The DeepSpeed recipe for a CPU-only machine is in ../shared/notes/cpu-deepspeed.md; the PartialState it
needs is created by ``world.reset_between_scenarios`` before this runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .models import ModelParts, TwoModels, build_model, parts_of
from .scenario import WARMUP_STEPS, Scenario

LEARNING_RATES = {"sgd": 0.05, "adamw": 0.01}
ADAMW_WEIGHT_DECAY = 0.01


class BackendUnavailable(RuntimeError):
    """The backend cannot run on this machine (e.g. FSDP without a GPU); said in one line."""


def build_optimizer(name: str, params: Any) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=LEARNING_RATES["sgd"])
    if name == "adamw":
        return torch.optim.AdamW(params, lr=LEARNING_RATES["adamw"], weight_decay=ADAMW_WEIGHT_DECAY)
    raise ValueError(f"optimizer {name!r}: expected 'sgd' or 'adamw'")


def warmup(step: int) -> float:
    """Linear warm-up over ``WARMUP_STEPS`` scheduler steps, then constant (the oracle uses the same function)."""
    return min(1.0, (step + 1) / WARMUP_STEPS)


def decay(step: int) -> float:
    """An lr that changes at every scheduler step, however many (the oracle uses the same function): a scheduler
    advanced once too often or too rarely shows at any step, not only during a warm-up."""
    return DECAY_RATE ** step


DECAY_RATE = 0.8
LR_LAMBDAS = {"warmup": warmup, "decay": decay}


def deepspeed_config(scenario: Scenario) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": scenario.zero_stage}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": scenario.micro_batch_size,
        "gradient_accumulation_steps": scenario.configured_g,
        "gradient_clipping": 0.0 if scenario.clip is None else scenario.clip,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }
    if scenario.offload:
        zero["offload_optimizer"] = {"device": "cpu"}
        config["zero_force_ds_cpu_optimizer"] = False  # keep the scenario's torch optimizer (the oracle's)
    if scenario.precision == "bf16":
        config["bf16"] = {"enabled": True}
    return config


def expected_distributed_type(scenario: Scenario) -> str:
    if scenario.is_deepspeed:
        return "DEEPSPEED"
    if scenario.backend == "fsdp":
        return "FSDP"
    if scenario.backend == "ddp":
        return "MULTI_GPU" if torch.cuda.is_available() else "MULTI_CPU"
    return "NO"


def is_fsdp2_module(model: Any) -> bool:
    """``fully_shard`` swaps the module's class for an ``FSDP<Name>`` subclass of ``FSDPModule``."""
    return any(cls.__name__ == "FSDPModule" for cls in type(model).__mro__)


def _fsdp2_accelerator(scenario: Scenario, accelerator_cls: Any) -> Any:
    """FSDP2 (``fully_shard``) through accelerate, on CPU too. accelerate turns FSDP on only from GPU-class distributed
    types; on CPU the harness sets the state's distributed type to FSDP (and its plugin) before ``prepare``, the
    arrangement measured to train like DDP (cpu-deepspeed.md: within 1.5e-8 of DDP's parameters). FSDP1 refuses a
    CPU device id, so it stays the GPU path."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    policy = {}
    if scenario.reduce_dtype == "fp32":  # the user's own policy: bf16 compute, fp32 reduction (pytorch#196996)
        from torch.distributed.fsdp import MixedPrecisionPolicy

        policy = {"mixed_precision_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                                                 output_dtype=torch.bfloat16)}
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, **policy)
    accelerator = accelerator_cls(cpu=not torch.cuda.is_available(), fsdp_plugin=plugin,
                                  mixed_precision="bf16" if scenario.precision == "bf16" else "no",
                                  **accumulation_arguments(scenario))
    if not torch.cuda.is_available():
        # Both states: every AcceleratorState() built later (prepare builds some) copies PartialState's type over its
        # own, and accelerate would then report MULTI_CPU and take the DDP paths (no_sync among them).
        PartialState().distributed_type = DistributedType.FSDP
        state = AcceleratorState()
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = plugin
    return accelerator


@dataclass
class Prepared:
    """What ``accelerator.prepare`` gave back: the model as the loop calls it (for ``twomodels`` its parts behind one
    call), and per part the prepared module, its optimizer and its lr scheduler (or None)."""

    accelerator: Any
    model: Any
    parts: list[Any] = field(default_factory=list)
    optimizers: list[Any] = field(default_factory=list)
    schedulers: list[Any] = field(default_factory=list)
    rebuild_arguments: Any = None


def _accelerator_kwargs(scenario: Scenario) -> dict[str, Any]:
    """``twoheads`` routes micro-batches to one head, ``lastbranch`` takes its branch on some micro-batches only: DDP
    must be told that some parameters go unused."""
    if scenario.model not in ("twoheads", "lastbranch") or scenario.backend != "ddp":
        return {}
    from accelerate.utils import DistributedDataParallelKwargs

    return {"kwargs_handlers": [DistributedDataParallelKwargs(find_unused_parameters=True)]}


PLUGIN_OPTIONS = ("sync_each_batch", "sync_with_dataloader", "adjust_scheduler")


def accumulation_arguments(scenario: Scenario) -> dict[str, Any]:
    """How the accelerator learns G: ``gradient_accumulation_steps``, or, where a generated program asks for
    GradientAccumulationPlugin options other than accelerate's defaults, the plugin with them (accelerate takes one or
    the other); a program's ``even_batches=False`` as a DataLoaderConfiguration."""
    options = scenario.generated.options if scenario.generated is not None else {}
    plugin = {name: value for name, value in options.items() if name in PLUGIN_OPTIONS}
    arguments: dict[str, Any] = {"gradient_accumulation_steps": scenario.configured_g}
    if plugin:
        from accelerate.utils import GradientAccumulationPlugin

        arguments = {"gradient_accumulation_plugin": GradientAccumulationPlugin(num_steps=scenario.configured_g, **plugin)}
    if "even_batches" in options:
        from accelerate.utils import DataLoaderConfiguration

        arguments["dataloader_config"] = DataLoaderConfiguration(even_batches=options["even_batches"])
    return arguments


def declare_unused_parameters(scenario: Scenario, module: Any) -> None:
    """``twoheads`` on FSDP2: what ``find_unused_parameters=True`` is to DDP. FSDP2 reduce-scatters only the parameters
    that hold a gradient on each rank, packed in order, so ranks routed to different heads reduce head_a of one rank
    against head_b of the other, silently when the shapes agree (pytorch#158719; measured with upstream accelerate
    1.15 and torch 2.13 in docs/repros/pytorch-158719.py). torch's opt-in reduces zeros for a parameter this
    rank did not use; a torch without it keeps the default, and the scenario then shows that upstream limitation."""
    if scenario.model == "twoheads" and scenario.backend == "fsdp" and hasattr(module, "set_reduce_scatter_unused_params"):
        module.set_reduce_scatter_unused_params(True)


def _fsdp2_reduces_unused_parameters() -> bool:
    from torch.distributed.fsdp import FSDPModule

    return hasattr(FSDPModule, "set_reduce_scatter_unused_params")


def steps_parameters_no_rank_used(scenario: Scenario) -> bool:
    """Whether a parameter that no rank's forward reached in a window still gets a gradient (zeros) and is stepped:
    DeepSpeed's reductions and partitions fill zeros for it, and so does FSDP2 once ``declare_unused_parameters`` opted
    in (every rank reduce-scatters zeros for it). DDP and one process leave its ``.grad`` None: the torch optimizer
    skips it (no AdamW decay, no moment update). The oracle asks this (``_Float64Run.unused``)."""
    if scenario.is_deepspeed:
        return True
    return scenario.model == "twoheads" and scenario.backend == "fsdp" and _fsdp2_reduces_unused_parameters()


def build(scenario: Scenario, accelerator_cls: Any, config_overrides: dict[str, Any] | None = None) -> Prepared:
    """The accelerator, then each part of the model prepared with its own optimizer (and lr scheduler), the way a
    user prepares two models: one ``prepare`` call per model and its optimizer (FSDP2 takes one model per call)."""
    if scenario.is_deepspeed:
        from accelerate.utils import DeepSpeedPlugin

        config = deepspeed_config(scenario) | (config_overrides or {})
        accelerator = accelerator_cls(
            deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=config),
            **accumulation_arguments(scenario),
        )
    elif scenario.backend == "fsdp":
        accelerator = _fsdp2_accelerator(scenario, accelerator_cls)
    else:
        accelerator = accelerator_cls(
            cpu=not torch.cuda.is_available(),
            mixed_precision="bf16" if scenario.precision == "bf16" else "no",
            **accumulation_arguments(scenario),
            **_accelerator_kwargs(scenario),
        )
    whole = build_model(scenario.model, scenario.seed)
    names = parts_of(scenario.model)
    prepared = Prepared(accelerator, None)
    for name in names:
        module = getattr(whole, name) if name else whole
        optimizer = build_optimizer(scenario.optimizer, module.parameters())
        if scenario.lr_schedule == "const":
            module, optimizer = accelerator.prepare(module, optimizer)
            scheduler = None
        else:
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LR_LAMBDAS[scenario.lr_schedule])
            module, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
        declare_unused_parameters(scenario, module)
        prepared.parts.append(module)
        prepared.optimizers.append(optimizer)
        prepared.schedulers.append(scheduler)
    prepared.model = (ModelParts(TwoModels.compose, dict(zip(names, prepared.parts))) if len(names) > 1
                      else prepared.parts[0])
    prepared.rebuild_arguments = (scenario, accelerator_cls)
    return prepared


def rebuild(run: Any) -> Prepared:
    """A second accelerator of the same class with the same arguments, preparing the same model(s) and optimizer(s)
    (unwrapped) as a user's second phase does; off DeepSpeed and FSDP2 (accelerate refuses a second DeepSpeed plugin,
    and FSDP2 would shard a sharded module again). accelerate's shared state is left as it is."""
    scenario = run.scenario
    if scenario.is_deepspeed or scenario.backend == "fsdp":
        raise ValueError(f"{scenario.id}: a second accelerator runs on single and ddp only")
    first = run.accelerator
    accelerator = type(first)(cpu=not torch.cuda.is_available(),
                              mixed_precision="bf16" if scenario.precision == "bf16" else "no",
                              **accumulation_arguments(scenario), **_accelerator_kwargs(scenario))
    prepared = Prepared(accelerator, None)
    for part, optimizer, scheduler in zip(run.parts, run.optimizers, run.schedulers):
        objects = [first.unwrap_model(part), optimizer.optimizer] + ([scheduler.scheduler] if scheduler else [])
        again = accelerator.prepare(*objects)
        prepared.parts.append(again[0])
        prepared.optimizers.append(again[1])
        prepared.schedulers.append(again[2] if scheduler else None)
    names = parts_of(scenario.model)
    prepared.model = (ModelParts(TwoModels.compose, dict(zip(names, prepared.parts))) if len(names) > 1
                      else prepared.parts[0])
    return prepared
