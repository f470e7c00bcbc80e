"""Property checks: each takes what ranks recorded (and the oracle's expectation) and returns deviations.

They never raise and never print: the conformance suite asserts on an empty list, the mutant tests assert
on a non-empty one, and reports render the same ``Deviation`` objects.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .backends import LEARNING_RATES
from .compare import TENSOR_SCALED, TOLERANCES, Deviation, compare_scalar, compare_tensor, compare_tensors, tolerance
from .oracle import OracleTrace
from .scenario import Scenario
from .trace import Trace

P1 = "P1 manual≡automatic"
P3 = "P3 backward compatibility"
P2 = "P2 backend≡oracle"
P5 = "P5 dynamic schedule≡oracle"
P4 = "P4 boundaries"
P6 = "P6 grad norm"


def _step_label(k: int, total: int) -> str:
    return f"boundary {k + 1} of {total}"


def steps_at_boundaries(scenario: Scenario, traces: Sequence[Trace]) -> list[Deviation]:
    """The optimizer steps exactly after the boundary micro-batches, and the engine's counter agrees."""
    want = scenario.boundaries
    deviations = []
    for trace in traces:
        got = [step.micro_step for step in trace.steps]
        if got != want:
            deviations.append(Deviation(scenario.id, P4, f"rank {trace.rank}", "optimizer steps",
                                        f"stepped after micro-batches {got}, want {want} ({len(got)} vs {len(want)} steps)"))
        if trace.engine_global_steps is not None and trace.engine_global_steps != len(want):
            deviations.append(Deviation(scenario.id, P4, f"rank {trace.rank}", "engine.global_steps",
                                        f"got {trace.engine_global_steps}, want {len(want)} (one per boundary)"))
    return deviations


def sync_gradients_follow_boundaries(scenario: Scenario, traces: Sequence[Trace]) -> list[Deviation]:
    """``accelerator.sync_gradients`` after each backward reports that micro-batch's resolved boundary."""
    boundaries = set(scenario.boundaries)
    want = [index in boundaries for index in range(scenario.micro_batches)]
    deviations = []
    for trace in traces:
        for index, (got_flag, want_flag) in enumerate(zip(trace.sync_gradients, want)):
            if got_flag != want_flag:
                deviations.append(Deviation(scenario.id, P4, f"rank {trace.rank} · micro-batch {index}",
                                            "accelerator.sync_gradients", f"got {got_flag}, want {want_flag}"))
                break
    return deviations


# Relative gradient size (against the tensor's largest) below which an fp32 gradient is round-off of an exact
# zero in the float64 oracle.
GRADIENT_NOISE_FLOOR = 1e-9
# bf16 under AdamW: Adam's per-element update is bounded by about lr, and in bf16 round-off decides the sign of
# every small gradient, so two correct trajectories drift apart by up to ~2·lr per step (measured on GPT-2:
# 0.5-2 lr). Parameters there are held to that bound at the first boundary, where both runs start from the
# same weights; after it the gradients are taken at already-different weights, so only losses (bf16 tolerance),
# step counts and norms are compared. Every other combination is compared in full at every step.
BF16_ADAMW_PARAM_ATOL_PER_STEP_LR = 2.0


def compared_in_full(scenario: Scenario, step_index: int) -> bool:
    return step_index == 0 or not (scenario.optimizer == "adamw" and scenario.precision == "bf16")


def _undetermined_elements(scenario: Scenario, oracle: OracleTrace) -> list[dict[str, torch.Tensor] | None]:
    """Per step, the elements whose true gradient has been below the precision's noise floor at some step so
    far. AdamW divides each element by its own gradient history, so there round-off decides the sign of an
    lr-sized update (GPT-2's attention key bias, whose true gradient is exactly zero; small bf16 gradients):
    no signal, only noise, carried forward in Adam's moments. Those elements are left out of the *parameter*
    comparison under AdamW, and said in the message; gradients and losses are compared everywhere."""
    if scenario.optimizer != "adamw" or scenario.precision != "fp32":
        return [None] * len(oracle.steps)
    floor = GRADIENT_NOISE_FLOOR
    masks, running = [], {}
    for step in oracle.steps:
        for name, grad in step.grads.items():
            small = grad.abs() <= floor * grad.abs().max()
            running[name] = small if name not in running else (running[name] | small)
        masks.append(dict(running))
    return masks


