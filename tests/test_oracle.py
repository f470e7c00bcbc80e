"""The oracle against values computed by hand from its rule (loss / configured G, mean over ranks, clip once,
one optimizer step), not against itself."""
from __future__ import annotations

import torch

from harness import oracle
from harness.backends import ADAMW_WEIGHT_DECAY, LEARNING_RATES
from harness.data import micro_batch
from harness.models import build_model, forward_loss
from harness.scenario import Scenario


def _grad_of(scenario: Scenario, micro_batches: list[int], ranks: list[int]) -> dict[str, torch.Tensor]:
    """Σ over the window of ∂(loss/G)/∂θ averaged over ranks, from the initial weights, in float64."""
    model = build_model("mlp", scenario.seed).double()
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for rank in ranks:
        for index in micro_batches:
            model.zero_grad()
            batch = {k: v.double() for k, v in micro_batch("mlp", scenario.seed, rank, index, 2).items()}
            forward_loss(model, batch).backward()
            for n, p in model.named_parameters():
                total[n] += p.grad / scenario.configured_g / len(ranks)
    return total


def test_first_sgd_step_scales_by_configured_g_not_window_length() -> None:
    """Window [3] at G = 4: the gradient is 3/4 of a mean, not a mean; then clip to 1.0, then θ - lr·g."""
    scenario = Scenario("ds2", "kwarg", "dyn3142")
    grads = _grad_of(scenario, [0, 1, 2], [0, 1])
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads.values()))
    coefficient = min(1.0, 1.0 / (float(norm) + 1e-6))
    initial = dict(build_model("mlp", 0).double().named_parameters())
    step = oracle.expected(scenario).steps[0]
    assert step.micro_step == 2
    assert abs(step.pre_clip_norm - float(norm)) < 1e-12
    for name, g in grads.items():
        torch.testing.assert_close(step.grads[name], g, rtol=0, atol=1e-12)
        want = initial[name].detach() - LEARNING_RATES["sgd"] * coefficient * g
        torch.testing.assert_close(step.params[name], want, rtol=0, atol=1e-12)


def test_first_adamw_step_is_a_signed_lr_step_with_decoupled_decay() -> None:
    """Adam's first step: m̂ = g, v̂ = g², so the update is lr·g/(|g|+ε), plus weight decay lr·λ·θ."""
    scenario = Scenario("single", "kwarg", "uni4", optimizer="adamw", clip=None, world_size=1)
    grads = _grad_of(scenario, [0, 1, 2, 3], [0])
    lr = LEARNING_RATES["adamw"]
    initial = dict(build_model("mlp", 0).double().named_parameters())
    step = oracle.expected(scenario).steps[0]
    for name, g in grads.items():
        theta = initial[name].detach()
        want = theta * (1 - lr * ADAMW_WEIGHT_DECAY) - lr * g / (g.abs() + 1e-8)
        torch.testing.assert_close(step.params[name], want, rtol=0, atol=1e-12)


def test_losses_are_per_rank_and_micro_batch() -> None:
    scenario = Scenario("ddp", "auto", "uni4")
    expected = oracle.expected(scenario)
    assert [len(ls) for ls in expected.losses] == [12, 12] and expected.losses[0] != expected.losses[1]
    assert len(expected.steps) == 3
