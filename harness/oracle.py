"""The oracle: what a scenario must produce, computed in one process with pure PyTorch in float64.

No accelerate, no DeepSpeed. The rule it encodes (DESIGN §3): every micro-batch loss is divided by the
*configured* G whatever the window length; gradients are averaged over ranks at the boundary; the
pre-clip global norm is measured, gradients clipped once, the optimizer steps, gradients are zeroed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .backends import build_optimizer
from .data import cast, micro_batch
from .models import build_model, forward_loss
from .scenario import Scenario

Tensors = dict[str, torch.Tensor]


@dataclass
class OracleStep:
    micro_step: int
    pre_clip_norm: float
    grads: Tensors  # pre-clip, averaged over ranks
    params: Tensors  # after the step
    lr: float


@dataclass
class OracleTrace:
    losses: list[list[float]] = field(default_factory=list)  # [rank][micro-batch]
    steps: list[OracleStep] = field(default_factory=list)

    @property
    def final_params(self) -> Tensors:
        return self.steps[-1].params


def expected(scenario: Scenario) -> OracleTrace:
    model = build_model(scenario.model, scenario.seed).double()
    optimizer = build_optimizer(scenario.optimizer, model.parameters())
    named = list(model.named_parameters())
    params = [p for _, p in named]
    trace = OracleTrace(losses=[[] for _ in range(scenario.world_size)])
    index = 0
    for window in scenario.windows:
        for _ in range(window):
            for rank in range(scenario.world_size):
                batch = cast(micro_batch(scenario.model, scenario.seed, rank, index, scenario.micro_batch_size),
                             torch.float64)
                loss = forward_loss(model, batch)
                trace.losses[rank].append(float(loss.detach()))
                (loss / scenario.configured_g / scenario.world_size).backward()
            index += 1
        grads = {name: p.grad.detach().clone() for name, p in named if p.grad is not None}
        bound = float("inf") if scenario.clip is None else scenario.clip
        norm = torch.nn.utils.clip_grad_norm_(params, bound)
        optimizer.step()
        optimizer.zero_grad()
        trace.steps.append(OracleStep(
            micro_step=index - 1,
            pre_clip_norm=float(norm),
            grads=grads,
            params={name: p.detach().clone() for name, p in named},
            lr=float(optimizer.param_groups[0]["lr"]),
        ))
    return trace
