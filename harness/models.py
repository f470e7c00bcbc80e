"""Seeded models built in code (never downloaded), identical in every rank and in the oracle."""
from __future__ import annotations

import torch

IN_FEATURES, HIDDEN, OUT_FEATURES = 8, 16, 4


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(IN_FEATURES, HIDDEN)
        self.fc2 = torch.nn.Linear(HIDDEN, OUT_FEATURES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def build_model(name: str, seed: int) -> torch.nn.Module:
    """Same seed, same bytes: the fork of the RNG keeps the caller's global RNG stream untouched."""
    if name != "mlp":
        raise ValueError(f"model {name!r}: expected 'mlp'")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MLP()


def loss_fn(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(output, target)