def _param_atol(scenario: Scenario, atol: float, step_index: int) -> float:
    if scenario.optimizer == "adamw" and scenario.precision == "bf16":
        return max(atol, BF16_ADAMW_PARAM_ATOL_PER_STEP_LR * LEARNING_RATES["adamw"] * (step_index + 1))
    return atol


def matches_oracle(scenario: Scenario, traces: Sequence[Trace], oracle: OracleTrace) -> list[Deviation]:
    """Losses per micro-batch, pre-clip gradients before every step and parameters after it equal the
    float64 oracle within the precision's tolerance (P2; P5 when the windows are not accumulate()'s own)."""
    prop = P2 if scenario.is_uniform else P5
    rtol, atol = tolerance(scenario.precision)
    scaled = TENSOR_SCALED[scenario.precision]
    masks = _undetermined_elements(scenario, oracle)
    sid = scenario.id
    deviations: list[Deviation] = []
    total = len(oracle.steps)
    for trace in traces:
        rank = f"rank {trace.rank}"
        for index, (got, want) in enumerate(zip(trace.losses, oracle.losses[trace.rank])):
            deviations += compare_scalar(got, want, scenario=sid, prop=prop, label="loss",
                                         where=f"{rank} · micro-batch {index}", rtol=rtol, atol=atol)
        if len(trace.steps) != total:
            deviations += compare_tensors(trace.final_params, oracle.final_params, scenario=sid, prop=prop,
                                          where=f"{rank} · final ({len(trace.steps)} steps, want {total})",
                                          label="param", rtol=rtol, atol=atol, tensor_scaled=scaled,
                                          ignore=masks[-1])
            continue
        for k, (step, want_step) in enumerate(zip(trace.steps, oracle.steps)):
            if not compared_in_full(scenario, k):
                break
            where = f"{rank} · {_step_label(k, total)}"
            if step.grads:
                deviations += compare_tensors(step.grads, want_step.grads, scenario=sid, prop=prop, where=where,
                                              label="grad", rtol=rtol, atol=atol, tensor_scaled=scaled)
            deviations += compare_tensors(step.params, want_step.params, scenario=sid, prop=prop, where=where,
                                          label="param", rtol=rtol, atol=_param_atol(scenario, atol, k),
                                          tensor_scaled=scaled, ignore=masks[k])
    return deviations


def engine_grad_norms(scenario: Scenario, traces: Sequence[Trace], oracle: OracleTrace) -> list[Deviation]:
    """Where the engine reports a norm (ZeRO 1-3), it is the oracle's pre-clip norm at every step."""
    rtol, atol = TOLERANCES[scenario.precision]
    deviations: list[Deviation] = []
    for trace in traces:
        for k, (step, want) in enumerate(zip(trace.steps, oracle.steps)):
            if not compared_in_full(scenario, k):
                break
            if step.engine_grad_norm is not None:
                deviations += compare_scalar(step.engine_grad_norm, want.pre_clip_norm, scenario=scenario.id,
                                             prop=P6, where=f"rank {trace.rank} · {_step_label(k, len(oracle.steps))}",
                                             label="engine.get_global_grad_norm()", rtol=rtol, atol=atol)
    return deviations


def ranks_agree(scenario: Scenario, traces: Sequence[Trace]) -> list[Deviation]:
    """Data parallelism: every rank ends with the same bytes."""
    first = traces[0]
    deviations: list[Deviation] = []
    for trace in traces[1:]:
        deviations += compare_tensors(trace.final_params, first.final_params, scenario=scenario.id, prop=P2,
                                      where=f"rank {trace.rank} vs rank {first.rank} · final", label="param",
                                      rtol=0, atol=0)
    return deviations


