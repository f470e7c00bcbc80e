"""Deterministic data per (seed, rank, micro-batch), so the oracle can regenerate every rank's batches.

Targets are scaled so that pre-clip gradient norms exceed 1: clipping at 1.0 then really clips, and a
wrong norm or a double clip shows in the parameters.
"""
from __future__ import annotations

import torch

from .models import IN_FEATURES, OUT_FEATURES

TARGET_SCALE = 4.0


def micro_batch(seed: int, rank: int, index: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1_000_003 * seed + 10_007 * rank + index)
    inputs = torch.randn(size, IN_FEATURES, generator=generator)
    targets = TARGET_SCALE * torch.randn(size, OUT_FEATURES, generator=generator)
    return inputs, targets
