"""Deterministic data per (seed, rank, micro-batch), so the oracle can regenerate every rank's batches.

MLP targets are scaled so that pre-clip gradient norms exceed 1: clipping at 1.0 then really clips, and a
wrong norm or a double clip shows in the parameters. GPT-2 sequences have random lengths, right-padded,
with padding masked out of the loss (-100): the token-level loss that makes batch splits matter.
"""
from __future__ import annotations

import torch

from .models import GPT2_POSITIONS, GPT2_VOCAB, IN_FEATURES, OUT_FEATURES

TARGET_SCALE = 4.0
PAD_ID = 0


def micro_batch(model: str, seed: int, rank: int, index: int, size: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1_000_003 * seed + 10_007 * rank + index)
    if model == "mlp":
        inputs = torch.randn(size, IN_FEATURES, generator=generator)
        targets = TARGET_SCALE * torch.randn(size, OUT_FEATURES, generator=generator)
        return {"inputs": inputs, "targets": targets}
    lengths = torch.randint(3, GPT2_POSITIONS + 1, (size,), generator=generator)
    input_ids = torch.randint(1, GPT2_VOCAB, (size, GPT2_POSITIONS), generator=generator)
    positions = torch.arange(GPT2_POSITIONS).expand(size, -1)
    attention_mask = (positions < lengths[:, None]).long()
    input_ids = input_ids.masked_fill(attention_mask == 0, PAD_ID)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def cast(batch: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors to ``dtype`` (the oracle's float64); token ids and masks stay integers."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}