def returned_norms(scenario: Scenario, traces: Sequence[Trace], oracle: OracleTrace) -> list[Deviation]:
    """``optimizer_step_and_zero_grad`` returns None off-boundary and the oracle's pre-clip norm at one."""
    rtol, atol = TOLERANCES[scenario.precision]
    boundaries = scenario.boundaries
    deviations: list[Deviation] = []
    for trace in traces:
        if len(trace.returned_norms) != scenario.micro_batches:
            deviations.append(Deviation(scenario.id, P6, f"rank {trace.rank}", "returned norms",
                                        f"{len(trace.returned_norms)} values for {scenario.micro_batches} micro-batches"))
            continue
        for index, got in enumerate(trace.returned_norms):
            if index in boundaries:
                k = boundaries.index(index)
                if not compared_in_full(scenario, k):
                    if got is None:
                        deviations.append(Deviation(scenario.id, P6, f"rank {trace.rank} · {_step_label(k, len(boundaries))}",
                                                    "optimizer_step_and_zero_grad()", "returned None at a boundary"))
                    continue
                want: float | None = oracle.steps[k].pre_clip_norm
                where = f"rank {trace.rank} · {_step_label(k, len(boundaries))}"
            else:
                want, where = None, f"rank {trace.rank} · micro-batch {index} (not a boundary)"
            deviations += compare_scalar(got, want, scenario=scenario.id, prop=P6, where=where,
                                         label="optimizer_step_and_zero_grad()", rtol=rtol, atol=atol)
    return deviations


def bit_identical(scenario: Scenario, traces: Sequence[Trace], baseline: Scenario,
                  baseline_traces: Sequence[Trace], prop: str = P1, baseline_label: str | None = None,
                  rtol: float = 0.0, atol: float = 0.0) -> list[Deviation]:
    """Same backend and schedule, another API style (P1) or another target (P3): the same bytes, step by step."""
    deviations: list[Deviation] = []
    for trace, base in zip(traces, baseline_traces):
        where = f"rank {trace.rank} vs {baseline_label or baseline.id}"
        if len(trace.steps) != len(base.steps):
            deviations.append(Deviation(scenario.id, prop, where, "optimizer steps",
                                        f"{len(trace.steps)} steps vs {len(base.steps)}"))
        for k, (step, base_step) in enumerate(zip(trace.steps, base.steps)):
            deviations += compare_tensors(step.params, base_step.params, scenario=scenario.id, prop=prop,
                                          where=f"{where} · {_step_label(k, len(base.steps))}", label="param",
                                          rtol=rtol, atol=atol)
        for index, (got, want) in enumerate(zip(trace.losses, base.losses)):
            detail = compare_tensor(torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64),
                                    rtol=rtol, atol=atol)
            if detail:
                deviations.append(Deviation(scenario.id, prop, f"{where} · micro-batch {index}", "loss", detail))
    return deviations


def close_to_baseline(scenario: Scenario, traces: Sequence[Trace], baseline: Scenario,
                      baseline_traces: Sequence[Trace]) -> list[Deviation]:
    """P1 for DDP with ``is_final_micro_batch`` alone: DDP decides at *forward* whether a micro-batch
    all-reduces and the keyword arrives at backward, so every micro-batch is reduced (a sum of means, not a
    mean of sums): the same mathematics in another rounding order, held to the precision's tolerance."""
    rtol, atol = TOLERANCES[scenario.precision]
    return bit_identical(scenario, traces, baseline, baseline_traces, rtol=rtol, atol=atol)


P10 = "P10 batch-split invariance"


def split_compared(scenario: Scenario) -> bool:
    """A split other than the first, on the split groups' own terms: SGD in fp32 (AdamW divides each element by
    its own history, so a reduction order's round-off can grow past fp32 tolerance between splits without any
    bug). Its window-loss drift against the (8, 1) split is measured."""
    return scenario.split_reference is not None and scenario.optimizer == "sgd" and scenario.precision == "fp32"


def batch_split_checked(scenario: Scenario) -> bool:
    """P10 is asserted where the mathematics promises invariance, not merely measured."""
    return split_compared(scenario) and split_invariant_by_construction(scenario)


def split_invariant_by_construction(scenario: Scenario) -> bool:
    """Where the mathematics promises the same training for every (micro-batch, G) split: a per-sample mean
    loss over equal micro-batches (the MLP), or the user's own normalisation by the window's token count. A
    per-micro-batch *token* mean (GPT-2, ``mean``) is not: its drift is measured, not asserted (#34191)."""
    return scenario.model == "mlp" or scenario.loss_norm == "tokens"


def window_losses(scenario: Scenario, losses: Sequence[float]) -> list[float]:
    """The loss of each window as the user defined it: the mean of its micro-batch means, or, normalised by the
    window's tokens, their sum (each micro-batch already carries its share)."""
    out, start = [], 0
    for window in scenario.windows:
        chunk = losses[start:start + window]
        out.append(sum(chunk) if scenario.loss_norm == "tokens" else sum(chunk) / len(chunk))
        start += window
    return out


