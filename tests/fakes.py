"""Fake DeepSpeed engines, only for engines that cannot be installed here (a fork without the boundary API,
``managed_gradient_accumulation: false`` on an old version, a PipelineEngine) and for fast unit tests.

They implement DeepSpeed's documented contract in a few lines: the boundary is the sticky flag if set,
else ``(micro_steps + 1) % gas == 0``; ``step()`` applies only at a boundary and always advances micro_steps.
"""
from __future__ import annotations

import torch


class FakeOptimizer:
    """A ZeRO-like optimizer: carries the norm it computed in its last step."""

    def __init__(self, norm: float | None) -> None:
        self._global_grad_norm = norm


class FakeEngine:
    def __init__(self, gas: int = 4, stage: int = 1, norm: float | None = 2.5, clipping: float = 1.0,
                 managed: bool = True) -> None:
        self.gas = gas
        self.stage = stage
        self.clipping = clipping
        self.managed = managed
        self.micro_steps = 0
        self.global_steps = 0
        self.backward_calls = 0
        self.step_calls = 0
        self.inside_no_sync_ctxt = False
        self._is_gradient_accumulation_boundary: bool | None = None
        self._global_grad_norm: float | None = None
        self._norm_per_step = norm
        self.module = torch.nn.Linear(2, 1)
        self.optimizer = FakeOptimizer(norm) if stage > 0 else torch.optim.SGD(self.module.parameters(), lr=0.1)

    def zero_optimization_stage(self) -> int:
        return self.stage

    def gradient_clipping(self) -> float:
        return self.clipping

    def managed_gradient_accumulation(self) -> bool:
        return self.managed

    def is_gradient_accumulation_boundary(self) -> bool:
        if self._is_gradient_accumulation_boundary is None:
            return (self.micro_steps + 1) % self.gas == 0
        return self._is_gradient_accumulation_boundary

    def set_gradient_accumulation_boundary(self, is_boundary: bool | None) -> None:
        assert self.managed, "set_gradient_accumulation_boundary() is not supported with managed=False"
        self._is_gradient_accumulation_boundary = is_boundary

    def backward(self, loss: torch.Tensor, **kwargs: object) -> None:
        self.backward_calls += 1
        self.last_backward_kwargs = kwargs
        (loss / self.gas).backward()

    def step(self) -> None:
        assert not self.inside_no_sync_ctxt, "It is illegal to call Engine.step() inside no_sync context manager"
        self.step_calls += 1
        if self.is_gradient_accumulation_boundary():
            self.global_steps += 1
            self._global_grad_norm = getattr(self.optimizer, "_global_grad_norm", None)
            self.module.zero_grad()
        self.micro_steps += 1

    def get_global_grad_norm(self) -> float | None:
        return self._global_grad_norm


class EngineWithoutBoundaryApi(FakeEngine):
    """A fork (or a DeepSpeed before 0.5.8) that only has its own micro-step counter."""

    set_gradient_accumulation_boundary = None  # type: ignore[assignment]


class PipelineEngine(FakeEngine):
    """Named like DeepSpeed's: detection goes by class name along the MRO."""


def loss_of(engine: FakeEngine) -> torch.Tensor:
    return engine.module(torch.ones(1, 2)).sum() * 3.0
