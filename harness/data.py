"""Deterministic data per (seed, rank, sample), so the oracle can regenerate every rank's batches.

Each rank reads its own stream of samples; micro-batch ``i`` of size ``b`` is samples ``i·b … i·b+b-1``. The
same stream cut into other (micro-batch size, G) splits is the same data: what batch-split invariance (P10)
compares.

MLP targets are scaled so that pre-clip gradient norms exceed 1: clipping at 1.0 then really clips, and a
wrong norm or a double clip shows in the parameters. GPT-2 sequences have random lengths, right-padded,
with padding masked out of the loss (-100): the token-level loss that makes batch splits matter. The classification
head (``gpt2cls``) reads the same sequences with one class label per sample.
"""
from __future__ import annotations

import functools

import torch

from .models import GPT2_CLASSES, GPT2_PAD_ID, GPT2_POSITIONS, GPT2_VOCAB, IN_FEATURES, OUT_FEATURES

TARGET_SCALE = 4.0
PAD_ID = GPT2_PAD_ID


def _sample(model: str, seed: int, rank: int, sample: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1_000_003 * seed + 10_007 * rank + sample)
    if model in ("mlp", "twomodels", "twoheads", "lastbranch"):
        inputs = torch.randn(IN_FEATURES, generator=generator)
        targets = TARGET_SCALE * torch.randn(OUT_FEATURES, generator=generator)
        return {"inputs": inputs, "targets": targets}
    length = int(torch.randint(3, GPT2_POSITIONS + 1, (1,), generator=generator))
    input_ids = torch.randint(1, GPT2_VOCAB, (GPT2_POSITIONS,), generator=generator)
    attention_mask = (torch.arange(GPT2_POSITIONS) < length).long()
    input_ids = input_ids.masked_fill(attention_mask == 0, PAD_ID)
    if model == "gpt2cls":
        label = torch.randint(0, GPT2_CLASSES, (), generator=generator)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": label}
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def route_of(rank: int, index: int) -> int:
    """``twoheads``: the head micro-batch ``index`` of ``rank`` takes (1: head_b). Rank 0 takes head_b on micro-batches
    1, 5, 9, rank 1 on 0, 4, 8: the ranks disagree inside windows (a head used on one rank only, issue 28's case),
    and a window of micro-batch 3 alone uses head_a everywhere (head_b then has no gradient on any rank)."""
    return 1 if (index + rank) % 4 == 1 else 0


BRANCH_EVERY = 4


def takes_branch(index: int) -> int:
    """``lastbranch``: micro-batch ``index`` (every rank alike) takes the branch when it is the last of a window of
    ``BRANCH_EVERY`` (3, 7, 11): the branch's parameters first get a gradient on a window's last micro-batch."""
    return 1 if index % BRANCH_EVERY == BRANCH_EVERY - 1 else 0


def micro_batch(model: str, seed: int, rank: int, index: int, size: int) -> dict[str, torch.Tensor]:
    samples = [_sample(model, seed, rank, index * size + k) for k in range(size)]
    batch = {key: torch.stack([sample[key] for sample in samples]) for key in samples[0]}
    if model == "twoheads":
        batch["route"] = torch.tensor(route_of(rank, index))
    elif model == "lastbranch":
        batch["route"] = torch.tensor(takes_branch(index))
    return batch


def loss_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens a causal-LM loss counts: labels after the shift that are not padding (-100)."""
    return int((batch["labels"][:, 1:] != -100).sum())


@functools.lru_cache(maxsize=256)
def window_tokens(model: str, seed: int, rank: int, window: range, size: int) -> int:
    """The rank's loss-token count over a whole window: the denominator of the user's own normalisation.
    Cached: every micro-batch of the window (and the oracle, per rank) asks for it."""
    return sum(loss_tokens(micro_batch(model, seed, rank, index, size)) for index in window)


def cast(batch: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Floating tensors to ``dtype`` (the oracle's float64); token ids and masks stay integers."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}


def global_window_tokens(model: str, seed: int, world_size: int, window: range, size: int) -> int:
    """Loss tokens of a window summed over every rank: the transformers Trainer's ``num_items_in_batch`` (gathered
    across devices, ``average_tokens_across_devices``)."""
    return sum(window_tokens(model, seed, rank, window, size) for rank in range(world_size))


def sample_for_global_index(model: str, seed: int, world_size: int, size: int, index: int) -> dict[str, torch.Tensor]:
    """The sample a prepared, sharded DataLoader over one global, sequential dataset hands out at ``index``: global
    batch j of ``size`` samples goes to rank j % world, so rank r's micro-batch m holds its own stream's samples
    m·size … m·size+size−1, the data every other style trains on."""
    batch, offset = divmod(index, size)
    micro, rank = divmod(batch, world_size)
    return _sample(model, seed, rank, micro * size + offset)