def split_loss_drift(scenario: Scenario, traces: Sequence[Trace], reference: Scenario,
                     reference_traces: Sequence[Trace]) -> float:
    """Largest |window loss − the one-micro-batch split's window loss| over ranks and windows."""
    worst = 0.0
    for trace, base in zip(traces, reference_traces):
        for got, want in zip(window_losses(scenario, trace.losses), window_losses(reference, base.losses)):
            worst = max(worst, abs(got - want))
    return worst


def batch_split_invariant(scenario: Scenario, traces: Sequence[Trace], reference: Scenario,
                          reference_traces: Sequence[Trace]) -> list[Deviation]:
    """P10: the same samples cut into another (micro-batch size, G) train the same: per window the loss, the
    pre-clip gradients and every norm the user sees, and the parameters after each step, within the
    precision's tolerance of the one-micro-batch-per-window run."""
    rtol, atol = TOLERANCES[scenario.precision]
    scaled = TENSOR_SCALED[scenario.precision]
    sid = scenario.id
    deviations: list[Deviation] = []
    for trace, base in zip(traces, reference_traces):
        where = f"rank {trace.rank} vs {reference.id}"
        if len(trace.steps) != len(base.steps):
            deviations.append(Deviation(sid, P10, where, "optimizer steps",
                                        f"{len(trace.steps)} steps vs {len(base.steps)} for the same windows"))
            continue
        for k, (got, want) in enumerate(zip(window_losses(scenario, trace.losses),
                                            window_losses(reference, base.losses))):
            deviations += compare_scalar(got, want, scenario=sid, prop=P10, label="window loss",
                                         where=f"{where} · window {k + 1}", rtol=rtol, atol=atol)
        base_norms = [n for n in base.returned_norms if n is not None]
        norms = [n for n in trace.returned_norms if n is not None]
        for k, (step, base_step) in enumerate(zip(trace.steps, base.steps)):
            at = f"{where} · {_step_label(k, len(base.steps))}"
            if step.grads and base_step.grads:
                deviations += compare_tensors(step.grads, base_step.grads, scenario=sid, prop=P10, where=at,
                                              label="grad", rtol=rtol, atol=atol, tensor_scaled=scaled)
            deviations += compare_tensors(step.params, base_step.params, scenario=sid, prop=P10, where=at,
                                          label="param", rtol=rtol, atol=atol, tensor_scaled=scaled)
            if step.engine_grad_norm is not None or base_step.engine_grad_norm is not None:
                deviations += compare_scalar(step.engine_grad_norm, base_step.engine_grad_norm, scenario=sid,
                                             prop=P10, where=at, label="engine.get_global_grad_norm()",
                                             rtol=rtol, atol=atol)
            if k < len(norms) and k < len(base_norms):
                deviations += compare_scalar(norms[k], base_norms[k], scenario=sid, prop=P10, where=at,
                                             label="optimizer_step_and_zero_grad()", rtol=rtol, atol=atol)
    return deviations


P7 = "P7 communication"
P8 = "P8 hygiene"
P9 = "P9 fallbacks"


def promises_no_sync_off_boundary(scenario: Scenario) -> bool:
    """Where a backend promises to skip the gradient reduction before the boundary: DDP with the boundary
    known before forward (set_deepspeed_gradient_accumulation_boundary, or accumulate() on its own schedule),
    and DeepSpeed ZeRO 0/1, which reduce only at the boundary (measured). ZeRO 2/3 reduce every micro-batch
    into their partitions by design: their counts are reported, not judged."""
    if scenario.world_size < 2 or scenario.api == "legacy":
        return False
    if scenario.zero_stage in (0, 1):
        return True
    if scenario.backend != "ddp":
        return False
    return scenario.api == "set_boundary" or (scenario.api in ("auto", "step_and_zero_grad") and scenario.is_uniform)


GRADIENT_COLLECTIVES = ("all_reduce", "reduce_scatter", "reduce", "allreduce")


def gradient_collectives(counts: dict[str, int]) -> int:
    return sum(n for kind, n in counts.items() if kind in GRADIENT_COLLECTIVES)


