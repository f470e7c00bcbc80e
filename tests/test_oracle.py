"""The oracle against values computed by hand from its rule (loss / configured G, mean over ranks, clip once,
one optimizer step), not against itself."""
from __future__ import annotations

import torch

from harness import oracle
from harness.backends import ADAMW_WEIGHT_DECAY, LEARNING_RATES
from harness.data import micro_batch
from harness.models import build_model, forward_loss
from harness.programs.model import Facts, expect
from harness.scenario import Scenario
from harness.trace import StepRecord, Trace

FACTS = {"ds2": Facts("deepspeed", 2, 2), "single": Facts("single", 1), "ddp": Facts("ddp", 2), "fsdp": Facts("fsdp", 2)}


def _expected(scenario: Scenario) -> oracle.OracleTrace:
    return oracle.expected(scenario, _expectation(scenario))


def _expectation(scenario: Scenario):
    return expect(scenario.program, FACTS[scenario.backend], scenario.configured_g, scenario.clip)


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
    step = _expected(scenario).steps[0]
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
    step = _expected(scenario).steps[0]
    for name, g in grads.items():
        theta = initial[name].detach()
        want = theta * (1 - lr * ADAMW_WEIGHT_DECAY) - lr * g / (g.abs() + 1e-8)
        torch.testing.assert_close(step.params[name], want, rtol=0, atol=1e-12)


def test_losses_are_per_rank_and_micro_batch() -> None:
    scenario = Scenario("ddp", "auto", "uni4")
    expected = _expected(scenario)
    assert [len(ls) for ls in expected.losses] == [12, 12] and expected.losses[0] != expected.losses[1]
    assert len(expected.steps) == 3


def _trace_of(free: oracle.OracleTrace, initial: dict, skip: int | None = None) -> Trace:
    """A run that followed the free-running oracle exactly, in float32, except that step ``skip`` did nothing."""
    trace = Trace(rank=0, initial_params={k: v.float() for k, v in initial.items()})
    params = trace.initial_params
    for k, step in enumerate(free.steps):
        if k != skip:
            params = {name: p.float() for name, p in step.params.items()}
        trace.steps.append(StepRecord(step.micro_step, params, {n: g.float() for n, g in step.grads.items()}, step.lr))
    return trace


def test_teacher_forcing_judges_each_step_from_where_the_run_stood() -> None:
    """A run that is the oracle's trajectory is judged right at every step; a run that skipped its third step is
    wrong exactly there, by a whole step, even under AdamW."""
    scenario = Scenario("single", "kwarg", "dyn3142", optimizer="adamw", world_size=1)
    expectation = _expectation(scenario)
    free = oracle.expected(scenario, expectation)
    initial = {n: p.detach() for n, p in build_model("mlp", 0).double().named_parameters()}
    right = oracle.teacher_forced(scenario, expectation, _trace_of(free, initial))
    for got, want in zip(right.steps, free.steps):
        for name in want.params:
            torch.testing.assert_close(got.params[name], want.params[name], rtol=1e-6, atol=1e-7)
    skipped = _trace_of(free, initial, skip=2)
    judged = oracle.teacher_forced(scenario, expectation, skipped)
    gap = max(float((skipped.steps[2].params[n].double() - judged.steps[2].params[n]).abs().max()) for n in initial)
    assert gap > 0.5 * LEARNING_RATES["adamw"], "a missed step must show as about one lr-sized update"


def test_a_head_no_rank_used_is_stepped_where_zeros_are_reduced_and_skipped_where_grad_stays_none() -> None:
    """twoheads, every micro-batch a step: micro-batch 2 routes both ranks to head_a (route_of), so head_b has no
    gradient on any rank at step 3. DDP leaves its .grad None and AdamW skips it (head_b unchanged); FSDP2, opted in to reduce unused
    parameters, reduce-scatters zeros and AdamW steps it (decay and momentum move it). Everything else is the same."""
    ddp, fsdp = (_expected(Scenario(backend, "kwarg", "every1", optimizer="adamw", clip=None, model="twoheads"))
                 for backend in ("ddp", "fsdp"))
    for k in range(2):
        for name, want in ddp.steps[k].params.items():
            torch.testing.assert_close(fsdp.steps[k].params[name], want, rtol=0, atol=0)
    before, after_ddp, after_fsdp = ddp.steps[1].params, ddp.steps[2].params, fsdp.steps[2].params
    for name in before:
        if name.startswith("head_b."):
            torch.testing.assert_close(after_ddp[name], before[name], rtol=0, atol=0)
            assert float((after_fsdp[name] - before[name]).abs().min()) > 1e-4, name
        else:
            torch.testing.assert_close(after_fsdp[name], after_ddp[name], rtol=0, atol=0)
