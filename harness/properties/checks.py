"""Total comparisons shared by the property families: every sequence has its length compared first, and data a
property needs that was not recorded is a deviation ("not recorded: …"), never a skip. Tolerances against the oracle
come from the error analysis of ``harness/tolerances.py`` (per element, from the magnitudes of the terms that make
it); the optimizer's own arithmetic keeps fp32's (below, with its reason; the numbers are in docs/decisions.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .. import tolerances
from ..backends import LEARNING_RATES
from ..compare import Deviation, compare_scalar, compare_tensors
from ..oracle import OracleTrace
from ..programs.model import Expectation
from ..scenario import Scenario
from ..trace import Tensors, Trace

# The step itself, applied to the run's own parameters and gradients: only the optimizer's fp32 arithmetic differs
# where the parameters are the weights the optimizer updates (a handful of roundings of |θ| and of the update: rtol
# 1e-5 is 168 u of fp32; atol 1e-6 covers a parameter near 0, whose update is at most lr = 0.05); bf16 copies
# (DeepSpeed ZeRO-0 bf16 exposes no fp32 master) carry bf16 rounding of the weights before and after: 2**-8 of each
# element, twice.
STEP_TOLERANCE = (1e-5, 1e-6)
BF16_COPY_RTOL = 2 * 2.0**-8
# The free-running comparison (fp32 SGD from the initial weights, DESIGN §4 P2): the step's own tolerance.
FREE_RUNNING_TOLERANCE = STEP_TOLERANCE


def step_label(k: int, total: int) -> str:
    return f"step {k + 1} of {total}"


def lengths(scenario: Scenario, prop: str, where: str, label: str, got: int, want: int) -> list[Deviation]:
    if got == want:
        return []
    return [Deviation(scenario.id, prop, where, label, f"{got} recorded, {want} expected")]


def not_recorded(scenario: Scenario, prop: str, where: str, what: str) -> Deviation:
    return Deviation(scenario.id, prop, where, what, f"not recorded: {what}")


def step_deviations(scenario: Scenario, prop: str, trace: Trace, local: OracleTrace, expectation: Expectation) -> list[Deviation]:
    """Teacher-forced, step by step: the gradients each step used against float64 at the run's parameters (within the
    error analysis's bound from their terms), and the parameters after it against the step applied in float64 to the
    run's parameters and gradients."""
    rank = f"rank {trace.rank}"
    total = len(expectation.step_points)
    found = lengths(scenario, prop, rank, "optimizer steps", len(trace.steps), total)
    for k, (step, want) in enumerate(zip(trace.steps, local.steps)):
        where = f"{rank} · {step_label(k, total)} (micro-batch {step.micro_step})"
        if step.micro_step != want.micro_step:
            found.append(Deviation(scenario.id, prop, where, "optimizer step",
                                   f"stepped during micro-batch {step.micro_step}, want {want.micro_step}"))
        if step.grads is None:
            found.append(not_recorded(scenario, prop, where, "pre-clip gradients"))
        else:
            found += compare_tensors(step.grads, want.grads, scenario=scenario.id, prop=prop, where=where,
                                     label="grad", bounds=tolerances.gradient_bounds(scenario.precision, want.terms),
                                     bound_text=tolerances.gradient_text(scenario.precision))
        if want.params is not None:
            if trace.params_are_master:
                found += compare_tensors(step.params, want.params, scenario=scenario.id, prop=prop, where=where,
                                         label="param (the step)", rtol=STEP_TOLERANCE[0], atol=STEP_TOLERANCE[1])
            else:
                found += compare_tensors(step.params, want.params, scenario=scenario.id, prop=prop, where=where,
                                         label="param (the step, bf16 copies)", rtol=BF16_COPY_RTOL,
                                         atol=STEP_TOLERANCE[1])
    return found


def loss_deviations(scenario: Scenario, prop: str, trace: Trace, want: Sequence[float]) -> list[Deviation]:
    rank = f"rank {trace.rank}"
    found = lengths(scenario, prop, rank, "micro-batch losses", len(trace.losses), len(want))
    for index, (got, expected) in enumerate(zip(trace.losses, want)):
        found += compare_scalar(got, expected, scenario=scenario.id, prop=prop, label="loss",
                                where=f"{rank} · micro-batch {index}",
                                bound=tolerances.loss_bound(scenario.precision, expected),
                                bound_text=tolerances.loss_text(scenario.precision))
    return found


def free_running_deviations(scenario: Scenario, prop: str, trace: Trace, free: OracleTrace) -> list[Deviation]:
    """SGD in fp32, where the trajectory is stable: every step's parameters against the perfect float64 run from the
    initial weights (catches what drifts by less than a step's tolerance per step)."""
    rtol, atol = FREE_RUNNING_TOLERANCE
    total = len(free.steps)
    found = []
    for k, (step, want) in enumerate(zip(trace.steps, free.steps)):
        found += compare_tensors(step.params, want.params or {}, scenario=scenario.id, prop=prop,
                                 where=f"rank {trace.rank} · {step_label(k, total)} from the initial weights",
                                 label="param", rtol=rtol, atol=atol)
    return found


def ranks_agree(scenario: Scenario, prop: str, traces: Sequence[Trace]) -> list[Deviation]:
    """Data parallelism: every rank ends with the same bytes."""
    first = traces[0]
    found: list[Deviation] = []
    for trace in traces[1:]:
        found += compare_tensors(trace.final_params, first.final_params, scenario=scenario.id, prop=prop,
                                 where=f"rank {trace.rank} vs rank {first.rank} · final", label="param", rtol=0, atol=0)
    return found


