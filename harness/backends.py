"""Builds the accelerator, model and optimizer for one scenario inside a rank.

The DeepSpeed recipe for a CPU-only machine is in ../shared/notes/cpu-deepspeed.md; the PartialState it
needs is created by ``world.reset_between_scenarios`` before this runs.
"""
from __future__ import annotations

from typing import Any

import torch

from .models import build_model
from .scenario import Scenario

LEARNING_RATES = {"sgd": 0.05, "adamw": 0.01}
ADAMW_WEIGHT_DECAY = 0.01


def build_optimizer(name: str, params: Any) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=LEARNING_RATES["sgd"])
    if name == "adamw":
        return torch.optim.AdamW(params, lr=LEARNING_RATES["adamw"], weight_decay=ADAMW_WEIGHT_DECAY)
    raise ValueError(f"optimizer {name!r}: expected 'sgd' or 'adamw'")


def deepspeed_config(scenario: Scenario) -> dict[str, Any]:
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": scenario.micro_batch_size,
        "gradient_accumulation_steps": scenario.configured_g,
        "gradient_clipping": 0.0 if scenario.clip is None else scenario.clip,
        "zero_optimization": {"stage": scenario.zero_stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }
    if scenario.precision == "bf16":
        config["bf16"] = {"enabled": True}
    return config


def expected_distributed_type(scenario: Scenario) -> str:
    if scenario.zero_stage is not None:
        return "DEEPSPEED"
    return "MULTI_CPU" if scenario.backend == "ddp" else "NO"


def build(scenario: Scenario, accelerator_cls: Any) -> tuple[Any, Any, Any]:
    """(accelerator, prepared model, prepared optimizer)."""
    if scenario.zero_stage is not None:
        from accelerate.utils import DeepSpeedPlugin

        accelerator = accelerator_cls(
            deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=deepspeed_config(scenario)),
            gradient_accumulation_steps=scenario.configured_g,
        )
    else:
        accelerator = accelerator_cls(
            cpu=True,
            gradient_accumulation_steps=scenario.configured_g,
            mixed_precision="bf16" if scenario.precision == "bf16" else "no",
        )
    model = build_model(scenario.model, scenario.seed)
    optimizer = build_optimizer(scenario.optimizer, model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer
