"""The oracle: what a scenario must produce, computed in one process with pure PyTorch in float64.

No accelerate, no DeepSpeed. The rule it encodes (DESIGN §3): every micro-batch loss is divided by the
*configured* G whatever the window length; gradients are averaged over ranks at the boundary; the
pre-clip global norm is measured, gradients clipped once, the optimizer steps, gradients are zeroed. With the
user's own token normalisation (``loss_norm="tokens"``, ``scale_wrt_gas=False``) nothing divides by G: each
micro-batch contributes its token-loss sum over the rank's token count of the window.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .backends import build_optimizer
from .data import cast, micro_batch, window_tokens
from .models import build_model, forward_loss, forward_token_loss_sum
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
    s = scenario
    for window in scenario.windows:
        span = range(index, index + window)
        for _ in range(window):
            for rank in range(s.world_size):
                batch = cast(micro_batch(s.model, s.seed, rank, index, s.micro_batch_size), torch.float64)
                if s.loss_norm == "tokens":
                    loss = forward_token_loss_sum(model, batch) / window_tokens(s.model, s.seed, rank, span,
                                                                                s.micro_batch_size)
                    scaled = loss
                else:
                    loss = forward_loss(model, batch)
                    scaled = loss / s.configured_g
                trace.losses[rank].append(float(loss.detach()))
                (scaled / s.world_size).backward()
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
