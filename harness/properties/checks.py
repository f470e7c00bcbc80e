"""Total comparisons shared by the property families: every sequence has its length compared first, and data a
property needs that was not recorded is a deviation ("not recorded: …"), never a skip. Tolerances live here, each
with its reason (the numbers are in docs/decisions.md).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..compare import Deviation, compare_scalar, compare_tensor, compare_tensors
from ..oracle import OracleTrace
from ..programs.model import Expectation
from ..scenario import Scenario
from ..trace import Trace

# Against the float64 oracle at the run's own parameters (teacher-forced): gradients and losses carry one
# micro-batch window of the precision's round-off. precision -> (rtol, atol, scaled by the tensor's largest |value|).
GRADIENT_TOLERANCE = {"fp32": (1e-5, 1e-6, False), "bf16": (2e-2, 5e-3, True)}
# bf16 gradients accumulated over n micro-batches in bf16 (DeepSpeed ZeRO 1/2 without offload) carry one rounding of
# the running sum per micro-batch, 2**-8 of the tensor's scale each: windows longer than 5 get that much more.
BF16_ROUNDING = 2.0**-8
# The step itself, applied to the run's own parameters and gradients: only the optimizer's fp32 arithmetic differs
# where the parameters are the weights the optimizer updates; bf16 copies (DeepSpeed ZeRO-0 bf16 exposes no fp32
# master) carry bf16 rounding of the weights before and after: 2**-8 of each element, twice.
STEP_TOLERANCE = (1e-5, 1e-6)
BF16_COPY_RTOL = 2 * 2.0**-8


def step_label(k: int, total: int) -> str:
    return f"step {k + 1} of {total}"


def lengths(scenario: Scenario, prop: str, where: str, label: str, got: int, want: int) -> list[Deviation]:
    if got == want:
        return []
    return [Deviation(scenario.id, prop, where, label, f"{got} recorded, {want} expected")]


def not_recorded(scenario: Scenario, prop: str, where: str, what: str) -> Deviation:
    return Deviation(scenario.id, prop, where, what, f"not recorded: {what}")


def gradient_tolerance(scenario: Scenario, accumulated: int = 1) -> tuple[float, float, bool]:
    """(rtol, atol, tensor-scaled) for a gradient summed over ``accumulated`` micro-batches."""
    rtol, atol, scaled = GRADIENT_TOLERANCE[scenario.precision]
    if scenario.precision == "bf16":
        rtol = max(rtol, accumulated * BF16_ROUNDING)
    return rtol, atol, scaled


def step_deviations(scenario: Scenario, prop: str, trace: Trace, local: OracleTrace, expectation: Expectation) -> list[Deviation]:
    """Teacher-forced, step by step: the gradients each step used against float64 at the run's parameters, and the
    parameters after it against the step applied in float64 to the run's parameters and gradients."""
    rank = f"rank {trace.rank}"
    total = len(expectation.step_points)
    windows = expectation.windows
    found = lengths(scenario, prop, rank, "optimizer steps", len(trace.steps), total)
    for k, (step, want) in enumerate(zip(trace.steps, local.steps)):
        rtol, atol, scaled = gradient_tolerance(scenario, len(windows[k]))
        where = f"{rank} · {step_label(k, total)} (micro-batch {step.micro_step})"
        if step.grads is None:
            found.append(not_recorded(scenario, prop, where, "pre-clip gradients"))
        else:
            found += compare_tensors(step.grads, want.grads, scenario=scenario.id, prop=prop, where=where,
                                     label="grad", rtol=rtol, atol=atol, tensor_scaled=scaled,
                                     window_scales=want.window_scale)
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
    rtol, atol, _ = gradient_tolerance(scenario)
    rank = f"rank {trace.rank}"
    found = lengths(scenario, prop, rank, "micro-batch losses", len(trace.losses), len(want))
    for index, (got, expected) in enumerate(zip(trace.losses, want)):
        found += compare_scalar(got, expected, scenario=scenario.id, prop=prop, label="loss",
                                where=f"{rank} · micro-batch {index}", rtol=rtol, atol=atol)
    return found


def free_running_deviations(scenario: Scenario, prop: str, trace: Trace, free: OracleTrace) -> list[Deviation]:
    """SGD in fp32, where the trajectory is stable: every step's parameters against the perfect float64 run from the
    initial weights (catches what drifts by less than a step's tolerance per step)."""
    rtol, atol, _ = GRADIENT_TOLERANCE["fp32"]
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


def same_run(scenario: Scenario, prop: str, traces: Sequence[Trace], others: Sequence[Trace], label: str,
             rtol: float = 0.0, atol: float = 0.0, same_code: bool = True) -> list[Deviation]:
    """Two runs of the same mathematics give the same bytes (P1 against accumulate(), P3 against upstream, P8 after
    another scenario), step by step: positions, gradients, parameters, losses; for the same code (``same_code``: P3,
    P8-leak) also what sync_gradients reported and the engine's counters."""
    found = lengths(scenario, prop, "ranks", f"ranks vs {label}", len(traces), len(others))
    for trace, other in zip(traces, others):
        where = f"rank {trace.rank} vs {label}"
        got_at, want_at = [s.micro_step for s in trace.steps], [s.micro_step for s in other.steps]
        if got_at != want_at:
            found.append(Deviation(scenario.id, prop, where, "optimizer steps",
                                   f"stepped after micro-batches {got_at}, {label} after {want_at}"))
        for k, (step, base) in enumerate(zip(trace.steps, other.steps)):
            at = f"{where} · {step_label(k, len(other.steps))}"
            found += compare_tensors(step.params, base.params, scenario=scenario.id, prop=prop, where=at,
                                     label="param", rtol=rtol, atol=atol)
            if step.grads is None or base.grads is None:
                if (step.grads is None) != (base.grads is None):
                    found.append(not_recorded(scenario, prop, at, "pre-clip gradients of one run"))
            else:
                found += compare_tensors(step.grads, base.grads, scenario=scenario.id, prop=prop, where=at,
                                         label="grad", rtol=rtol, atol=atol)
        found += lengths(scenario, prop, where, "micro-batch losses", len(trace.losses), len(other.losses))
        for index, (got, want) in enumerate(zip(trace.losses, other.losses)):
            detail = compare_tensor(torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64),
                                    rtol=rtol, atol=atol)
            if detail:
                found.append(Deviation(scenario.id, prop, f"{where} · micro-batch {index}", "loss", detail))
        if not same_code:
            continue
        if trace.sync_gradients != other.sync_gradients:
            found.append(Deviation(scenario.id, prop, where, "accelerator.sync_gradients",
                                   f"{trace.sync_gradients} vs {other.sync_gradients}"))
        for counter in ("engine_global_steps", "engine_micro_steps"):
            found += compare_scalar(getattr(trace, counter), getattr(other, counter), scenario=scenario.id, prop=prop,
                                    where=where, label=counter, rtol=0, atol=0)
    return found