def oracle_deviations(scenario: Scenario, prop: str, traces: Sequence[Trace], local: OracleTrace,
                      expectation: Expectation, free: OracleTrace | None) -> list[Deviation]:
    """P2/P5: losses, gradients and every step as the float64 oracle says, every rank holding the same bytes."""
    found: list[Deviation] = []
    for trace in traces:
        found += step_deviations(scenario, prop, trace, local, expectation)
        found += loss_deviations(scenario, prop, trace, local.losses[trace.rank])
        if free is not None:
            found += free_running_deviations(scenario, prop, trace, free)
    return found + ranks_agree(scenario, prop, traces)


@dataclass(frozen=True)
class TwoRunTolerance:
    """How far two runs of the same mathematics in different rounding orders may be apart: their gradients and losses
    by the sum of the two runs' bounds (from the terms the oracle measured), their parameters by what the optimizer
    can make of gradients that far apart. Per step k: ``grads[k]`` by name, ``params[k]`` by name; ``losses[rank]``
    per micro-batch."""

    grads: list[Tensors]
    params: list[Tensors]
    losses: list[list[float]]
    text: str


def two_run_tolerance(scenario: Scenario, local: OracleTrace, precision: str) -> TwoRunTolerance:
    """Gradients: 2·F·u·(S + max S) at each step. Parameters: SGD moves them by lr × the clipped gradients, so apart by
    at most lr·Σ of the gradient bounds so far; AdamW divides each element by its own history, so an element whose
    gradient is round-off (GPT-2's key bias) may flip its update's sign: 2·lr per step so far (what the comparison of
    gradients does not cover there). Losses: 2·F·u·|loss|."""
    lr = LEARNING_RATES[scenario.optimizer]
    grads = [tolerances.gradient_bounds(precision, step.terms, runs=2) for step in local.steps]
    params: list[Tensors] = []
    moved: Tensors = {}
    for k, bound in enumerate(grads):
        if scenario.optimizer == "sgd":
            moved = {n: moved.get(n, torch.zeros_like(b)) + lr * b for n, b in bound.items()}
        else:
            moved = {n: torch.full_like(b, 2 * lr * (k + 1)) for n, b in bound.items()}
        params.append({n: m + STEP_TOLERANCE[1] for n, m in moved.items()})
    losses = [[tolerances.loss_bound(precision, loss, runs=2) for loss in rank] for rank in local.losses]
    return TwoRunTolerance(grads, params, losses, tolerances.gradient_text(precision, runs=2))


def same_run(scenario: Scenario, prop: str, traces: Sequence[Trace], others: Sequence[Trace], label: str,
             tolerance: TwoRunTolerance | None = None, same_code: bool = True) -> list[Deviation]:
    """Two runs of the same mathematics give the same bytes (P1 against accumulate(), P3 against upstream, P8 after
    another scenario), step by step: positions, gradients, parameters, losses; for the same code (``same_code``: P3,
    P8-leak) also what sync_gradients reported and the engine's counters. ``tolerance``: the same mathematics in
    another rounding order (then within it, not bit for bit)."""
    found = lengths(scenario, prop, "ranks", f"ranks vs {label}", len(traces), len(others))
    for trace, other in zip(traces, others):
        where = f"rank {trace.rank} vs {label}"
        got_at, want_at = [s.micro_step for s in trace.steps], [s.micro_step for s in other.steps]
        if got_at != want_at:
            found.append(Deviation(scenario.id, prop, where, "optimizer steps",
                                   f"stepped after micro-batches {got_at}, {label} after {want_at}"))
        for k, (step, base) in enumerate(zip(trace.steps, other.steps)):
            at = f"{where} · {step_label(k, len(other.steps))}"
            bounded = tolerance is not None and k < len(tolerance.grads)
            found += compare_tensors(step.params, base.params, scenario=scenario.id, prop=prop, where=at, label="param",
                                     bounds=tolerance.params[k] if bounded else None,
                                     bound_text="what the optimizer makes of gradients that far apart")
            if step.grads is None or base.grads is None:
                found.append(not_recorded(scenario, prop, at, "pre-clip gradients of "
                                          + ("both runs" if step.grads is None and base.grads is None else "one run")))
            else:
                found += compare_tensors(step.grads, base.grads, scenario=scenario.id, prop=prop, where=at,
                                         label="grad", bounds=tolerance.grads[k] if bounded else None,
                                         bound_text=tolerance.text if bounded else "")
        found += lengths(scenario, prop, where, "micro-batch losses", len(trace.losses), len(other.losses))
        for index, (got, want) in enumerate(zip(trace.losses, other.losses)):
            bound = None
            if tolerance is not None and trace.rank < len(tolerance.losses) and index < len(tolerance.losses[trace.rank]):
                bound = tolerance.losses[trace.rank][index]
            found += compare_scalar(got, want, scenario=scenario.id, prop=prop, where=f"{where} · micro-batch {index}",
                                    label="loss", bound=bound, bound_text="2·F·u·|loss|" if bound is not None else "")
        if not same_code:
            continue
        if trace.sync_gradients != other.sync_gradients:
            found.append(Deviation(scenario.id, prop, where, "accelerator.sync_gradients",
                                   f"{trace.sync_gradients} vs {other.sync_gradients}"))
        engine = "no DeepSpeed engine" if not scenario.is_deepspeed else None
        for counter in ("engine_global_steps", "engine_micro_steps"):
            found += compare_scalar(getattr(trace, counter), getattr(other, counter), scenario=scenario.id, prop=prop,
                                    where=where, label=counter, missing_ok=engine)
    return found