def collectives_follow_boundaries(scenario: Scenario, traces: Sequence[Trace]) -> list[Deviation]:
    """Measured communication: no gradient reduction (all_reduce / reduce_scatter / reduce, as the process
    group ran them) on a non-final micro-batch, at least one at every boundary."""
    boundaries = set(scenario.boundaries)
    deviations: list[Deviation] = []
    for trace in traces:
        for index, counts in enumerate(trace.collectives):
            reductions = gradient_collectives(counts)
            if index in boundaries and reductions == 0:
                deviations.append(Deviation(scenario.id, P7, f"rank {trace.rank} · micro-batch {index} (boundary)",
                                            "collectives", f"no gradient reduction ran ({counts or 'none'})"))
            elif index not in boundaries and reductions:
                deviations.append(Deviation(scenario.id, P7, f"rank {trace.rank} · micro-batch {index} (not a boundary)",
                                            "collectives", f"{reductions} gradient reduction(s) before the boundary: {counts}"))
    return deviations


def gradient_sync_follows_boundaries(scenario: Scenario, traces: Sequence[Trace]) -> list[Deviation]:
    """Ranks train on different data, so their local gradients agree only after an all-reduce: they must
    differ after every non-final micro-batch (no communication) and agree after every boundary. Observable
    where gradients live on ``.grad`` (DDP); DeepSpeed's are checked by counting collectives."""
    if scenario.backend != "ddp":
        return []
    boundaries = set(scenario.boundaries)
    deviations: list[Deviation] = []
    first, others = traces[0], traces[1:]
    for trace in others:
        for index, (mine, theirs) in enumerate(zip(trace.grad_digests, first.grad_digests)):
            synced = mine == theirs
            if index in boundaries and not synced:
                deviations.append(Deviation(scenario.id, P7, f"micro-batch {index} (boundary)", "gradients",
                                            f"rank {trace.rank} Σgrad {mine!r} ≠ rank {first.rank} {theirs!r}: not all-reduced"))
            elif index not in boundaries and synced:
                deviations.append(Deviation(scenario.id, P7, f"micro-batch {index} (not a boundary)", "gradients",
                                            f"ranks hold identical gradients (Σ {mine!r}): an all-reduce ran before the boundary"))
    return deviations


def oracle_errors(scenario: Scenario, traces: Sequence[Trace], oracle: OracleTrace) -> dict[str, float]:
    """Worst absolute error against the oracle per quantity, measured even when within tolerance: the
    regression gate watches these numbers grow."""
    worst = {"loss_max_abs": 0.0, "grad_max_abs": 0.0, "param_max_abs": 0.0}
    for trace in traces:
        for got, want in zip(trace.losses, oracle.losses[trace.rank]):
            worst["loss_max_abs"] = max(worst["loss_max_abs"], abs(got - want))
        for step, want_step in zip(trace.steps, oracle.steps):
            for quantity, got_tensors, want_tensors in (("grad", step.grads, want_step.grads),
                                                        ("param", step.params, want_step.params)):
                for name, got in got_tensors.items():
                    if name in want_tensors and got.shape == want_tensors[name].shape:
                        err = float((got.double() - want_tensors[name]).abs().max())
                        worst[f"{quantity}_max_abs"] = max(worst[f"{quantity}_max_abs"], err)
    return worst


def curves(traces: Sequence[Trace], oracle: OracleTrace) -> dict[str, list[float | None]]:
    """What reports plot: rank 0's losses and step norms beside the oracle's."""
    trace = traces[0]
    returned = [n for n in trace.returned_norms if n is not None]
    engine = [s.engine_grad_norm for s in trace.steps]
    return {
        "loss": list(trace.losses),
        "oracle_loss": list(oracle.losses[0]),
        "grad_norm": returned or engine,
        "oracle_grad_norm": [s.pre_clip_norm for s in oracle.steps],
    }


def grads_zeroed_after_last_step(scenario: Scenario, traces: Sequence[Trace]) -> list[Deviation]:
    """Every schedule ends at a boundary: after its step no gradient may be left to leak into the next window."""
    deviations: list[Deviation] = []
    for trace in traces:
        if trace.leftover_grad_abs_sum:
            deviations.append(Deviation(scenario.id, P8, f"rank {trace.rank} · after the last step", "gradients",
                                        f"Σ|grad| = {trace.leftover_grad_abs_sum:.6g}, want 0 (zeroed at the boundary)"))
    return deviations
