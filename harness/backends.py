"""Builds the accelerator, model and optimizer for one scenario inside a rank.

The DeepSpeed recipe for a CPU-only machine is in ../shared/notes/cpu-deepspeed.md; the PartialState it
needs is created by ``world.reset_between_scenarios`` before this runs.
"""
from __future__ import annotations

from typing import Any

import torch

from .models import build_model
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


def build(scenario: Scenario, accelerator_cls: Any,
          config_overrides: dict[str, Any] | None = None) -> tuple[Any, Any, Any, Any]:
    """(accelerator, prepared model, prepared optimizer, prepared lr scheduler or None)."""
    if scenario.is_deepspeed:
        from accelerate.utils import DeepSpeedPlugin

        config = deepspeed_config(scenario) | (config_overrides or {})
        accelerator = accelerator_cls(
            deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=config),
            gradient_accumulation_steps=scenario.configured_g,
        )
    elif scenario.backend == "fsdp":
        if not torch.cuda.is_available():
            raise BackendUnavailable("fsdp: accelerate enables FSDP only on GPU distributed types "
                                     "(on CPU it silently stays DistributedType.NO); run it on a GPU machine")
        from accelerate.utils import FullyShardedDataParallelPlugin

        accelerator = accelerator_cls(fsdp_plugin=FullyShardedDataParallelPlugin(),
                                      gradient_accumulation_steps=scenario.configured_g,
                                      mixed_precision="bf16" if scenario.precision == "bf16" else "no")
    else:
        accelerator = accelerator_cls(
            cpu=not torch.cuda.is_available(),
            gradient_accumulation_steps=scenario.configured_g,
            mixed_precision="bf16" if scenario.precision == "bf16" else "no",
        )
    model = build_model(scenario.model, scenario.seed)
    optimizer = build_optimizer(scenario.optimizer, model.parameters())
    if scenario.lr_schedule == "const":
        model, optimizer = accelerator.prepare(model, optimizer)
        return accelerator, model, optimizer, None
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    return accelerator, model, optimizer, scheduler
